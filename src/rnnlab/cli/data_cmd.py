"""``rnnlab data shakespeare`` (build a corpus) and ``rnnlab data info FILE`` (describe a file)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build a corpus (shakespeare) or describe a text file (info)")
    p.add_argument(
        "name",
        choices=("shakespeare", "info"),
        help="shakespeare: build the complete works; info: describe PATH",
    )
    p.add_argument("path", nargs="?", help="for info: the file to describe")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.data import build_shakespeare, corpus_info

    if args.name == "shakespeare":
        print(build_shakespeare())
        return 0
    if not args.path:
        raise ValueError("path: `rnnlab data info` needs a file to describe")
    for key, value in corpus_info(args.path).items():
        print(f"{key}: {value}")
    return 0
