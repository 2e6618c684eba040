"""The loss plot of every task's run: ``loss.png`` beside ``metrics.jsonl`` (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnlab.io import write_atomic


def plot_history(
    history: Sequence[dict[str, Any]],
    path: Path,
    unit: str = "chars",
    headline: Sequence[str] = (),
) -> None:
    """Training loss and validation loss (nats per ``unit`` singular) against the step, and on a
    second axis the task's headline validation metrics (``val_wer``, ``val_accuracy``,
    ``val_cider``...; rates in [0, 1] are drawn as percentages). Nothing is written for an empty
    history. Agg backend, so no display is needed; the PNG is written atomically."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in history]
    loss_axis.plot(steps, [r["train_loss"] for r in history], lw=0.8, label="train")
    evals = [r for r in history if "val_loss" in r]
    if evals:
        loss_axis.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-",
                       label="validation")  # fmt: skip
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel(f"loss (nats/{unit.rstrip('s')})")
    loss_axis.grid(alpha=0.3)
    loss_axis.legend(loc="upper left")
    shown = [k for k in headline if any(k in r for r in history)]
    if shown:
        metric_axis = loss_axis.twinx()
        for key, colour in zip(shown, ("tab:red", "tab:orange", "tab:green", "tab:purple"),
                               strict=False):  # fmt: skip
            points = [r for r in history if key in r]
            rates = key.endswith(("wer", "per", "accuracy", "f1"))
            values = [100 * r[key] if rates else r[key] for r in points]
            label = key.removeprefix("val_").replace("_", " ") + (" (%)" if rates else "")
            metric_axis.plot([r["step"] for r in points], values, "s--", color=colour,
                             label=label)  # fmt: skip
        metric_axis.set_ylabel("validation " + ", ".join(k.removeprefix("val_") for k in shown))
        metric_axis.legend(loc="upper right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
