"""PER/WER and edit distance against hand-computed cases and a brute-force recursion."""

from __future__ import annotations

import functools
import random

import pytest

from rnnlab.metrics.edit_distance import closest_reference, edit_distance, error_rates


def slow_distance(a, b):
    """The textbook recursion, memoised: an independent reference."""

    @functools.cache
    def d(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


def test_edit_distance_hand_computed():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance(["K", "AE", "T"], ["K", "AE", "T"]) == 0
    assert edit_distance(["K", "AE", "T"], ["K", "AH", "T", "S"]) == 2


def test_edit_distance_equals_the_recursion_on_random_pairs():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abc") for _ in range(rng.randrange(8))]
        b = [rng.choice("abc") for _ in range(rng.randrange(8))]
        assert edit_distance(a, b) == slow_distance(tuple(a), tuple(b)) == edit_distance(b, a)


def test_per_and_wer_hand_computed():
    # word 1: matches its second reference exactly -> right, 0 edits over 3 symbols
    # word 2: one substitution against the closest reference (length 4) -> wrong, 1 edit
    # word 3: hypothesis empty, references of lengths 2 and 3 -> closest is the shorter: 2 edits
    hyps = [["R", "IY", "D"], ["K", "AH", "T", "S"], []]
    refs = [
        [["R", "EH", "D"], ["R", "IY", "D"]],
        [["K", "AE", "T", "S"], ["S", "K", "AE", "T", "S", "Z"]],
        [["AH", "B"], ["AH", "B", "C"]],
    ]
    rates = error_rates(hyps, refs)
    assert (rates.words, rates.word_errors, rates.edits, rates.reference_symbols) == (3, 2, 3, 9)
    assert rates.wer == pytest.approx(2 / 3)
    assert rates.per == pytest.approx(3 / 9)


def test_closest_reference_prefers_fewer_edits_then_shorter():
    assert closest_reference("ab", ["abcd", "ab"]) == (0, 2)
    assert closest_reference("abc", ["abcd", "ab"]) == (1, 2)
    with pytest.raises(ValueError, match="at least one reference"):
        closest_reference("a", [])
    with pytest.raises(ValueError, match="words"):
        error_rates([["a"]], [])
