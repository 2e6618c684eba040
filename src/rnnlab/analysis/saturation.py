"""Gate saturation: how often each gate unit is nearly shut or nearly open.

Karpathy, Johnson & Fei-Fei 2015 ("Visualizing and Understanding Recurrent Networks", section 4.2,
figure 3): a gate unit is *left-saturated* at a step when its activation is below 0.1 and
*right-saturated* above 0.9; the paper plots, per layer and gate, each unit as a point (fraction of
steps left-saturated, fraction right-saturated). Forget gates that are right-saturated most of the
time are the cells that remember for long; the first layer's gates sit near the middle.

Only sigmoid gates, whose range is (0, 1), are counted: LSTM i f o, GRU r z, MUT z r, minGRU z,
minLSTM f i (normalised to sum to one), and the LayerNorm LSTM/GRU's as the LSTM's/GRU's. The
vanilla RNN and IndRNN have none. Counting streams over trace chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rnnlab.analysis.trace import TraceChunk

SIGMOID_GATES = {
    "lstm": ("i", "f", "o"),
    "gru": ("r", "z"),
    "mut1": ("z", "r"),
    "mut2": ("z", "r"),
    "mut3": ("z", "r"),
    "mingru": ("z",),
    "minlstm": ("f", "i"),  # normalised: f + i = 1
    "rnn": (),
    "indrnn": (),
    "layernorm_lstm": ("i", "f", "o"),
    "layernorm_gru": ("r", "z"),
}
LEFT, RIGHT = 0.1, 0.9


@dataclass
class GateSaturation:
    """Per layer ``"L{k}"`` and gate name: (H,) fractions of steps below ``LEFT`` (``left``) and
    above ``RIGHT`` (``right``) over ``steps`` characters."""

    cell: str
    steps: int
    left: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    right: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per layer and gate: mean left/right fraction and the share of units that are
        right-saturated more than half the time (``mostly_open``) or left (``mostly_shut``)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for layer, gates in self.left.items():
            out[layer] = {
                g: {
                    "left": float(lf.mean()),
                    "right": float(self.right[layer][g].mean()),
                    "mostly_shut": float((lf > 0.5).mean()),
                    "mostly_open": float((self.right[layer][g] > 0.5).mean()),
                }
                for g, lf in gates.items()
            }
        return out

    def to_dict(self) -> dict:
        return {
            "cell": self.cell,
            "steps": self.steps,
            "thresholds": [LEFT, RIGHT],
            "layers": {
                layer: {
                    g: {
                        "left": np.round(lf, 4).tolist(),
                        "right": np.round(self.right[layer][g], 4).tolist(),
                    }
                    for g, lf in gates.items()
                }
                for layer, gates in self.left.items()
            },
            "summary": self.summary(),
        }


class SaturationCounter:
    """Streaming counts of saturated steps; ``add`` trace chunks, then ``result()``."""

    def __init__(self, cell: str) -> None:
        if cell not in SIGMOID_GATES:
            raise ValueError(f"cell: expected one of {'|'.join(SIGMOID_GATES)}, got {cell!r}")
        self.cell = cell
        self.steps = 0
        self.left: dict[str, np.ndarray] = {}
        self.right: dict[str, np.ndarray] = {}

    def add(self, chunk: TraceChunk) -> None:
        self.steps += len(chunk.ids)
        for key, v in chunk.values.items():
            if key.split(".")[1] not in SIGMOID_GATES[self.cell]:
                continue
            left, right = (v < LEFT).sum(0), (v > RIGHT).sum(0)  # (H,)
            self.left[key] = self.left.get(key, 0) + left
            self.right[key] = self.right.get(key, 0) + right

    def result(self) -> GateSaturation:
        out = GateSaturation(self.cell, self.steps)
        n = max(self.steps, 1)
        for key in sorted(self.left):
            layer, gate = key.split(".")
            out.left.setdefault(layer, {})[gate] = self.left[key] / n
            out.right.setdefault(layer, {})[gate] = self.right[key] / n
        return out
