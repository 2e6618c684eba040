"""PNG figures of the analyses (matplotlib, Agg backend: no display needed).

Each function takes analysis data and a path, writes one PNG and returns the path. ``root`` is
the directory the path must stay in (default: the path's own directory); the PNG goes through
``rnnlab.io.open_inside``, so no symbolic link below ``root`` is followed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rnnlab.analysis.ngram import ErrorRow  # noqa: E402
from rnnlab.analysis.saturation import GateSaturation  # noqa: E402
from rnnlab.io import PathLike, open_inside, split_root  # noqa: E402

GATE_COLOURS = {
    "i": "tab:blue",
    "f": "tab:red",
    "o": "tab:green",
    "r": "tab:purple",
    "z": "tab:orange",
}


def _save(fig: plt.Figure, path: PathLike, root: PathLike | None) -> Path:
    base, rel = split_root(path, root)
    try:
        with open_inside(base, rel) as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def plot_saturation(
    sat: GateSaturation, path: PathLike, title: str = "", *, root: PathLike | None = None
) -> Path:
    """The paper's figure 3: per layer, each gate unit at (fraction left-saturated, fraction
    right-saturated); points near the top-left corner are gates that are almost always open."""
    layers = sorted(sat.left, key=lambda s: int(s[1:]))
    if not layers:
        raise ValueError(f"cell {sat.cell!r} has no sigmoid gates to plot")
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for gate, left in sat.left[layer].items():
            right = sat.right[layer][gate]
            ax.scatter(left, right, s=9, alpha=0.6, label=gate, color=GATE_COLOURS.get(gate))
        ax.plot([0, 1], [1, 0], color="0.8", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="fraction left-saturated (< 0.1)")
        ax.set_title(f"layer {int(layer[1:]) + 1}")
        ax.legend(loc="upper right", fontsize=7)
    axes[0][0].set_ylabel("fraction right-saturated (> 0.9)")
    if title:
        fig.suptitle(title)
    return _save(fig, path, root)


def plot_gradient_decay(
    curves: Mapping[str, np.ndarray], path: PathLike, *, root: PathLike | None = None
) -> Path:
    """||dL_T/dh_t|| / ||dL_T/dh_T|| against T - t, log scale, one line per label."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, norms in curves.items():
        rel = np.asarray(norms, float) / float(norms[0])
        ax.semilogy(np.arange(len(rel)), np.maximum(rel, 1e-300), label=label)
    ax.set(xlabel="T - t (steps back from the loss)", ylabel="relative gradient norm")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path, root)


def plot_singular_values(
    steps: Sequence[int],
    values: Mapping[str, Sequence[float]],
    path: PathLike,
    *,
    root: PathLike | None = None,
) -> Path:
    """sigma_max(W_hh) per layer against the training step of each checkpoint."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, v in values.items():
        ax.plot(steps, v, marker="o", label=label)
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set(xlabel="training step", ylabel="largest singular value of W_hh")
    ax.legend(fontsize=8)
    return _save(fig, path, root)


def plot_errors(
    rows: Mapping[str, Sequence[ErrorRow]],
    path: PathLike,
    title: str = "",
    *,
    root: PathLike | None = None,
) -> Path:
    """Mean loss of the RNN and the n-gram baseline per character class and per position in the
    word and the line (bars side by side)."""
    groups = [k for k in ("char_class", "word_position", "line_position") if rows.get(k)]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.3 * len(groups), 3.4), squeeze=False)
    for ax, key in zip(axes[0], groups, strict=True):
        rs = rows[key]
        x = np.arange(len(rs))
        ax.bar(x - 0.2, [r.rnn_loss for r in rs], 0.4, label="RNN")
        ax.bar(x + 0.2, [r.ngram_loss for r in rs], 0.4, label="n-gram")
        ax.set_xticks(x, [r.group for r in rs], rotation=45, fontsize=7)
        ax.set_title(key.replace("_", " "))
    axes[0][0].set_ylabel("loss (nats/char)")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path, root)
