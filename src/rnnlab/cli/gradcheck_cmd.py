"""``rnnlab gradcheck``: the hand-written BPTT against finite differences and autograd."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcheck", help="hand-written BPTT vs finite differences and autograd")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.bptt import gradcheck, gradcheck_report

    print(gradcheck_report(args.seed))
    worst = max(row["max_rel_error"] for row in gradcheck(args.seed))
    return 0 if worst < 1e-6 else 1
