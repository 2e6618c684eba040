"""``rnnlab train FILE`` and ``rnnlab train --resume RUN_DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rnnlab.cli.common import add_config_flags, given


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.training.config import PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a char-level language model on a text file")
    p.add_argument(
        "file",
        nargs="?",
        default=None,
        metavar="FILE",
        help="training text file (UTF-8; --bytes for any bytes)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="defaults for a model size (flags override them; default: small)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run exactly where it stopped, writing only into RUN_DIR "
        "(a step-N/ or best/ in it resumes that checkpoint)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line even on a TTY")
    add_config_flags(p, TrainConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.train import PRESETS, TrainConfig, train
    from rnnlab.training.config import BIG

    values = given(args, TrainConfig)
    if args.file is not None:
        if "input" in values and values["input"] != args.file:
            raise ValueError("input: given twice (FILE and --input); give one")
        values["input"] = args.file
    reporter = TrainReporter(progress=not args.no_progress and sys.stderr.isatty())
    if args.resume:
        if args.preset:
            raise ValueError("--preset: a resumed run keeps its model; drop --preset")
        result = train(resume=args.resume, changes=values, on_event=reporter)
    else:
        if not values.get("input"):
            raise ValueError("input: give a training text file (or --resume RUN_DIR)")
        if values.get("max_minutes") and "max_steps" not in values:
            values["max_steps"] = BIG  # a time budget alone is the run's only limit
        config = TrainConfig(**{**PRESETS[args.preset or "small"], **values})
        result = train(config, on_event=reporter)
    if result.rank != 0:  # torchrun: rank 0 reports for the run
        return 130 if result.stopped == "interrupted" else 0
    if result.stopped == "interrupted":
        again = "rnnlab train"
        if result.world_size > 1:
            again = "torchrun <the same options> -m rnnlab train"
        print(
            f"interrupted at step {result.step}; checkpoint saved; continue with: {again} "
            f"--resume {result.run_dir}",
            file=sys.stderr,
        )
        return 130
    print(f"run directory: {result.run_dir}  (rnnlab sample {result.run_dir})", file=sys.stderr)
    return 0


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class TrainReporter:
    """Turns training events into lines on stderr; a progress line only on a TTY."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.start = time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, err = event["kind"], sys.stderr
        elapsed = time.perf_counter() - self.start
        if kind == "start":
            verb = "resuming" if event["resumed"] else "training"
            ranks = event.get("world_size", 1)
            print(
                f"{verb} {event['run_dir']}: {event['parameters']:,} parameters, vocab "
                f"{event['vocab_size']}, {event['train_tokens']:,} training chars "
                f"({event['steps_per_epoch']} steps/epoch), device {event['device']}, "
                f"backend {event['backend']}"
                + (f", {ranks} processes (data parallel)" if ranks > 1 else ""),
                file=err,
            )
        elif kind == "note":
            print(f"rnnlab: note: {event['text']}", file=err)
        elif kind == "step":
            line = (
                f"step {event['step']:>6}/{event['max_steps']}  loss {event['train_loss']:.4f}  "
                f"lr {event['lr']:.2e}  {event['chars_per_s']:,.0f} chars/s  "
                f"{_duration(elapsed)} elapsed  ETA {_duration(event['eta_s'])}"
            )
            if self.progress:
                print("\r" + line, end="", file=err, flush=True)
        elif kind == "eval":
            prefix = "\r" if self.progress else ""
            mark = " *" if event["best"] else ""
            print(
                f"{prefix}step {event['step']:>6}  val {event['val_loss']:.4f} nats/char "
                f"({event['val_bpc']:.3f} bits/char){mark}  {_duration(elapsed)}",
                file=err,
            )
        elif kind == "sample":
            print("  | " + event["text"].replace("\n", "\n  | "), file=err)
        elif kind == "nonfinite":
            what = "non-finite loss/gradient" if event["reason"] == "nonfinite" else "diverged loss"
            print(
                f"\nstep {event['step']}: {what} ({event['loss']:.4g}), step skipped "
                f"({event['in_a_row']} in a row)",
                file=err,
            )
        elif kind == "end":
            if self.progress:
                print(file=err)
            print(
                f"stopped at step {event['step']} ({event['stopped']}); best val "
                f"{event['best_val_loss']:.4f} nats/char",
                file=err,
            )
