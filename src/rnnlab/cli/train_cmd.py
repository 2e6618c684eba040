"""``rnnlab train FILE`` and ``rnnlab train --resume RUN_DIR``."""

from __future__ import annotations

import argparse

from rnnlab.cli.common import given
from rnnlab.cli.training import add_train_arguments, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.tasks.char_lm import PRESETS, TrainConfig

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
    add_train_arguments(p, TrainConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.train import PRESETS, TrainConfig, train

    values = given(args, TrainConfig)
    if args.file is not None:
        if "input" in values and values["input"] != args.file:
            raise ValueError("input: given twice (FILE and --input); give one")
        values["input"] = args.file
    if args.resume:
        if args.preset:
            raise ValueError("--preset: a resumed run keeps its model; drop --preset")
    else:
        if not values.get("input"):
            raise ValueError("input: give a training text file (or --resume RUN_DIR)")
        values = {**PRESETS[args.preset or "small"], **values}
    return run_training(args, TrainConfig, train, "train", values, then="rnnlab sample {run_dir}")
