"""``rnnlab eval RUN_DIR [FILE]``: loss in nats/char and bits/char."""

from __future__ import annotations

import argparse

from rnnlab.cli.common import RunOptions, add_config_flags, given


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss in nats/char and bits/char on a split or a file")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument(
        "file",
        nargs="?",
        default=None,
        help="any text file, read with the run's vocabulary (default: --split)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default="val",
        help="split of the training text (default: val)",
    )
    p.add_argument(
        "--input",
        default=None,
        help="where the training text is now, if it moved (found by content hash)",
    )
    add_config_flags(p, RunOptions)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.evaluate import require_finite
    from rnnlab.runs import evaluate
    from rnnlab.runtime import set_threads

    options = RunOptions(**given(args, RunOptions))
    set_threads(options.threads)
    result = evaluate(
        args.run_dir, args.file, args.split, options.checkpoint, options.device, input=args.input
    )
    where = args.file or f"{args.split} split"
    require_finite({"loss": result.loss}, f"{args.run_dir}: {where}")  # never prints nan
    print(
        f"{where}: {result.loss:.4f} nats/char, {result.bpc:.4f} bits/char "
        f"over {result.tokens} characters"
    )
    return 0
