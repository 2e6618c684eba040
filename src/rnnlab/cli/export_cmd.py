"""``rnnlab export RUN_DIR --format onnx|torch``: the one-step function, to run without rnnlab."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's one-step function as ONNX or torch.export")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument(
        "--format",
        choices=("onnx", "torch"),
        default="onnx",
        help="onnx (onnxruntime, any language) or torch (a torch.export .pt2 program)",
    )
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export-FORMAT)")
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint of the run (default: best)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rnnlab.export import export_model
    from rnnlab.loading import run_directory
    from rnnlab.runs import load_run

    loaded = load_run(args.run_dir, args.checkpoint, command="rnnlab export")
    # the directory handed over: --out itself, or the run directory for RUN_DIR/export-FORMAT
    root = Path(args.out) if args.out else run_directory(args.run_dir)
    out = Path(args.out) if args.out else root / f"export-{args.format}"
    written = export_model(loaded.model, loaded.vocab, out, args.format, root=root)
    print(written.model)
    return 0
