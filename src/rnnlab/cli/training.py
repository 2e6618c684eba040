"""What every task's train command shares: its common flags, the way it starts or resumes a run
and ends, and the one reporter of training events: lines on stderr, and a progress line (step,
loss, learning rate, throughput in the task's unit, elapsed time, ETA) only on a TTY. The library
emits events (``rnnlab.training.loop``); only the CLI prints them."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from rnnlab.cli.common import add_config_flags, given

# How each validation metric reads: (label, as a percentage?, decimals).
_METRICS = {
    "val_wer": ("WER", True, 2),
    "val_per": ("PER", True, 2),
    "val_accuracy": ("accuracy", True, 2),
    "val_macro_f1": ("macro-F1", True, 2),
    "val_bleu4": ("BLEU-4", False, 3),
    "val_cider": ("CIDEr-D", False, 3),
    "val_r1": ("R@1", True, 2),
    "val_mrr": ("MRR", False, 3),
    "val_ndcg": ("NDCG", False, 3),
}


def duration(seconds: float) -> str:
    """``2m05s``, ``1h03m`` or ``42s``."""
    seconds = int(max(0.0, seconds) + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_metrics(metrics: Mapping[str, Any], noun: str) -> str:
    """Validation metrics as one phrase, in the order given: ``val 1.4821 nats/char (2.138
    bits/char)``, ``val WER 12.50%  PER 3.10%  loss 0.3120 nats/symbol``; ``noun`` is what a
    loss is per."""
    parts = []
    for key, value in metrics.items():
        if key == "val_loss" and "val_bpc" in metrics:
            parts.append(f"{value:.4f} nats/{noun} ({metrics['val_bpc']:.3f} bits/{noun})")
        elif key == "val_loss":
            parts.append(f"loss {value:.4f} nats/{noun}")
        elif key in _METRICS:
            label, percent, decimals = _METRICS[key]
            shown = 100 * value if percent else value
            parts.append(f"{label} {shown:.{decimals}f}{'%' if percent else ''}")
    return "val " + "  ".join(parts) if parts else ""


class Reporter:
    """Turns a training run's events into lines on stderr; the progress line only when
    ``progress`` (a TTY, and no ``--no-progress``). ``unit`` is what throughput counts until the
    start event names the task's own."""

    def __init__(self, progress: bool, unit: str = "chars") -> None:
        self.progress, self.unit, self.noun = progress, unit, unit.rstrip("s")
        self.start = time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, err = event["kind"], sys.stderr
        elapsed = time.perf_counter() - self.start
        if kind == "start":
            self.unit = event.get("unit", self.unit)
            self.noun = event.get("loss_unit", self.unit.rstrip("s"))
            verb = "resuming" if event["resumed"] else "training"
            ranks = event.get("world_size", 1)
            backend = f", backend {event['backend']}" if "backend" in event else ""
            print(f"{verb} {event['run_dir']}: {event['parameters']:,} parameters, "
                  f"{event.get('data', '')} ({event['steps_per_epoch']} steps/epoch), device "
                  f"{event['device']}{backend}"
                  + (f", {ranks} processes (data parallel)" if ranks > 1 else ""),
                  file=err)  # fmt: skip
        elif kind == "note":
            print(f"rnnlab: note: {event['text']}", file=err)
        elif kind == "step" and self.progress:
            rate = event.get("rate", event.get(f"{self.unit}_per_s", 0.0))
            line = (f"step {event['step']:>6}/{event['max_steps']}  loss "
                    f"{event['train_loss']:.4f}  lr {event['lr']:.2e}  {rate:,.0f} {self.unit}/s"
                    f"  {duration(elapsed)} elapsed  ETA {duration(event['eta_s'])}")  # fmt: skip
            print("\r" + line, end="", file=err, flush=True)
        elif kind == "eval":
            prefix = "\r" if self.progress else ""
            mark = " *" if event["best"] else ""
            example = f"  | {event['example']}" if event.get("example") else ""
            metrics = {k: v for k, v in event.items() if k.startswith("val_")}
            print(f"{prefix}step {event['step']:>6}  {format_metrics(metrics, self.noun)}{mark}  "
                  f"{duration(elapsed)}{example}", file=err)  # fmt: skip
        elif kind == "sample":
            print("  | " + event["text"].replace("\n", "\n  | "), file=err)
        elif kind == "nonfinite":
            what = "non-finite loss/gradient" if event["reason"] == "nonfinite" else "diverged loss"
            print(f"{chr(10) if self.progress else ''}step {event['step']}: {what} "
                  f"({event['loss']:.4g}), step skipped "
                  f"({event['in_a_row']} in a row)", file=err)  # fmt: skip
        elif kind == "end":
            if self.progress:
                print(file=err)
            best = event["best"]
            found = (f"best {format_metrics(best, self.noun)}" if best
                     else "no evaluation ran (no best checkpoint yet)")  # fmt: skip
            print(f"stopped at step {event['step']} ({event['stopped']}); {found}", file=err)


def add_train_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """``--resume``, ``--no-progress`` and one flag per field of the task's config: the same in
    every train command."""
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run exactly where it stopped, writing only into RUN_DIR "
        "(a step-N/ or best/ in it resumes that checkpoint)",
    )
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress line even on a TTY")  # fmt: skip
    add_config_flags(parser, config_type)


def run_training(
    args: argparse.Namespace,
    config_type: type,
    train: Callable[..., Any],
    command: str,
    values: dict[str, Any] | None = None,
    then: str = "",
) -> int:
    """Start (or with ``--resume``, continue) a run of ``train`` with the typed flags (or
    ``values``, the flags after the command's own fix-ups), report it, and return the exit code:
    0, or 130 when a signal stopped it (its checkpoint saved). ``command`` is how the user typed
    the train command (``seq2seq train``), for the resume hint; ``then`` what to run next, with
    ``{run_dir}`` in it."""
    from rnnlab.training.config import BIG

    values = given(args, config_type) if values is None else values
    reporter = Reporter(progress=not args.no_progress and sys.stderr.isatty())
    if args.resume:
        result = train(resume=args.resume, changes=values, on_event=reporter)
    else:
        if values.get("max_minutes") and "max_steps" not in values:
            values["max_steps"] = BIG  # a time budget alone is the run's only limit
        result = train(config_type(**values), on_event=reporter)
    if result.rank != 0:  # torchrun: rank 0 reports for the run
        return 130 if result.stopped == "interrupted" else 0
    if result.stopped == "interrupted":
        again = f"rnnlab {command}"
        if result.world_size > 1:
            again = f"torchrun <the same options> -m rnnlab {command}"
        print(f"interrupted at step {result.step}; checkpoint saved; continue with: {again} "
              f"--resume {result.run_dir}", file=sys.stderr)  # fmt: skip
        return 130
    hint = f"  ({then.format(run_dir=result.run_dir)})" if then else ""
    print(f"run directory: {result.run_dir}{hint}", file=sys.stderr)
    return 0
