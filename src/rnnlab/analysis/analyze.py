"""One streaming pass of a char-LM over a text: cell search, gate saturation, per-character loss,
and a short window of full traces for the viewer.

``analyze`` walks the text once with ``iter_trace`` (state carried, bounded memory) and feeds every
chunk to the cell search and the saturation counter; it keeps the per-character loss (4 bytes a
character, for the error analysis) and, for the viewer, every unit's activation on the first
``view_chars`` characters of the held-out part (text the units were not selected on).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rnnlab.analysis.cellsearch import CellSearch, CellSearchResult, feature_matrix
from rnnlab.analysis.features import Feature, compute_features, resolve_features
from rnnlab.analysis.saturation import GateSaturation, SaturationCounter
from rnnlab.analysis.trace import iter_trace
from rnnlab.models import CharLM


@dataclass
class ViewWindow:
    """Full traces of ``text[start:start + len(ids)]`` for the viewer.

    units: U names; activations: (N, U) float16; loss: (N,) nats; top_ids/top_probs: (N, k).
    """

    start: int
    ids: np.ndarray
    units: list[str]
    activations: np.ndarray
    loss: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray


@dataclass
class Analysis:
    """What ``analyze`` found: ``cells`` (the search), ``saturation``, ``loss`` (N,) nats per
    character of the whole text (NaN at 0), ``features`` (N, F) and the viewer's ``window``."""

    cells: CellSearchResult
    saturation: GateSaturation
    loss: np.ndarray
    features: dict[str, np.ndarray]
    window: ViewWindow


def analyze(
    model: CharLM,
    ids: np.ndarray,
    text: str,
    features: Iterable[Feature | str] | None = None,
    fit_frac: float = 0.5,
    top: int = 5,
    chunk_len: int = 512,
    view_chars: int = 4000,
    top_k: int = 5,
    streams: int = 1,
) -> Analysis:
    """Cell search + saturation + loss over ``text`` (ids: its (N,) token ids).

    The first ``fit_frac`` of the text ranks units and fits thresholds; the rest scores them.
    ``streams`` > 1 reads the text as that many segments side by side (``iter_trace``): faster,
    at the cost of a zero state at each segment's start.
    """
    if len(ids) != len(text):
        raise ValueError(f"ids: expected one id per character ({len(text)}), got {len(ids)}")
    if not 0.0 < fit_frac < 1.0:
        raise ValueError(f"fit_frac: expected a fraction in (0, 1), got {fit_frac}")
    chosen = resolve_features(features)
    values = compute_features(text, chosen)
    names = [f.name for f in chosen]
    fmat = feature_matrix(values, names)  # (N, F)
    fit_chars = max(1, int(len(text) * fit_frac))
    search = CellSearch(names, [f.binary for f in chosen], fit_chars)
    sat = SaturationCounter(model.rnn.cell)
    loss = np.empty(len(text), np.float32)
    view_end = min(len(text), fit_chars + view_chars)
    m = view_end - fit_chars  # the viewer's window: text[fit_chars:view_end]
    window: ViewWindow | None = None
    for chunk in iter_trace(model, ids, chunk_len, top_k, streams=streams):
        T = len(chunk.ids)
        search.add(chunk, fmat[chunk.start : chunk.start + T])
        sat.add(chunk)
        loss[chunk.start : chunk.start + T] = chunk.loss
        names, a = chunk.units()
        if window is None:
            k = chunk.top_ids.shape[1]
            window = ViewWindow(
                start=fit_chars,
                ids=np.asarray(ids[fit_chars:view_end], np.int64),
                units=names,
                activations=np.zeros((m, len(names)), np.float16),
                loss=np.zeros(m, np.float32),
                top_ids=np.zeros((m, k), np.int64),
                top_probs=np.zeros((m, k), np.float32),
            )
        lo, hi = max(fit_chars - chunk.start, 0), min(view_end - chunk.start, T)
        if lo < hi:  # chunks may come out of order (streams > 1): place by position
            at = slice(chunk.start + lo - fit_chars, chunk.start + hi - fit_chars)
            window.activations[at] = a[lo:hi]
            window.loss[at] = chunk.loss[lo:hi]
            window.top_ids[at] = chunk.top_ids[lo:hi]
            window.top_probs[at] = chunk.top_probs[lo:hi]
    assert window is not None  # iter_trace yields at least one chunk for a non-empty text
    return Analysis(
        cells=search.result(top),
        saturation=sat.result(),
        loss=loss,
        features=values,
        window=window,
    )
