"""Classification metrics: accuracy, per-class F1, macro-F1 and the confusion matrix.

``confusion[i][j]`` counts examples of true class i predicted as class j. A class's F1 is
``2 TP / (2 TP + FP + FN)`` (0 when it never occurs and is never predicted). Macro-F1 is the
unweighted mean over the classes that occur in the references or the predictions, so a label
the evaluation set never mentions does not count as a zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class ClassificationReport:
    accuracy: float
    macro_f1: float
    f1: list[float]  # per class
    confusion: list[list[int]]  # (C, C): true x predicted
    examples: int


def classification_report(
    predicted: Sequence[int], true: Sequence[int], num_classes: int
) -> ClassificationReport:
    if len(predicted) != len(true):
        raise ValueError(f"predicted and true: {len(predicted)} and {len(true)} examples")
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for p, t in zip(predicted, true, strict=True):
        confusion[t][p] += 1
    f1, present = [], []
    for c in range(num_classes):
        tp = confusion[c][c]
        fn = sum(confusion[c]) - tp
        fp = sum(confusion[r][c] for r in range(num_classes)) - tp
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        if tp + fp + fn:
            present.append(f1[-1])
    correct = sum(confusion[c][c] for c in range(num_classes))
    n = len(true)
    return ClassificationReport(
        accuracy=correct / n if n else 0.0,
        macro_f1=sum(present) / len(present) if present else 0.0,
        f1=f1,
        confusion=confusion,
        examples=n,
    )


def format_confusion(report: ClassificationReport, labels: Sequence[str]) -> str:
    """The confusion matrix as aligned text, rows true labels, columns predicted."""
    width = max([len(str(x)) for row in report.confusion for x in row] + [len(s) for s in labels])
    head = " " * (width + 2) + " ".join(f"{s:>{width}}" for s in labels)
    rows = [f"{labels[i]:>{width}}  " + " ".join(f"{x:>{width}}" for x in row)
            for i, row in enumerate(report.confusion)]  # fmt: skip
    return "\n".join(["true \\ predicted", head, *rows])
