"""``rnnlab doctor``: versions, threads, device, the C++ engine and what ``auto`` picks;
``--build`` builds the engine ahead (what ``make setup`` does, for ``pip install`` users)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, threads, device, C++ engine, auto backend")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--no-build", action="store_true", help="report the engine's state without building it"
    )
    mode.add_argument(
        "--build",
        action="store_true",
        help="build the C++ engine now (30-60 s, once; after pip install, so the first command "
        "does not) and say where; exit 1 if it cannot be built",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.doctor import build_engine, report

    if args.build:
        built, lines = build_engine()
        for line in lines:
            print(line)
        if not built:
            print("rnnlab: error: the C++ engine could not be built (see above)", file=sys.stderr)
        return 0 if built else 1
    for key, value in report(build=not args.no_build).items():
        print(f"{key}: {value}")
    return 0
