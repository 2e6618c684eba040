"""Strict JSON: the one JSON reader for files rnnlab did not necessarily write (run directories,
caption sets). UTF-8; no NaN or Infinity (unless asked: metrics.jsonl keeps a non-finite loss as
NaN, by design); no number that overflows a float (``1e999``); no integer longer than
MAX_INT_DIGITS (Python refuses past 4300 digits with words that name no file); no key twice in
one object (which value wins differs between parsers); nesting that exhausts the parser's stack
is refused too. Every refusal is one line: "source: key: expected ..., found ..."."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_INT_DIGITS = 40  # rnnlab writes seeds and sizes below 2**64 (20 digits)


class _Refused:
    """A value the parser met that strict JSON refuses; reported with the key that holds it."""

    __slots__ = ("expected", "found")

    def __init__(self, expected: str, found: str) -> None:
        self.expected, self.found = expected, found


def _refuse_constant(name: str) -> _Refused:
    return _Refused("a finite number", name)


def _parse_float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused("a finite number", text)


def _parse_int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Refused(f"an integer of at most {MAX_INT_DIGITS} digits", f"{digits} digits")
    return int(text)


class StrictJSONError(ValueError):
    """JSON that strict reading refuses (one line naming the source and the key)."""


def parse_json(
    data: bytes | str,
    source: str,
    *,
    nonfinite: bool = False,
    error: type[Exception] = StrictJSONError,
) -> Any:
    """The value of the JSON text ``data`` read strictly (see the module docstring); a refusal
    raises ``error`` (a caller's own kind, e.g. error) naming ``source``."""

    def check(value: Any, key: str) -> None:
        stack = [value]
        while stack:  # lists only: nested objects were checked when they were built
            x = stack.pop()
            if isinstance(x, _Refused):
                raise error(f"{source}: {key}: expected {x.expected}, found {x.found}")
            if type(x) is list:
                stack.extend(x)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise error(f"{source}: {key}: expected each key once, found it twice")
            check(value, key)
            out[key] = value
        return out

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(
            text,
            object_pairs_hook=pairs,
            parse_constant=float if nonfinite else _refuse_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
        )
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        if isinstance(e, error):
            raise
        if isinstance(e, json.JSONDecodeError):
            raise error(f"{source}: not valid JSON (line {e.lineno}, column {e.colno}: "
                        f"{e.msg})") from None  # fmt: skip
        raise error(f"{source}: not valid JSON ({e})") from None
    check(value, "(top level)")
    return value
