"""The classification task (many-to-one): ``text, label`` rows -> SequenceClassifier, with
accuracy, macro-F1 and a confusion matrix.

Rows come from a TSV/CSV file (``rnnlab.data.pairs.read_labeled``), read as characters or
whitespace tokens. Validation rows come from ``val_data`` or a hash split of the training file by
text (``val_frac``). The vocabulary and the label set are built from the training rows; a symbol
or label a validation/evaluation file has and training does not is a DataError naming the file
and line. The best checkpoint has the highest validation accuracy (then lowest loss). The step,
guard, stop rules and checkpoints are ``rnnlab.training.loop.fit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.data import pairs
from rnnlab.data.errors import DataError
from rnnlab.data.pairs import PairData, Symbols
from rnnlab.data.split import hash_split
from rnnlab.data.text import data_sha256
from rnnlab.loading import RunKind
from rnnlab.metrics.classification import ClassificationReport, classification_report
from rnnlab.models.classifier import CellName, ClassifierConfig, SequenceClassifier
from rnnlab.training.config import Backend, RunConfig, retune
from rnnlab.training.distributed import DataParallel
from rnnlab.training.loop import Evaluation, FitResult, Score, Task
from rnnlab.training.session import Changes, OnEvent, RunPath, begin, run_task, start_process
from rnnlab.validation import ConfigError, setting

TEXT_SPECIALS = ("<pad>", "<unk>")


@dataclass
@retune(max_steps=1000, warmup_steps=20, min_lr_frac=0.05, seed=1234)
class ClassifyTrainConfig(RunConfig):
    """Everything that defines a classification run; CLI flags are these names in kebab-case."""

    data: str = setting("", "training rows: TSV or CSV of text, label")
    val_data: str = setting("", "validation rows (default: a hash split of --data)")
    tokens: pairs.Tokenizer = setting("char", "text symbols: characters or space-separated tokens")
    header: bool = setting(False, "the files start with a header row")
    val_frac: float = setting(0.1, "hash split of --data held out for validation", low=0.0,
                              high=0.5)  # fmt: skip
    embedding_size: int = setting(32, "embedding width", low=1, high=16384)
    hidden_size: int = setting(64, "units per layer and direction", low=1, high=16384)
    num_layers: int = setting(1, "stacked layers", low=1, high=64)
    cell: CellName = setting("lstm", "recurrent cell")
    bidirectional: bool = setting(False, "bidirectional")
    dropout: float = setting(0.0, "dropout", low=0.0, high=0.9)
    pooling: Literal["last", "mean", "max"] = setting("last", "last state, or mean/max over time")
    backend: Backend = setting("auto", "recurrence engine (all compute the same function)",
                               resume="inexact")  # fmt: skip
    batch_size: int = setting(32, "rows per step", low=1, high=65536)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("data", "a TSV/CSV file of text, label rows", self.data)

    def model_config(self, vocab_size: int, num_classes: int) -> ClassifierConfig:
        return ClassifierConfig(vocab_size=vocab_size, num_classes=num_classes,
                                **self.values_for(ClassifierConfig))  # fmt: skip


def load_labeled(config: ClassifyTrainConfig) -> PairData:
    """The rows, vocabulary and label set of a run (see the module docstring)."""
    rows = pairs.read_labeled(config.data, tokens=config.tokens, header=config.header)
    digest = data_sha256(config.data)
    if config.val_data:
        train = rows
        val = pairs.read_labeled(config.val_data, tokens=config.tokens, header=config.header)
    else:
        train, val = hash_split(rows, lambda r: " ".join(r.source), config.val_frac)
        if not val or not train:
            raise DataError(f"{config.data}: the validation split is empty or takes every row; "
                            "change --val-frac or give --val-data")  # fmt: skip
    vocab = Symbols.build((r.source for r in rows), TEXT_SPECIALS)  # all training-file text
    labels = Symbols.build((r.target for r in train), ())
    if config.val_data:
        pairs.check_known(val, vocab, labels, config.val_data, "label")
    else:  # one file: a label only in the held-out rows is still the user's label set
        labels = Symbols.build((r.target for r in rows), ())
    return PairData(train, val, vocab, labels, {"data": str(Path(config.data).resolve()),
                                                   "data_sha256": digest})  # fmt: skip


def encode_rows(rows: Sequence[pairs.Pair], vocab: Symbols, labels: Symbols | None,
                unknown: str = "error") -> tuple[list[list[int]], list[int]]:  # fmt: skip
    ids = [vocab.encode(r.source, unknown) for r in rows]  # type: ignore[arg-type]
    ys = [labels.id(r.target[0]) for r in rows] if labels is not None else []
    return ids, ys


@dataclass
class ClassifyEval:
    loss: float
    report: ClassificationReport
    predicted: list[int]


@torch.no_grad()
def evaluate_rows(model: SequenceClassifier, rows: Sequence[pairs.Pair], vocab: Symbols,
                  labels: Symbols, *, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> ClassifyEval:  # fmt: skip
    """Loss (nats per row), accuracy, macro-F1 and the confusion matrix over ``rows``."""
    was_training = model.training
    model.eval()
    try:
        ids, ys = encode_rows(rows, vocab, labels)
        total, predicted = 0.0, []
        for start in range(0, len(ids), batch_size):
            x, n = pairs.pad_batch(ids[start : start + batch_size])
            y = torch.tensor(ys[start : start + batch_size], device=device)
            logits = model(x.to(device), n)
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            predicted += logits.argmax(-1).tolist()
        report = classification_report(predicted, ys, len(labels))
        return ClassifyEval(total / max(len(ys), 1), report, predicted)
    finally:
        model.train(was_training)


class ClassifyTask(Task):
    """Length-bucketed row batches; each rank trains on its block of a batch's rows."""

    name = "classify"
    unit = "rows"
    loss_unit = "row"
    scores = (Score("val_accuracy", "best_accuracy", higher_is_better=True),
              Score("val_loss", "best_val_loss"))  # fmt: skip

    def __init__(self, config: ClassifyTrainConfig, data: PairData, dp: DataParallel) -> None:
        self.config, self.data = config, data
        self.num_classes = max(len(data.target), 2)
        self.ids, self.ys = encode_rows(data.train, data.source, data.target)
        self.lengths = [len(i) for i in self.ids]

    def build_model(self) -> nn.Module:
        vocab, labels = len(self.data.source), len(self.data.target)
        self.model = SequenceClassifier(self.config.model_config(vocab, labels))
        return self.model

    def start_epoch(self, epoch: int, boundary: bool) -> None:
        self.batches = pairs.epoch_batches(
            self.lengths, self.config.batch_size, self.config.seed, epoch
        )

    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        chosen = self.batches[cursor]
        mine, weight = dp.shard_examples(chosen)  # this rank's block of the batch's rows
        x, n = pairs.pad_batch([self.ids[i] for i in mine])
        y = torch.tensor([self.ys[i] for i in mine], device=dp.device)
        if dp.active:  # this rank's summed loss over the batch's rows, times W (DDP averages)
            scale = weight * dp.world_size / len(chosen)
            loss = F.cross_entropy(net(x.to(dp.device), n), y, reduction="sum") * scale
        else:
            loss = F.cross_entropy(net(x.to(dp.device), n), y)
        return loss, len(chosen)

    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        if not dp.is_main:  # rank 0 evaluates (it alone writes the best checkpoint)
            return None
        d = self.data
        found = evaluate_rows(model, d.val, d.source, d.target, device=dp.device)  # type: ignore[arg-type]
        return Evaluation({"val_loss": found.loss, "val_accuracy": found.report.accuracy,
                           "val_macro_f1": found.report.macro_f1})  # fmt: skip

    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        text, labels = self.data.source.to_json(), self.data.target.to_json()
        return {"train": self.config.to_dict(), "data": self.data.record}, {
            "text": text,
            "labels": labels,
        }

    def start_fields(self) -> dict[str, Any]:
        d = self.data
        return {"data": f"{d.sizes('rows')}, {len(d.target)} labels, vocab {len(d.source)}"}


def train_classifier(config: ClassifyTrainConfig | None = None, *, resume: RunPath = None,
                     changes: Changes = None, on_event: OnEvent = None) -> FitResult:  # fmt: skip
    """Train a SequenceClassifier, or resume ``resume`` with ``changes``
    (``rnnlab.training.session.begin``). Events and signals as in ``rnnlab.training.loop.fit``."""
    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    if ckpt is None:  # absolute paths, so a resume from another directory finds the same files
        config = dataclasses.replace(config, data=str(Path(config.data).resolve()),
                                     val_data=str(Path(config.val_data).resolve())
                                     if config.val_data else "")  # fmt: skip
    launch, device = start_process(config)
    data = load_labeled(config)
    config.model_config(len(data.source), len(data.target))  # refuse a bad model up front
    if ckpt is not None and ckpt.record.get("data_sha256") != data.record["data_sha256"]:
        raise DataError(f"{config.data}: not the file the run was trained on")
    run_dir = ckpt.run_dir if ckpt else Path(config.out_dir or f"runs/{Path(config.data).stem}"
                                             "-classify")  # fmt: skip
    return run_task(lambda dp: ClassifyTask(config, data, dp), launch, device, run_dir, emit, ckpt)


# -- its run directories --------------------------------------------------------------------------


def _vocabs(data: Any, source: str) -> dict[str, Symbols]:
    return {"vocab": Symbols.from_json(data.get("text"), f"{source}: text"),
            "labels": Symbols.from_json(data.get("labels"), f"{source}: labels")}  # fmt: skip


KIND = RunKind("classify", ClassifyTrainConfig, ClassifierConfig, SequenceClassifier, _vocabs,
               sizes=lambda c: {"vocab": c.vocab_size, "labels": c.num_classes})  # fmt: skip
