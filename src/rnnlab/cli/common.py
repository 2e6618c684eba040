"""What every command shares: flags from config dataclasses, "given" flags, errors as one line,
warnings as notes, and stdout as a byte stream in a chosen encoding."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from rnnlab.validation import _kind, describe, setting, validate


@dataclass
class RunOptions:
    """How ``sample`` and ``eval`` load a run."""

    checkpoint: Literal["best", "latest"] = setting(
        "best", "which checkpoint: best validation loss, or latest step"
    )
    device: str = setting("cpu", "cpu, cuda or cuda:N")
    threads: int = setting(
        0,
        "CPU threads for torch (0: torch's default, one per core; 1 on a machine busy with "
        "other work)",
        low=0,
        high=4096,
    )

    def __post_init__(self) -> None:
        from rnnlab.training.config import DEVICE
        from rnnlab.validation import ConfigError

        validate(self)
        if not DEVICE.fullmatch(self.device):
            raise ConfigError("device", "cpu, cuda or cuda:N", self.device)


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, skip: frozenset[str] = frozenset()
) -> None:
    """One kebab-case flag per field of ``cls``; absent from the namespace unless typed, so a
    flag counts as given whenever the user typed it, whatever its value."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, _ = _kind(hints[f.name])
        meta = f.metadata
        accepts = describe(kind, meta.get("low"), meta.get("high"))
        what = meta.get("help", f.name) + (f" [{meta['unit']}]" if meta.get("unit") else "")
        default = "none" if f.default is None else repr(f.default) if kind is str else f.default
        text = f"{what}; {accepts} (default: {default})"
        if kind is str:
            text = f"{what} (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            text = f"{meta.get('help', f.name)} (default: {'on' if f.default else 'off'})"
            parser.add_argument(
                flag,
                *meta.get("aliases", ()),
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
            continue
        if isinstance(kind, tuple):
            parser.add_argument(
                flag,
                choices=kind,
                default=argparse.SUPPRESS,
                help=text,
                dest=f.name,
                metavar="{" + ",".join(map(str, kind)) + "}",
            )
            continue
        parser.add_argument(
            flag,
            type=_parse(kind, flag),
            default=argparse.SUPPRESS,
            help=text,
            dest=f.name,
            metavar=f.name.upper(),
        )


def _parse(kind: type, flag: str) -> Any:
    def parse(text: str) -> Any:
        try:
            if kind is int and text.strip().lower().lstrip("+-").replace(".", "", 1).isdigit():
                return kind(text)
            if kind is int:  # 1e6 is how people write a million: accept it when it is whole
                value = float(text)
                if not value.is_integer():
                    raise ValueError(text)
                return int(value)
            return kind(text)
        except (ValueError, OverflowError):
            noun = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user typed."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def usage(parser: argparse.ArgumentParser) -> int:
    """A command group called without its subcommand: its help on stderr, exit status 2."""
    parser.print_help(sys.stderr)
    return 2


def check_output_file(flag: str, path: str | os.PathLike[str] | None) -> None:
    """Refuse, before any work, an output file path that cannot be written: a symbolic link, or
    an existing directory or device (the write would fail only after the work). ValueError."""
    if not path:
        return
    if os.path.islink(path):
        raise ValueError(f"{flag}: {path} is a symbolic link; write to a file of its own")
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{flag}: {path} is a directory or a device; give a file name "
                         "(e.g. report.html)")  # fmt: skip


def report_error(e: BaseException) -> int:
    """One line on stderr; exit 2 for bad input (ValueError, OSError), 1 for a failed run.

    Imports nothing: it also reports a failure of an import (e.g. Ctrl-C while torch loads
    leaves numpy half-initialised, and the next import of it fails), so it must not fail itself.
    """
    cause: BaseException | None = e
    while cause is not None:  # an interrupt that a library turned into another error
        if isinstance(cause, KeyboardInterrupt):
            print("rnnlab: interrupted", file=sys.stderr)
            return 130
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e).split()) or type(e).__name__
    print(f"rnnlab: error: {text}", file=sys.stderr)
    if any(c.__name__ == "TrainingError" for c in type(e).__mro__):
        return 1
    return 2 if isinstance(e, (ValueError, OSError)) else 1


@contextlib.contextmanager
def notes_not_warnings() -> Iterator[None]:
    """Python warnings (with file paths and line numbers) become one ``rnnlab: note:`` line,
    each distinct message once."""
    seen: set[str] = set()
    previous = warnings.showwarning

    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"rnnlab: note: {text}", file=sys.stderr)

    with warnings.catch_warnings():  # the filters stay Python's: ResourceWarning etc. ignored
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


def closed_pipe() -> int:
    """The reader went away (``rnnlab sample | head``): end quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
    except (OSError, ValueError):
        pass  # stdout is not a real file (a test's capture): nothing to protect
    return 0


def stdout_bytes() -> BinaryIO:
    """The byte stream under stdout, whatever the locale (a capture without one gets a shim)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        sys.stdout.flush()
        return buffer
    return _TextShim(sys.stdout)  # type: ignore[return-value]


class _TextShim:
    """Writes bytes to a text stream that has no buffer (pytest's capsys), as UTF-8."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode("utf-8", "surrogateescape"))
        return len(data)

    def flush(self) -> None:
        self.stream.flush()
