"""The one config validator: every field of every config dataclass, and the same mappings read back.

A config field declares what it accepts next to its default (``setting(...)``): its type from the
annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``), an inclusive
range, and a help text with its unit that becomes the CLI's ``--help``. ``validate(obj)`` checks
an instance (each config's ``__post_init__`` calls it); ``from_mapping(cls, data, source)`` builds
one from JSON read from a run directory through the same checks, so a hostile ``config.json`` gets
the same one-line answer as a typed flag: the file, the field, what was expected and what was found.

Ranges bound sizes as well as signs: a config drives allocation (``hidden_size``, ``num_layers``,
``beam``), so absurd values are refused here, before anything is built.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range. One line: source, field,
    expected, found."""

    def __init__(self, field: str, expected: str, found: Any, source: str = "") -> None:
        self.field, self.expected, self.found, self.source = field, expected, found, source
        where = f"{source}: " if source else ""
        shown = repr(found) if not isinstance(found, str) else repr(found[:80])
        if len(shown) > 90:  # a 5000-digit number, a long list: the start says what it was
            shown = shown[:80] + f"... ({len(shown):,} characters)"
        super().__init__(f"{where}{field}: expected {expected}, found {shown}")


def setting(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    unit: str = "",
    aliases: tuple[str, ...] = (),
    resume: Literal["free", "inexact", "fixed", "location"] = "fixed",
) -> Any:
    """A dataclass field with its help text, unit, inclusive range ``[low, high]``, extra CLI
    spellings (``aliases``, e.g. ``("--bytes",)``) and its resume rule: ``free`` (may change on
    resume, results stay bit-exact), ``inexact`` (may change, the run is then no longer
    bit-identical), ``fixed`` (defines the model, data or optimizer state: may not change) or
    ``location`` (where files are; never compared)."""
    meta = {"help": help, "low": low, "high": high, "unit": unit, "aliases": aliases,
            "resume": resume}  # fmt: skip
    return dataclasses.field(default=default, metadata=meta)


def choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """The ``Literal`` choices of field ``name`` of ``cls``, or None."""
    kind, _ = _kind(typing.get_type_hints(cls)[name])
    return kind if isinstance(kind, tuple) else None


def _kind(hint: Any) -> tuple[Any, bool]:
    """(int | float | bool | str | tuple-of-choices, optional) for a field's annotation."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
        origin = typing.get_origin(hint)
    if origin is Literal:
        return tuple(typing.get_args(hint)), optional
    return hint, optional


def describe(kind: Any, low: float | None, high: float | None) -> str:
    """What a field accepts, in words: ``an integer in [1, 8192]``, ``one of lstm|gru``."""
    if isinstance(kind, tuple):
        return "one of " + "|".join(str(c) for c in kind)
    noun = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
    text = noun.get(kind, str(kind))
    if low is not None and high is not None:
        return f"{text} in [{_fmt(low)}, {_fmt(high)}]"
    if low is not None:
        return f"{text} >= {_fmt(low)}"
    if high is not None:
        return f"{text} <= {_fmt(high)}"
    return text


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else f"{x:,}".replace(",", "_")


def check_value(f: dataclasses.Field, hint: Any, value: Any, source: str = "") -> Any:
    """``value`` checked against field ``f``; ints are accepted for floats (returned as float)."""
    kind, optional = _kind(hint)
    low, high = f.metadata.get("low"), f.metadata.get("high")
    expected = describe(kind, low, high) + (" or null" if optional else "")
    if value is None:
        if optional:
            return None
        raise ConfigError(f.name, expected, value, source)
    if isinstance(kind, tuple):
        if value not in kind or type(value) is bool:
            raise ConfigError(f.name, expected, value, source)
        return value
    if kind is bool:
        if type(value) is not bool:
            raise ConfigError(f.name, expected, value, source)
        return value
    if kind is str:
        if type(value) is not str or "\x00" in value:
            raise ConfigError(f.name, expected, value, source)
        return value
    if kind is int:
        if type(value) is not int:
            raise ConfigError(f.name, expected, value, source)
    elif kind is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ConfigError(f.name, expected, value, source)
        value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f.name, expected, value, source)
    return value


def validate(obj: Any, source: str = "") -> None:
    """Check every field of the dataclass instance ``obj``; raises ConfigError on the first bad
    one. Floats given as ints are stored as floats."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = check_value(f, hints[f.name], getattr(obj, f.name), source)
        object.__setattr__(obj, f.name, value)


def from_mapping(
    cls: type[T], data: Any, source: str, *, unknown: Literal["error", "ignore"] = "error"
) -> T:
    """``cls(**data)`` for JSON read from ``source``, every key and value checked first: not a
    JSON object, an unknown key (unless ``unknown="ignore"``), a missing required key or a bad
    value is a ConfigError naming ``source`` and the field."""
    if not isinstance(data, Mapping):
        raise ConfigError("(top level)", "a JSON object", type(data).__name__, source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(k for k in data if k not in fields)
    if extra and unknown == "error":
        raise ConfigError(str(extra[0]), "one of the known fields", "an unknown key", source)
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = check_value(f, hints[name], data[name], source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(name, "a value", "nothing (missing key)", source)
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(e.field, e.expected, e.found, source) from None
    except (ValueError, TypeError) as e:  # a cross-field rule in the class itself
        raise ConfigError("(fields)", "consistent values", str(e), source) from None
