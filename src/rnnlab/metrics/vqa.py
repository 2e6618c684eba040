"""VQA metrics: exact-match accuracy per question type and answer type, and the VQA accuracy of
Antol et al. (2015) / Goyal et al. (2017) over ten human answers.

VQA accuracy, as the official evaluation (GT-Vision-Lab/VQA, ``vqaEval.py``) computes it: for a
question with human answers g_1..g_10 and a predicted answer a, each human in turn is left out
and ``min(#{others j : g_j = a} / 3, 1)`` is taken; the accuracy is the mean of these ten numbers
(the "10 choose 9 subsets" of the paper), so an answer 3 humans gave scores 0.9, 4 or more
score 1.0. Before comparing, the official script

* normalises the prediction: newlines and tabs become spaces, outer spaces are stripped, then
  ``process_punctuation`` and ``process_digit_article`` (lower case, number words "none".."ten"
  become digits, the articles a/an/the are dropped, some contractions restored: "dont" ->
  "don't");
* normalises the human answers with ``process_punctuation`` only, and only when they disagree
  (all ten the same: compared as given).

Both quirks are kept, because the official numbers are computed that way. The punctuation rule:
each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space in the
text (or the text has a digit,digit comma), otherwise replaced by a space; then every period that
is not followed by a digit is deleted (the official pattern ``(?!<=\\d)(\\.)(?!\\d)`` is a
look-ahead, not the look-behind it seems to mean, and it passes ``re.UNICODE`` as the count, so at
most 32 periods go: both reproduced). The contraction table here is a subset of the official one
(the common negations and pronoun forms).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
          "`", ",", "?", "!")  # fmt: skip
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, look-ahead and all
_WORDS = "zero one two three four five six seven eight nine ten".split()
_NUMBERS = {"none": "0"} | {w: str(i) for i, w in enumerate(_WORDS)}
_ARTICLES = ("a", "an", "the")
_CONTRACTIONS = {
    w.replace("'", ""): w
    for w in (
        "ain't aren't can't couldn't didn't doesn't don't hadn't hasn't haven't isn't mightn't "
        "mustn't needn't shouldn't wasn't weren't won't wouldn't could've might've must've "
        "should've would've he'd he's how's it'll i'm i've let's that's there's they'd they'll "
        "they're they've we've what's where's who's you'd you'll you're you've"
    ).split()
    if w not in ("he'd", "he's", "it'll", "we've")  # hed/hes/itll/weve: the official keys
} | {"hed": "he'd", "hes": "he's", "itll": "it'll", "weve": "we've", "Im": "I'm", "Ive": "I've"}


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring)."""
    out = text
    digit_comma = _COMMA_DIGITS.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=re.UNICODE)  # sic: the official call passes 32 as count


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower case, number words -> digits, articles
    dropped, contractions restored, words joined by single spaces."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(predicted: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of one predicted answer against the human answers (10 in VQA v1/v2;
    any number >= 1 is accepted and treated the same way: the mean over leaving each one out).

    Raises ValueError for an empty list of human answers."""
    if not human_answers:
        raise ValueError("human_answers: expected at least one answer")
    answer = normalize_answer(predicted)
    humans = list(human_answers)
    if len(set(humans)) > 1:
        humans = [process_punctuation(h) for h in humans]
    scores = []
    for left_out in range(len(humans)):
        matches = sum(h == answer for j, h in enumerate(humans) if j != left_out)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


@dataclass
class VQAReport:
    """Accuracy overall and per question type and answer type, in [0, 1]. ``accuracy`` is exact
    match against the one reference answer; ``vqa_accuracy`` the official measure where the data
    has ten human answers per question (else None)."""

    accuracy: float
    examples: int
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_answer_type: dict[str, float] = field(default_factory=dict)
    question_type_counts: dict[str, int] = field(default_factory=dict)
    answer_type_counts: dict[str, int] = field(default_factory=dict)
    vqa_accuracy: float | None = None
    vqa_per_answer_type: dict[str, float] = field(default_factory=dict)


def vqa_report(
    predicted: Sequence[str],
    answers: Sequence[str],
    question_types: Sequence[str],
    answer_types: Sequence[str],
    human_answers: Sequence[Sequence[str]] | None = None,
) -> VQAReport:
    """Score predicted answers against the reference ``answers`` (one per question), grouped by
    question type and answer type; with ``human_answers`` (each question's list) also the
    official VQA accuracy. Raises ValueError when the sequences differ in length."""
    n = len(predicted)
    lengths = [len(answers), len(question_types), len(answer_types)]
    if human_answers is not None:
        lengths.append(len(human_answers))
    if any(k != n for k in lengths):
        raise ValueError(f"vqa_report: {n} predictions but {lengths} references/types")
    correct = [float(p == a) for p, a in zip(predicted, answers, strict=True)]
    report = VQAReport(sum(correct) / n if n else 0.0, n)
    report.per_question_type = _grouped(correct, question_types)
    report.per_answer_type = _grouped(correct, answer_types)
    report.question_type_counts = dict(sorted(Counter(question_types).items()))
    report.answer_type_counts = dict(sorted(Counter(answer_types).items()))
    if human_answers is not None:
        acc = [vqa_accuracy(p, h) for p, h in zip(predicted, human_answers, strict=True)]
        report.vqa_accuracy = sum(acc) / n if n else 0.0
        report.vqa_per_answer_type = _grouped(acc, answer_types)
    return report


def _grouped(values: Sequence[float], keys: Sequence[str]) -> dict[str, float]:
    sums: dict[str, list[float]] = defaultdict(list)
    for v, k in zip(values, keys, strict=True):
        sums[k].append(v)
    return {k: sum(v) / len(v) for k, v in sorted(sums.items())}


def most_frequent_answers(question_types: Sequence[str], answers: Sequence[str]) -> dict[str, str]:
    """The baseline of Antol et al. (2015, "per Q-type prior"): for each question type, the
    answer it has most often in training (ties: alphabetical), under the key ``""`` the most
    frequent answer overall (for types training never saw). Raises ValueError for no answers."""
    if not answers:
        raise ValueError("answers: expected at least one training answer")
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for t, a in zip(question_types, answers, strict=True):
        by_type[t][a] += 1
    table = {t: min(c, key=lambda a: (-c[a], a)) for t, c in by_type.items()}
    overall = Counter(answers)
    table[""] = min(overall, key=lambda a: (-overall[a], a))
    return table


def predict_most_frequent(table: dict[str, str], question_types: Sequence[str]) -> list[str]:
    """The answers of the per-question-type baseline built by ``most_frequent_answers``."""
    return [table.get(t, table[""]) for t in question_types]
