"""``rnnlab tensorboard RUN_DIR [--out DIR]``: a run's metrics.jsonl as TensorBoard event files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tensorboard",
        help="write a run's metrics.jsonl as TensorBoard event files (tensorboard --logdir OUT)",
    )
    p.add_argument("run_dir", help="run directory (holds metrics.jsonl)")
    p.add_argument(
        "--out",
        default=None,
        help="export directory, replaced as a whole on each call (default: RUN_DIR/tensorboard)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.tensorboard import export_metrics

    print(export_metrics(args.run_dir, args.out))
    return 0
