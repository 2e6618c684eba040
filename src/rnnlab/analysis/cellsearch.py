"""Cell search: which units track which hypothesis features, scored on held-out text.

Karpathy, Johnson & Fei-Fei 2015 ("Visualizing and Understanding Recurrent Networks", section 4.2)
found interpretable cells by eye; here every unit of every layer (``h`` and, for the LSTM, ``c``)
is scored against every feature of ``rnnlab.analysis.features``:

- Pearson correlation between the unit's activation and the feature, per character;
- for binary features, the accuracy of the best threshold classifier ``a > θ`` or ``a < θ``,
  with θ and the direction chosen on the first part of the text (``fit``) and the accuracy
  measured on the rest (``held``), next to the majority-class accuracy of that part.

Units are ranked on the ``fit`` part by |correlation|; the reported scores are the ``held`` part's,
so a unit is never credited with what it was selected on. Everything streams: each part keeps
sums for the correlations and, per binary feature, a histogram of every unit's activation among
positive characters (``BINS`` bins over [-1, 1]; ``c`` is squashed by tanh for the histograms
only, which keeps the order a threshold needs), so memory does not grow with the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from rnnlab.analysis.trace import TraceChunk

BINS = 64
UNTRACKED_BELOW = 0.2  # |held-out correlation| under this with every feature: tracks nothing known


@dataclass
class _Part:
    """Streaming sufficient statistics of one part of the text (U units, F features)."""

    n: int = 0
    sa: np.ndarray | None = None  # (U,) sum of a
    saa: np.ndarray | None = None  # (U,)
    sf: np.ndarray | None = None  # (F,)
    sff: np.ndarray | None = None  # (F,)
    saf: np.ndarray | None = None  # (U, F)
    hist_all: np.ndarray | None = None  # (U, BINS) counts of every character
    hist_pos: np.ndarray | None = None  # (Fb, U, BINS) counts among the feature's positives
    npos: np.ndarray | None = None  # (Fb,)

    def add(self, a: np.ndarray, squashed: np.ndarray, f: np.ndarray, binary: np.ndarray) -> None:
        """a: (T, U) raw activations (correlations); squashed: (T, U) in [-1, 1] (histograms);
        f: (T, F) features; binary: (F,) which features are 0/1."""
        a64, f64 = a.astype(np.float64), f.astype(np.float64)
        if self.sa is None:
            U, F = a.shape[1], f.shape[1]
            self.sa, self.saa = np.zeros(U), np.zeros(U)
            self.sf, self.sff = np.zeros(F), np.zeros(F)
            self.saf = np.zeros((U, F))
            self.hist_all = np.zeros((U, BINS), np.int64)
            self.hist_pos = np.zeros((int(binary.sum()), U, BINS), np.int64)
            self.npos = np.zeros(int(binary.sum()), np.int64)
        self.n += a.shape[0]
        self.sa += a64.sum(0)
        self.saa += (a64 * a64).sum(0)
        self.sf += f64.sum(0)
        self.sff += (f64 * f64).sum(0)
        self.saf += a64.T @ f64
        U = a.shape[1]
        bins = np.clip(((squashed + 1.0) * (BINS / 2)).astype(np.int64), 0, BINS - 1)  # (T, U)
        flat = bins + np.arange(U) * BINS  # bin index per (t, unit)
        self.hist_all += np.bincount(flat.ravel(), minlength=U * BINS).reshape(U, BINS)
        for j, col in enumerate(np.flatnonzero(binary)):
            pos = f[:, col] > 0.5
            self.npos[j] += int(pos.sum())
            if pos.any():
                counts = np.bincount(flat[pos].ravel(), minlength=U * BINS)
                self.hist_pos[j] += counts.reshape(U, BINS)

    def varies(self, j: int) -> bool:
        """Whether feature j takes more than one value in this part."""
        return bool(self.n * self.sff[j] - self.sf[j] ** 2 > 1e-9 * max(self.n, 1) ** 2)

    def correlation(self) -> np.ndarray:
        """(U, F) Pearson correlation; 0 where a unit or a feature is constant."""
        n = self.n
        cov = n * self.saf - np.outer(self.sa, self.sf)
        va = np.maximum(n * self.saa - self.sa**2, 0.0)
        vf = np.maximum(n * self.sff - self.sf**2, 0.0)
        denom = np.sqrt(np.outer(va, vf))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(denom > 1e-12 * max(n, 1) ** 2, cov / denom, 0.0)
        return np.clip(r, -1.0, 1.0)


def _threshold_rules(part: _Part) -> tuple[np.ndarray, np.ndarray]:
    """Best rule per (binary feature, unit) on ``part``: (edge index (Fb, U), direction ±1)."""
    pos_below = np.cumsum(part.hist_pos, axis=2)  # (Fb, U, BINS): positives in bins < edge+1
    neg_below = np.cumsum(part.hist_all[None] - part.hist_pos, axis=2)
    npos = part.npos[:, None, None]
    nneg = part.n - npos
    acc_up = (npos - pos_below + neg_below) / max(part.n, 1)  # predict 1 when bin > edge
    acc_down = (pos_below + nneg - neg_below) / max(part.n, 1)  # predict 1 when bin <= edge
    up_best, down_best = acc_up.max(2), acc_down.max(2)
    direction = np.where(up_best >= down_best, 1, -1)
    edge = np.where(direction > 0, acc_up.argmax(2), acc_down.argmax(2))
    return edge, direction


def _rule_accuracy(part: _Part, edge: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(Fb, U) accuracy on ``part`` of the rules chosen on another part."""
    pos_below = np.take_along_axis(np.cumsum(part.hist_pos, 2), edge[..., None], 2)[..., 0]
    all_below = np.take_along_axis(np.cumsum(part.hist_all, 1)[None], edge[..., None], 2)[..., 0]
    neg_below = all_below - pos_below
    npos = part.npos[:, None]
    nneg = part.n - npos
    up = npos - pos_below + neg_below
    down = pos_below + nneg - neg_below
    return np.where(direction > 0, up, down) / max(part.n, 1)


@dataclass
class UnitScore:
    """One unit's score for one feature: held-out correlation (``corr``) and, for binary
    features, held-out threshold-classifier ``accuracy``; ``fit_corr`` is what ranked it."""

    unit: str
    corr: float
    fit_corr: float
    accuracy: float | None = None


@dataclass
class FeatureReport:
    name: str
    binary: bool
    top: list[UnitScore]
    positive_rate: float | None = None  # held-out fraction of characters where it is on
    majority_accuracy: float | None = None  # held-out accuracy of always guessing the majority


@dataclass
class CellSearchResult:
    """Ranked units per feature, the units that track nothing known, and every score.

    corr: (U, F) held-out correlations; fit_corr: (U, F) on the fit part; accuracy: (U, Fb) held-out
    threshold accuracy for the binary features ``binary_names``.
    """

    units: list[str]
    feature_names: list[str]
    features: dict[str, FeatureReport]
    untracked: list[str]
    corr: np.ndarray
    fit_corr: np.ndarray
    accuracy: np.ndarray
    binary_names: list[str]
    chars: dict[str, int] = field(default_factory=dict)
    constant: list[str] = field(default_factory=list)  # features that never vary in a part

    def best(self, feature: str) -> UnitScore:
        """The top-ranked unit for a feature."""
        return self.features[feature].top[0]

    def to_dict(self) -> dict:
        return {
            "chars": self.chars,
            "features": {
                name: {
                    "binary": rep.binary,
                    "positive_rate": rep.positive_rate,
                    "majority_accuracy": rep.majority_accuracy,
                    "top": [vars(s) for s in rep.top],
                }
                for name, rep in self.features.items()
            },
            "untracked": self.untracked,
            "constant": self.constant,
        }


class CellSearch:
    """Streaming cell search. Feed it trace chunks and the matching feature rows:

    >>> search = CellSearch(feature_names, binary, fit_chars=n // 2)
    >>> for chunk in iter_trace(model, ids):
    ...     search.add(chunk, feature_matrix[chunk.start : chunk.start + len(chunk.ids)])
    >>> result = search.result(top=5)

    Characters before ``fit_chars`` select units and thresholds; the rest score them.
    """

    def __init__(self, feature_names: list[str], binary: list[bool], fit_chars: int) -> None:
        if len(feature_names) != len(binary):
            raise ValueError("binary: expected one flag per feature name")
        if fit_chars <= 0:
            raise ValueError(f"fit_chars: expected a positive number, got {fit_chars}")
        self.feature_names = list(feature_names)
        self.binary = np.array(binary, bool)
        self.fit_chars = fit_chars
        self.units: list[str] | None = None
        self.fit, self.held = _Part(), _Part()

    def add(self, chunk: TraceChunk, features: np.ndarray) -> None:
        """chunk: a ``TraceChunk``; features: (T, F) rows of the same characters."""
        names, a = chunk.units()
        if features.shape != (a.shape[0], len(self.feature_names)):
            raise ValueError(
                f"features: expected shape ({a.shape[0]}, {len(self.feature_names)}), "
                f"got {features.shape}"
            )
        self.units = self.units or names
        sq = _squash(names, a)
        cut = min(max(self.fit_chars - chunk.start, 0), a.shape[0])
        if cut > 0:
            self.fit.add(a[:cut], sq[:cut], features[:cut], self.binary)
        if cut < a.shape[0]:
            self.held.add(a[cut:], sq[cut:], features[cut:], self.binary)

    def result(self, top: int = 5, untracked_below: float = UNTRACKED_BELOW) -> CellSearchResult:
        if self.units is None or self.fit.n < 2 or self.held.n < 2:
            raise ValueError(
                "text: too short for a cell search; need at least 2 characters on each side "
                f"of fit_chars={self.fit_chars}"
            )
        fit_r, held_r = self.fit.correlation(), self.held.correlation()
        edge, direction = _threshold_rules(self.fit)
        acc = _rule_accuracy(self.held, edge, direction).T  # (U, Fb)
        reports: dict[str, FeatureReport] = {}
        constant = [
            name
            for j, name in enumerate(self.feature_names)
            if not (self.fit.varies(j) and self.held.varies(j))
        ]
        b = 0
        for j, name in enumerate(self.feature_names):
            order = np.argsort(-np.abs(fit_r[:, j]), kind="stable")[:top]
            scores = [
                UnitScore(
                    self.units[u],
                    float(held_r[u, j]),
                    float(fit_r[u, j]),
                    float(acc[u, b]) if self.binary[j] else None,
                )
                for u in order
            ]
            rate = majority = None
            if self.binary[j]:
                rate = float(self.held.npos[b] / self.held.n)
                majority = max(rate, 1.0 - rate)
                b += 1
            if name not in constant:  # nothing to track in this text: not reported
                reports[name] = FeatureReport(name, bool(self.binary[j]), scores, rate, majority)
        tracked = np.abs(held_r).max(axis=1) if held_r.shape[1] else np.zeros(len(self.units))
        untracked = [u for u, m in zip(self.units, tracked, strict=True) if m < untracked_below]
        return CellSearchResult(
            units=list(self.units),
            feature_names=list(self.feature_names),
            features=reports,
            untracked=untracked,
            corr=held_r,
            fit_corr=fit_r,
            accuracy=acc,
            binary_names=[n for n, b in zip(self.feature_names, self.binary, strict=True) if b],
            chars={"fit": self.fit.n, "held": self.held.n},
            constant=constant,
        )


def _squash(names: list[str], a: np.ndarray) -> np.ndarray:
    """tanh on ``c`` units (unbounded) so every unit lies in [-1, 1] for the histograms (h units
    are bounded already); a threshold rule only needs the order, which tanh keeps. Correlations
    use the raw values: a counting cell's c is linear in the count, its tanh is not."""
    is_c = np.array([n.split(".")[1] == "c" for n in names])
    if is_c.any():
        a = a.copy()
        a[:, is_c] = np.tanh(a[:, is_c])
    return a


def feature_matrix(values: dict[str, np.ndarray], names: Iterable[str]) -> np.ndarray:
    """(N, F) float32 from ``compute_features``' dict, columns in ``names`` order."""
    return np.stack([values[n] for n in names], axis=1).astype(np.float32)
