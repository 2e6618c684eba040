"""rnnlab.analysis: looking inside a trained char-LM (Karpathy, Johnson & Fei-Fei 2015).

Traces with every gate, hypothesis features, the interpretable-cell search, gate saturation, an
n-gram baseline with error analysis, gradient flow, and exports for the viewer and LSTMVis.
"""

from rnnlab.analysis.analyze import Analysis, ViewWindow, analyze
from rnnlab.analysis.cellsearch import CellSearch, CellSearchResult
from rnnlab.analysis.features import FEATURES, Feature, compute_features, regex_feature
from rnnlab.analysis.saturation import GateSaturation, SaturationCounter
from rnnlab.analysis.trace import Trace, TraceChunk, iter_trace, trace_text

__all__ = [
    "FEATURES",
    "Analysis",
    "CellSearch",
    "CellSearchResult",
    "Feature",
    "GateSaturation",
    "SaturationCounter",
    "Trace",
    "TraceChunk",
    "ViewWindow",
    "analyze",
    "compute_features",
    "iter_trace",
    "regex_feature",
    "trace_text",
]
