"""``rnnlab.data.split``: the hash split every task uses, against its documented formula."""

from __future__ import annotations

import hashlib

import pytest

from rnnlab.data.cmudict import split_of
from rnnlab.data.split import hash_fraction, hash_split, hash_u32


def test_hash_is_the_documented_prefix_of_sha256():
    # sha256("abc") = ba7816bf 8f01cfea ... (FIPS 180-2, appendix B.1)
    assert hash_u32("abc") == 0xBA7816BF
    assert hash_fraction("abc") == 0xBA7816BF / 2**32
    for key in ["", "hello", "é", "K AE1 T", "\u2028"]:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        assert hash_u32(key) == int(digest[:8], 16)
        assert 0.0 <= hash_fraction(key) < 1.0


def test_cmudict_split_uses_the_same_hash():
    for word in ["cat", "pytorch", "antidisestablishmentarianism", "a"]:
        bucket = hash_u32(word) % 100
        assert split_of(word) == ("test" if bucket < 10 else "val" if bucket < 15 else "train")


def test_hash_split_keeps_order_and_depends_only_on_the_key():
    items = [f"w{i}" for i in range(400)]
    train, val = hash_split(items, str, 0.25)
    assert sorted(train + val) == sorted(items)
    assert train == [w for w in items if hash_fraction(w) >= 0.25]
    assert val == [w for w in items if hash_fraction(w) < 0.25]
    assert 60 < len(val) < 140  # about a quarter
    # Another order, or more items, moves no old item across the split.
    more_train, more_val = hash_split(list(reversed(items)) + ["new1", "new2"], str, 0.25)
    assert set(val) <= set(more_val) and set(train) <= set(more_train)
    # Equal keys land together (a key function, not the item itself).
    rows = [("same", 1), ("same", 2), ("other", 3)]
    tr, va = hash_split(rows, lambda r: r[0], 0.5)
    assert {r[0] for r in tr}.isdisjoint({r[0] for r in va})


def test_hash_split_edges():
    items = ["a", "b", "c"]
    assert hash_split(items, str, 0.0) == (items, [])
    assert hash_split(items, str, 1.0) == ([], items)
    with pytest.raises(ValueError, match="val_frac"):
        hash_split(items, str, 1.5)
