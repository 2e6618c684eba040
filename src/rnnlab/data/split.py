"""Hash splits: which examples are held out, decided by each example's own text.

An example goes to validation when the hash of its key falls under the fraction::

    hash_u32(key)      = int(sha256(key as UTF-8)[:8 hex digits], 16)     in [0, 2**32)
    hash_fraction(key) = hash_u32(key) / 2**32                           in [0, 1)
    held out           <=> hash_fraction(key) < val_frac

The split depends on the key alone: not on the file's order, its other rows, a seed or the
machine, so adding rows never moves an old row across the split, and equal keys (every
pronunciation of one word, a text repeated with two labels) always land on the same side.
CMUdict's documented split (``rnnlab.data.cmudict.split_of``) is ``hash_u32(word) % 100``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def hash_u32(key: str) -> int:
    """The first 32 bits of sha256(``key`` as UTF-8), as an integer in [0, 2**32)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


def hash_fraction(key: str) -> float:
    """``hash_u32(key) / 2**32``: a reproducible pseudo-uniform number in [0, 1)."""
    return hash_u32(key) / 2**32


def hash_split(
    items: Sequence[T], key: Callable[[T], str], val_frac: float
) -> tuple[list[T], list[T]]:
    """``(train, val)``: the items whose key's ``hash_fraction`` is below ``val_frac`` are held
    out; both lists keep the items' order. ``val_frac`` must lie in [0, 1] (ValueError)."""
    if not 0.0 <= val_frac <= 1.0:
        raise ValueError(f"val_frac: expected a fraction in [0, 1], got {val_frac}")
    train: list[T] = []
    val: list[T] = []
    for item in items:
        (val if hash_fraction(key(item)) < val_frac else train).append(item)
    return train, val
