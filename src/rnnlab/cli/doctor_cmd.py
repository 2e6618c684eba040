"""``rnnlab doctor``: versions, threads, device, the C++ engine and what ``auto`` picks."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, threads, device, C++ engine, auto backend")
    p.add_argument(
        "--no-build", action="store_true", help="report the engine's state without building it"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.doctor import report

    for key, value in report(build=not args.no_build).items():
        print(f"{key}: {value}")
    return 0
