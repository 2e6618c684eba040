"""The ``rnnlab`` command: parse flags into a config dataclass, make one library call, report.

One module per command; each has ``register(subparsers)``. Adding a command is one line in
``COMMANDS``. Library errors (ValueError and its subclasses ConfigError/DataError/CheckpointError,
TrainingError, OSError) become one line on stderr and a non-zero exit code; Python warnings
become one-line ``rnnlab: note:`` lines; a closed output pipe ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from typing import NoReturn

# Adding a command: its module name here (the module defines ``register(subparsers)``).
COMMANDS = (
    "train", "sample", "eval", "data", "gradcheck", "demo", "doctor", "export", "seq2seq",
    "classify", "caption", "vqa", "dialog", "tensorboard",
)  # fmt: skip


# Ctrl-C while the CLI starts (torch, numpy and the commands import: seconds on a busy machine)
# only sets a flag, checked once start-up is done: a KeyboardInterrupt raised inside the import
# system can surface as a traceback printed by Python itself, or as a later ImportError. Once a
# command runs, Ctrl-C raises KeyboardInterrupt as usual (training installs its own handler).
_interrupted = False
_started = False


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    if _started:
        raise KeyboardInterrupt


def _on_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C that landed where Python cannot raise it (a callback inside the import system)
    would print "Exception ignored ... Traceback" and carry on: end the command instead."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        try:
            sys.stdout.flush()
            print("rnnlab: interrupted", file=sys.stderr, flush=True)
        finally:
            os._exit(130)
    sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> int:
    global _interrupted, _started
    _interrupted = _started = False
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _on_sigint), sys.unraisablehook
        sys.unraisablehook = _on_unraisable
    try:
        return _main(argv)
    finally:
        if previous is not None:  # main() may be called in-process (tests, scripts)
            signal.signal(signal.SIGINT, previous[0])
            sys.unraisablehook = previous[1]


def _main(argv: list[str] | None) -> int:
    global _started
    try:  # Ctrl-C at any moment, even while torch is imported, is one line and exit 130
        from rnnlab.cli import common

        with common.notes_not_warnings():
            parser = build_parser()
            args = parser.parse_args(argv)
            if _interrupted:
                raise KeyboardInterrupt
            _started = True
            if not getattr(args, "run", None):
                parser.print_help()
                return 2
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        from rnnlab.cli.common import closed_pipe

        return closed_pipe()
    except Exception as e:  # one line, no traceback: the message names the problem and the fix
        if _interrupted:
            print("rnnlab: interrupted", file=sys.stderr)
            return 130
        from rnnlab.cli.common import report_error

        return report_error(e)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the problem, and where the options are listed)
    instead of the whole usage text; exit code 2. Subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="what to do; rnnlab COMMAND --help for its options"
    )
    for name in COMMANDS:
        importlib.import_module(f"rnnlab.cli.{name}_cmd").register(sub)
    importlib.import_module("rnnlab.cli.analysis_cmd").register(sub)  # cells, gradients, view
    return parser
