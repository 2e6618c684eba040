"""The VQA task (image + question -> answer class): VQATrainConfig, question batches with their
images, accuracy per question and answer type, and the official VQA accuracy for VQA v2 data.

Data: the easy-vqa layout or the VQA v2 layout (``rnnlab.data.vqa``); validation questions come
from ``val_data`` or a hash split of the training questions by image (``val_frac``), so no
validation image is ever trained on. The answer vocabulary is the ``max_answers`` most frequent
training answers (Antol et al. keep 1000); a training question whose answer falls outside it is
left out of training and counted in a note. Each epoch visits the training images in a seeded
random order::

    permutation   7 2 9 0 ...               of the training images, seeded by (seed, epoch)
    step k        images perm[k*B:(k+1)*B] -> pixels (B, 3, S, S) (or feature rows), each
                  encoded once, and all their questions: word ids (b, T), lengths (b,),
                  image positions (b,), answer classes (b,)

(as captioning trains on every caption of a batch of images: the CNN, the costly part, runs
once per image instead of once per question).

The best checkpoint has the highest validation accuracy (then lowest loss). The step, guard,
stop rules and checkpoints are ``rnnlab.training.loop.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import CELL_HELP, CellName
from rnnlab.data.captions import read_features
from rnnlab.data.errors import DataError
from rnnlab.data.split import hash_split
from rnnlab.data.text import data_sha256
from rnnlab.data.vocab import Vocab
from rnnlab.data.vqa import (
    VQADataset,
    build_vocabs,
    encode_questions,
    load_vqa_images,
    read_vqa,
)
from rnnlab.loading import RunKind
from rnnlab.metrics.vqa import VQAReport, vqa_report
from rnnlab.models.vqa import VQAConfig, VQAModel
from rnnlab.training.config import RunConfig, retune
from rnnlab.training.distributed import DataParallel
from rnnlab.training.loop import Evaluation, FitResult, Score, Task
from rnnlab.training.session import Changes, OnEvent, RunPath, begin, run_task, start_process
from rnnlab.validation import ConfigError, setting

MODEL_FIELDS = ("cell", "embedding_size", "hidden_size", "num_layers", "bidirectional", "dropout",
                "encoder", "image_size", "cnn_channels", "cnn_blocks", "feature_size", "fusion",
                "fusion_size", "attention_layers", "attention_size", "mlp_size")  # fmt: skip


@dataclass
@retune(lr=1e-3, max_steps=3000, warmup_steps=100, min_lr_frac=0.05, eval_every=250, seed=1)
class VQATrainConfig(RunConfig):
    """Every setting of a VQA run; CLI flags are these names in kebab-case."""

    data: str = setting("", "easy-vqa split folder (or its questions.json), or a VQA v2 "
                        "questions JSON")  # fmt: skip
    annotations: str = setting("", "VQA v2 annotations JSON (makes --data the VQA v2 layout)")
    images: str = setting("", "image folder (default: images/ beside the JSON)")
    val_data: str = setting("", "validation questions (default: a hash split of --data by image)")
    val_annotations: str = setting("", "VQA v2 annotations of --val-data")
    val_images: str = setting("", "image folder of --val-data")
    val_frac: float = setting(0.1, "images of --data held out for validation (no --val-data)",
                              low=0.0, high=0.5)  # fmt: skip
    features: str = setting("", "precomputed image features .npy/.safetensors, one row per image "
                            "of --data in order of first mention (instead of the CNN)")  # fmt: skip
    val_features: str = setting("", "features of --val-data's images")
    max_length: int = setting(20, "questions are cut to this many words", low=1, high=1000)
    max_answers: int = setting(1000, "answer vocabulary: the most frequent training answers",
                               low=2, high=2**20)  # fmt: skip
    min_count: int = setting(1, "keep question words seen at least this often", low=1,
                             high=10**9)  # fmt: skip
    # model (see VQAConfig)
    blind: bool = setting(False, "question only: no image (the blind baseline)")
    cell: CellName = setting("lstm", CELL_HELP)
    embedding_size: int = setting(64, "word embedding size", low=1, high=65536)
    hidden_size: int = setting(128, "question encoder units per layer and direction", low=1,
                               high=65536)  # fmt: skip
    num_layers: int = setting(1, "question encoder layers", low=1, high=64)
    bidirectional: bool = setting(False, "read the question both ways")
    dropout: float = setting(0.0, "dropout", low=0.0, high=0.9)
    image_size: int = setting(64, "images are resized to this side", low=8, high=1024)
    cnn_channels: int = setting(16, "CNN first-stage channels", low=1, high=1024)
    cnn_blocks: int = setting(3, "CNN stages", low=1, high=8)
    feature_size: int = setting(128, "image feature size (CNN output)", low=1, high=1_000_000)
    fusion: Literal["concat", "product"] = setting(
        "concat", "concatenation, or the element-wise product of deeper LSTM Q + norm I"
    )
    fusion_size: int = setting(256, "size of the product fusion / attention space", low=1,
                               high=65536)  # fmt: skip
    attention_layers: int = setting(0, "stacked attention layers over the CNN grid (0: none)",
                                    low=0, high=8)  # fmt: skip
    attention_size: int = setting(128, "attention MLP size", low=1, high=65536)
    mlp_size: int = setting(256, "answer MLP hidden units", low=1, high=65536)
    batch_size: int = setting(8, "images per step, each with all its training questions",
                              low=1, high=65536)  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        step = 2 ** (self.cnn_blocks - 1)
        if not self.features and not self.blind and self.image_size % step:
            raise ConfigError("image_size", f"a multiple of {step} (--cnn-blocks "
                              f"{self.cnn_blocks} pools {self.cnn_blocks - 1} times)",
                              self.image_size)  # fmt: skip
        if self.blind and self.attention_layers:
            raise ConfigError("attention_layers", "0 for a blind model", self.attention_layers)
        if self.val_data and self.features and not self.val_features:
            raise ConfigError("val_features", "a feature file for --val-data's images",
                              self.val_features)  # fmt: skip

    @property
    def encoder(self) -> str:
        return "none" if self.blind else "features" if self.features else "cnn"

    def model_config(self, vocab_size: int, num_answers: int,
                     feature_size: int | None = None) -> VQAConfig:  # fmt: skip
        kwargs = {name: getattr(self, name) for name in MODEL_FIELDS}
        if feature_size is not None:
            kwargs["feature_size"] = feature_size
        return VQAConfig(vocab_size=vocab_size, num_answers=num_answers, **kwargs)


@dataclass
class VQAData:
    """Training and validation questions with the inputs of their images: uint8 pixels
    (N, 3, S, S), feature rows (N, F) / (N, K, F), or None for a blind model; rows follow each
    dataset's ``images``."""

    train: VQADataset
    val: VQADataset
    train_inputs: Tensor | None
    val_inputs: Tensor | None


def read_split(data: str, annotations: str, images: str) -> VQADataset:
    return read_vqa(data, annotations or None, images or None)


def image_inputs(dataset: VQADataset, config: Any, features: str,
                 width: int | None = None) -> Tensor | None:  # fmt: skip
    """What the model reads for each image of ``dataset`` (None for a blind model); features
    of another width than ``width`` (a trained model's F) are a DataError naming the file."""
    if config.blind:
        return None
    if features:
        return torch.from_numpy(read_features(features, len(dataset.images), width))
    return torch.from_numpy(load_vqa_images(dataset, config.image_size))


def split_questions(config: Any) -> tuple[VQADataset, VQADataset, bool]:
    """(training, validation questions, whether they share one image list): ``val_data``, or a
    hash split of ``data`` by image file name."""
    if not config.data:
        raise DataError("data: a question file is needed (--data)")
    full = read_split(config.data, config.annotations, config.images)
    if config.val_data:
        return full, read_split(config.val_data, config.val_annotations, config.val_images), False
    keys = [full.images[q.image].name for q in full.questions]  # split by image file name
    train_rows, val_rows = hash_split(range(len(keys)), lambda i: keys[i], config.val_frac)
    if not train_rows or not val_rows:
        raise DataError(f"{full.source}: the validation split is empty or takes every question; "
                        "change --val-frac or give --val-data")  # fmt: skip
    return full.subset(train_rows), full.subset(val_rows), True


def load_vqa_data(config: VQATrainConfig) -> VQAData:
    """Read the questions, split off validation, then every image (or the feature files)."""
    train, val, shared = split_questions(config)
    inputs = image_inputs(train, config, config.features)
    val_inputs = inputs if shared else image_inputs(val, config, config.val_features)
    if (config.features and inputs is not None and val_inputs is not None
            and inputs.shape[1:] != val_inputs.shape[1:]):  # fmt: skip
        raise DataError(f"{config.val_features}: features of shape (N, "
                        f"{', '.join(map(str, val_inputs.shape[1:]))}) but --features "
                        f"{config.features} has (N, {', '.join(map(str, inputs.shape[1:]))}); "
                        "give both from the same extractor")  # fmt: skip
    return VQAData(train, val, inputs, val_inputs)


@dataclass
class VQAEval:
    loss: float
    predicted: list[str]
    report: VQAReport


@torch.no_grad()
def evaluate_questions(model: VQAModel, dataset: VQADataset, inputs: Tensor | None,
                       words: Vocab, answers: Vocab, max_length: int, *, batch_size: int = 256,
                       device: torch.device | str = "cpu") -> VQAEval:  # fmt: skip
    """Loss (nats per question whose answer is in the vocabulary), predictions and the
    accuracy report (with VQA accuracy for VQA v2 data) over every question of ``dataset``."""
    was_training = model.training
    model.eval()
    try:
        enc = encode_questions(dataset, words, answers, max_length)
        total, counted, predicted = 0.0, 0, []
        for start in range(0, len(enc.ids), batch_size):
            end = min(len(enc.ids), start + batch_size)
            ids = torch.from_numpy(enc.ids[start:end]).to(device)
            lengths = torch.from_numpy(enc.lengths[start:end])
            rows = torch.from_numpy(enc.image_rows[start:end])
            unique, position = torch.unique(rows, return_inverse=True)  # each image once
            images = None if inputs is None else inputs[unique].to(device)
            logits = model(images, ids, lengths, position.to(device)).float()
            y = torch.from_numpy(enc.answers[start:end]).to(device)
            known = y >= 0
            if known.any():
                total += float(F.cross_entropy(logits[known], y[known], reduction="sum"))
                counted += int(known.sum())
            predicted += [answers.tokens[k] for k in logits.argmax(-1).tolist()]
        qs = dataset.questions
        humans = [q.human_answers for q in qs] if dataset.has_human_answers else None
        report = vqa_report(predicted, [q.answer for q in qs], [q.question_type for q in qs],
                            [q.answer_type for q in qs], humans)  # fmt: skip
        return VQAEval(total / max(1, counted), predicted, report)
    finally:
        model.train(was_training)


class VQATask(Task):
    """Batches of questions with their images; each rank trains on its block of a batch."""

    name = "vqa"
    unit = "questions"
    loss_unit = "question"
    scores = (Score("val_accuracy", "best_accuracy", higher_is_better=True),
              Score("val_loss", "best_val_loss"))  # fmt: skip

    def __init__(self, config: VQATrainConfig, data: VQAData, words: Vocab, answers: Vocab,
                 record: dict[str, Any]) -> None:  # fmt: skip
        self.config, self.data, self.words, self.answers = config, data, words, answers
        self.record = record
        self.num_classes = len(answers)
        enc = encode_questions(data.train, words, answers, config.max_length)
        keep = np.flatnonzero(enc.answers >= 0)  # answers outside the vocabulary: not trained on
        self.dropped = len(enc.answers) - len(keep)
        self.truncated = enc.truncated
        self.ids = torch.from_numpy(enc.ids[keep])
        self.lengths = torch.from_numpy(enc.lengths[keep])
        self.rows = torch.from_numpy(enc.image_rows[keep])
        self.targets = torch.from_numpy(enc.answers[keep])
        self.images = torch.unique(self.rows)  # images with a question to train on (sorted)
        if not len(keep):
            raise DataError(f"{data.train.source}: no training question has an answer in the "
                            "answer vocabulary")  # fmt: skip
        kept = set(answers.tokens)
        if not any(q.answer in kept for q in data.val.questions):  # the val loss would be 0/0
            raise DataError(f"{data.val.source}: no validation question's answer is among the "
                            f"{len(answers)} training answers; give validation questions whose "
                            "answers the training questions have (--val-data)")  # fmt: skip

    def build_model(self) -> nn.Module:
        inputs = self.data.train_inputs
        feature_size = (
            int(inputs.shape[-1]) if self.config.features and inputs is not None else None
        )
        self.model = VQAModel(self.config.model_config(len(self.words), len(self.answers),
                                                       feature_size))  # fmt: skip
        return self.model

    def start_epoch(self, epoch: int, boundary: bool) -> None:
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**63)
        self.order = self.images[torch.randperm(len(self.images), generator=g)]

    def steps_per_epoch(self) -> int:
        return max(1, len(self.images) // self.config.batch_size)

    def batch(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Every trainable question of ``images`` (M,): word ids (b, T), lengths (b,), image
        positions in ``images`` (b,), answer classes (b,), and the images' rows (M,)."""
        position = torch.full((len(self.data.train.images),), -1, dtype=torch.long)
        position[images] = torch.arange(len(images))
        picked = torch.nonzero(position[self.rows] >= 0).squeeze(1)  # in question order
        T = int(self.lengths[picked].max())
        return (self.ids[picked, :T], self.lengths[picked], position[self.rows[picked]],
                self.targets[picked], images)  # fmt: skip

    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        B = self.config.batch_size
        chosen = self.order[cursor * B : (cursor + 1) * B]
        ids, lengths, rows, y, images = self.batch(chosen)
        questions = len(y)
        if dp.active:  # this rank's block of the batch's images, with all their questions
            mine, weight = dp.shard_examples(list(range(len(chosen))))
            ids, lengths, rows, y, images = self.batch(chosen[mine])
        inputs = self.data.train_inputs
        pixels = None if inputs is None else inputs[images].to(dp.device)  # (M, 3, S, S)
        logits = net(pixels, ids.to(dp.device), lengths, rows.to(dp.device))  # (b, N)
        y = y.to(dp.device)
        if dp.active:  # this rank's summed loss over the batch's questions, times W
            scale = weight * dp.world_size / questions
            return F.cross_entropy(logits, y, reduction="sum") * scale, questions
        return F.cross_entropy(logits, y), questions

    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        if not dp.is_main:  # rank 0 evaluates (it alone writes the best checkpoint)
            return None
        d = self.data
        found = evaluate_questions(model, d.val, d.val_inputs, self.words, self.answers,  # type: ignore[arg-type]
                                   self.config.max_length, device=dp.device)  # fmt: skip
        metrics = {"val_loss": found.loss, "val_accuracy": found.report.accuracy}
        if found.report.vqa_accuracy is not None:
            metrics["val_vqa_accuracy"] = found.report.vqa_accuracy
        return Evaluation(metrics)

    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.record, {"words": self.words.to_json(), "answers": self.answers.to_json()}

    def start_fields(self) -> dict[str, Any]:
        d = self.data
        return {"data": f"{len(self.targets):,} training questions on {len(self.images):,} "
                f"images, {len(d.val.questions):,} validation questions, vocab "
                f"{len(self.words)}, {len(self.answers)} answers"}  # fmt: skip


def train_vqa(config: VQATrainConfig | None = None, *, resume: RunPath = None,
              changes: Changes = None, on_event: OnEvent = None) -> FitResult:  # fmt: skip
    """Train a VQAModel per ``config``, or resume the run directory ``resume`` with ``changes``
    (``rnnlab.training.session.begin``). Events and signals as in ``rnnlab.training.loop.fit``."""
    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    launch, device = start_process(config)
    data = load_vqa_data(config)
    if ckpt is None:
        words, answers = build_vocabs(data.train, config.max_answers, config.min_count)
    else:
        words, answers = ckpt.vocabs["vocab"], ckpt.vocabs["answers"]
    default = f"runs/{Path(config.data).parent.name or 'vqa'}-vqa-{config.encoder}"
    run_dir = ckpt.run_dir if ckpt else Path(config.out_dir or default)
    record = _record(config, run_dir)
    if ckpt is not None and ckpt.record.get("sha256") != record["data"]["sha256"]:
        raise DataError(f"{config.data}: changed since the run started (sha256 differs); "
                        "resume with the question file the run was trained on")  # fmt: skip
    task = VQATask(config, data, words, answers, record)
    if task.dropped:
        emit({"kind": "note", "text": f"{task.dropped} training question(s) have an answer "
              f"outside the {len(answers)} kept (--max-answers); not trained on"})  # fmt: skip
    if task.truncated:
        emit({"kind": "note", "text": f"{task.truncated} training question(s) cut to "
              f"--max-length {config.max_length} words"})  # fmt: skip
    return run_task(lambda dp: task, launch, device, run_dir, emit, ckpt)


def _questions_file(data: str) -> Path:
    path = Path(data)
    return path / "questions.json" if path.is_dir() else path


def _record(config: VQATrainConfig, run_dir: Path) -> dict[str, Any]:
    """The stored train config (absolute paths, so eval, predict and resume work from any
    directory) and what the data was."""
    train = config.to_dict()
    for name in ("data", "annotations", "images", "val_data", "val_annotations", "val_images",
                 "features", "val_features"):  # fmt: skip
        if train[name]:
            train[name] = str(Path(train[name]).resolve())
    train["out_dir"] = str(run_dir.resolve())
    source = _questions_file(config.data)
    return {"train": train, "data": {"source": str(source.resolve()),
                                     "sha256": data_sha256(source)}}  # fmt: skip


# -- its run directories --------------------------------------------------------------------------


def _vocabs(data: Any, source: str) -> dict[str, Vocab]:
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected an object with words and answers")
    return {"vocab": Vocab.from_json(data.get("words"), f"{source}: words"),
            "answers": Vocab.from_json(data.get("answers"), f"{source}: answers")}  # fmt: skip


KIND = RunKind("vqa", VQATrainConfig, VQAConfig, VQAModel, _vocabs,
               sizes=lambda c: {"vocab": c.vocab_size, "answers": c.num_answers})  # fmt: skip
