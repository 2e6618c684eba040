"""Edit distance and the G2P metrics: phoneme error rate (PER) and word error rate (WER).

``edit_distance(a, b)``: the Levenshtein distance, the fewest insertions, deletions and
substitutions turning sequence ``a`` into ``b`` (each costs 1), by the two-row dynamic programme.

For a set of words, each with one hypothesis and one or more reference pronunciations:

- WER: the fraction of words whose hypothesis equals none of their references (a word is right
  if it matches any of them);
- PER: sum over words of the edit distance to the closest reference, divided by the summed
  lengths of those references (the closest: smallest distance, then the shorter one, then the
  first listed), as in the G2P literature (Bisani & Ney 2008; Yao & Zweig 2015).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass


def edit_distance(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Levenshtein distance between two sequences (lists of symbols, strings, tuples)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))  # distances from a[:0] to every prefix of b
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def closest_reference(
    hypothesis: Sequence[Hashable], references: Sequence[Sequence[Hashable]]
) -> tuple[int, int]:
    """(edit distance, length) of the reference closest to ``hypothesis``."""
    if not references:
        raise ValueError("references: a word needs at least one reference")
    return min((edit_distance(hypothesis, r), len(r)) for r in references)


@dataclass
class ErrorRates:
    """PER and WER of a set of words, with the counts they come from."""

    words: int
    word_errors: int
    edits: int
    reference_symbols: int

    @property
    def wer(self) -> float:
        return self.word_errors / self.words if self.words else 0.0

    @property
    def per(self) -> float:
        return self.edits / self.reference_symbols if self.reference_symbols else 0.0


def error_rates(
    hypotheses: Sequence[Sequence[Hashable]], references: Sequence[Sequence[Sequence[Hashable]]]
) -> ErrorRates:
    """PER and WER of ``hypotheses[i]`` against the references ``references[i]`` of word i."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references: {len(hypotheses)} and {len(references)} words"
        )
    word_errors = edits = symbols = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        distance, length = closest_reference(hyp, refs)
        word_errors += distance > 0
        edits += distance
        symbols += length
    return ErrorRates(len(hypotheses), word_errors, edits, symbols)
