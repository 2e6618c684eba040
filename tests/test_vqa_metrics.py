"""rnnlab.metrics.vqa against hand-computed cases and the "10 choose 9" definition written out."""

from __future__ import annotations

import itertools
import random

import pytest

from rnnlab.metrics.vqa import (
    most_frequent_answers,
    normalize_answer,
    predict_most_frequent,
    process_punctuation,
    vqa_accuracy,
    vqa_report,
)


def humans(**counts: int) -> list[str]:
    out = [a for a, n in counts.items() for _ in range(n)]
    return out + ["other"] * (10 - len(out))


@pytest.mark.parametrize(("said", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                                (10, 1.0)])  # fmt: skip
def test_accuracy_by_how_many_humans_said_it(said: int, expected: float) -> None:
    # with k of 10 humans agreeing: k subsets lose one of them (min((k-1)/3, 1)), 10-k keep all
    assert vqa_accuracy("blue", humans(blue=said)) == pytest.approx(expected)


def test_equals_the_subset_definition() -> None:
    """Mean over the 10 subsets of 9 humans of min(#matches / 3, 1), by itertools."""
    rng = random.Random(0)
    for _ in range(200):
        answers = [rng.choice(["red", "blue", "2", "yes"]) for _ in range(10)]
        guess = rng.choice(["red", "blue", "2", "yes", "no"])
        subsets = list(itertools.combinations(answers, 9))
        reference = sum(min(1.0, s.count(guess) / 3) for s in subsets) / len(subsets)
        assert vqa_accuracy(guess, answers) == pytest.approx(reference)


def test_prediction_normalisation() -> None:
    assert normalize_answer("Two") == "2"  # number words become digits
    assert normalize_answer("The Dog.") == "dog"  # case, article, final period
    assert normalize_answer("a  red\tcar\n") == "red car"
    assert normalize_answer("dont") == "don't"  # contractions restored
    assert normalize_answer("3.5") == "3.5"  # a period before a digit stays
    assert normalize_answer("1,000") == "1000"  # digit comma digit: punctuation deleted
    assert normalize_answer("black/white") == "black white"  # no space around: a space
    assert normalize_answer("yes !") == "yes"  # touching a space: deleted
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("the cat", ["cat"] * 10) == 1.0


def test_human_answers_normalised_only_when_they_disagree() -> None:
    # the official script strips punctuation from the humans' answers only if they differ
    assert vqa_accuracy("dog", ["dog."] * 10) == 0.0
    assert vqa_accuracy("dog", ["dog."] * 5 + ["cat"] * 5) == 1.0
    assert process_punctuation("dog ?") == "dog "  # the space stays: never equal to "dog"
    with pytest.raises(ValueError, match="human_answers"):
        vqa_accuracy("x", [])


def test_report_groups_by_type() -> None:
    report = vqa_report(["yes", "no", "red", "blue"], ["yes", "yes", "red", "red"],
                        ["is", "is", "what", "what"], ["yes/no", "yes/no", "other", "other"],
                        [["yes"] * 10, ["yes"] * 6 + ["no"] * 4, ["red"] * 10,
                         ["red"] * 8 + ["blue"] * 2])  # fmt: skip
    assert report.accuracy == 0.5 and report.examples == 4
    assert report.per_question_type == {"is": 0.5, "what": 0.5}
    assert report.answer_type_counts == {"other": 2, "yes/no": 2}
    assert report.vqa_accuracy == pytest.approx((1 + 1 + 1 + 0.6) / 4)
    assert report.vqa_per_answer_type["other"] == pytest.approx(0.8)
    with pytest.raises(ValueError):
        vqa_report(["a"], [], [], [])


def test_most_frequent_per_question_type() -> None:
    table = most_frequent_answers(["a", "a", "a", "b", "b"], ["x", "y", "y", "z", "x"])
    assert table == {"a": "y", "b": "x", "": "x"}  # ties: alphabetical; "" the overall answer
    assert predict_most_frequent(table, ["b", "a", "unseen"]) == ["x", "y", "x"]
