"""The captioning task (one-to-many): CaptionTrainConfig, (image, caption) batches with teacher
forcing, BLEU-4 and CIDEr-D validation.

Each epoch visits the training images in a seeded random order; a step trains on every
reference caption of ``batch_size`` images (neuraltalk2 and Show and Tell train on caption pairs,
so an image with five captions is seen five times)::

    permutation   7 2 9 0 ...                  torch.randperm, seeded by (seed, epoch)
    step k        images perm[k*B:(k+1)*B] -> pixels (B, 3, S, S) + all their captions (N, T+2)

Validation: the teacher-forced loss on every val caption, and BLEU-4 and CIDEr-D of greedy
captions of (up to ``eval_images``) val images; the best checkpoint has the highest CIDEr-D (as
neuraltalk2 selects by its language score). The step, guard, stop rules and checkpoints are
``rnnlab.training.loop.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import CellName
from rnnlab.data.captions import (
    PAD,
    CaptionDataset,
    CaptionImage,
    CaptionVocab,
    EncodedCaptions,
    encode_captions,
    load_images,
    read_caption_json,
    read_features,
)
from rnnlab.data.errors import DataError
from rnnlab.data.text import data_sha256
from rnnlab.loading import RunKind
from rnnlab.metrics.captioning import score_captions
from rnnlab.models.captioner import Captioner, CaptionerConfig, caption_loss, generate_captions
from rnnlab.training.config import BIG, RunConfig, retune
from rnnlab.training.distributed import DataParallel
from rnnlab.training.loop import Evaluation, FitResult, Score, Task
from rnnlab.training.session import Changes, OnEvent, RunPath, begin, run_task, start_process
from rnnlab.validation import ConfigError, setting

MODEL_FIELDS = ("cell", "embedding_size", "hidden_size", "num_layers", "dropout", "conditioning",
                "attention", "image_size", "cnn_channels", "cnn_blocks", "feature_size",
                "attention_size")  # fmt: skip


@dataclass
@retune(lr=2e-3, warmup_steps=100, min_lr_frac=0.05, lr_decay=0.8, eval_every=250, seed=1)
class CaptionTrainConfig(RunConfig):
    """Every setting of a captioning run; CLI flags are these names in kebab-case."""

    data: str = setting("", "caption JSON in the Karpathy-split format")
    images: str = setting("", "image folder (default: the JSON's folder)")
    features: str = setting("", "precomputed features .npy/.safetensors, one row per image "
                            "(instead of the CNN)")  # fmt: skip
    # vocabulary and lengths
    min_count: int = setting(1, "keep words seen at least this often in training captions",
                             low=1, high=10**9)  # fmt: skip
    max_length: int = setting(16, "captions are cut to this many words", low=1, high=1000)
    # model (see CaptionerConfig)
    cell: CellName = setting("lstm", "decoder cell")
    embedding_size: int = setting(64, "word embedding size", low=1, high=65536)
    hidden_size: int = setting(256, "decoder hidden units per layer", low=1, high=65536)
    num_layers: int = setting(1, "decoder layers", low=1, high=64)
    dropout: float = setting(0.0, "dropout", low=0.0, high=0.95)
    conditioning: Literal["step", "init"] = setting(
        "step", "image enters every step (W_ih v) or the initial state (Show and Tell)"
    )
    attention: bool = setting(False, "soft attention over the CNN grid (Show, Attend and Tell)")
    image_size: int = setting(32, "images are resized to this side", low=8, high=1024)
    cnn_channels: int = setting(32, "CNN first-stage channels", low=1, high=1024)
    cnn_blocks: int = setting(3, "CNN stages", low=1, high=8)
    feature_size: int = setting(128, "image feature size (CNN output)", low=1, high=1_000_000)
    attention_size: int = setting(0, "attention MLP size (0: hidden size)", low=0, high=65536)
    batch_size: int = setting(16, "images per step (each with all its captions)", low=1,
                              high=65536)  # fmt: skip
    eval_images: int = setting(0, "val images captioned per validation (0: all)", low=0,
                               high=BIG, resume="free")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        step = 2 ** (self.cnn_blocks - 1)  # the CNN halves the grid cnn_blocks - 1 times
        if not self.features and self.image_size % step:
            raise ConfigError("image_size", f"a multiple of {step} (--cnn-blocks "
                              f"{self.cnn_blocks} pools {self.cnn_blocks - 1} times)",
                              self.image_size)  # fmt: skip

    def model_config(self, vocab_size: int, feature_size: int | None = None) -> CaptionerConfig:
        kwargs = {name: getattr(self, name) for name in MODEL_FIELDS}
        if self.features:
            kwargs.update(encoder="features", feature_size=feature_size or self.feature_size)
        return CaptionerConfig(vocab_size=vocab_size, **kwargs)


@dataclass
class CaptionData:
    """A dataset ready for the loop: its images (uint8 (N, 3, S, S)) or features ((N, F) or
    (N, K, F)), rows aligned with ``dataset.images``."""

    dataset: CaptionDataset
    pixels: torch.Tensor

    def inputs(self, images: list[CaptionImage]) -> torch.Tensor:
        return self.pixels[[im.index for im in images]]


def load_caption_data(config: CaptionTrainConfig) -> CaptionData:
    """Read the JSON, then every image (or the feature file); errors name the file."""
    if not config.data:
        raise DataError("data: a caption JSON file is needed (--data FILE)")
    dataset = read_caption_json(config.data, config.images or None)
    if config.features:
        pixels = torch.from_numpy(read_features(config.features, len(dataset.images)))
    else:
        pixels = torch.from_numpy(load_images(dataset.images, config.image_size))
    for split in ("train", "val"):
        if not dataset.split(split):
            raise DataError(f"{dataset.source}: no {split!r} images; the loop needs both splits")
    return CaptionData(dataset, pixels)


def caption_batch(caps: EncodedCaptions, images: Tensor) -> tuple[Tensor, Tensor]:
    """Every caption of the images at positions ``images`` (N,): ids (B, T + 2) and, per
    caption, the position of its image in ``images`` (B,)."""
    wanted = images.numpy()
    mask = np.isin(caps.image_rows, wanted)
    position = {int(r): i for i, r in enumerate(wanted)}
    rows = [position[int(r)] for r in caps.image_rows[mask]]
    return torch.from_numpy(caps.ids[mask]), torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def validate(model: Captioner, vocab: CaptionVocab, images: list[CaptionImage], inputs: Tensor,
             caps: EncodedCaptions, config: CaptionTrainConfig,
             device: torch.device) -> dict[str, float]:  # fmt: skip
    """Teacher-forced loss (nats/word) on every val caption; greedy BLEU-4/CIDEr-D on the first
    ``eval_images`` (0: all) val images."""
    model.eval()
    total, words = 0.0, 0
    for i in range(0, len(images), 64):
        ids, rows = caption_batch(caps, torch.arange(i, min(len(images), i + 64)))
        logits = model(inputs[i : i + 64].to(device), ids[:, :-1].to(device), rows.to(device))
        n = int((ids[:, 1:] != PAD).sum())
        total += float(caption_loss(logits, ids[:, 1:].to(device), PAD)) * n
        words += n
    count = min(len(images), config.eval_images or len(images))
    generated = []
    for i in range(0, count, 256):
        batch = inputs[i : min(count, i + 256)].to(device)
        generated += generate_captions(model, batch, max_length=config.max_length)
    scores = score_captions([vocab.decode(g) for g in generated],
                            [im.captions for im in images[:count]])  # fmt: skip
    return {"val_loss": total / max(1, words), "val_bleu4": scores.bleu[3],
            "val_cider": scores.cider}  # fmt: skip


class CaptionTask(Task):
    """Batches of images with all their captions; each rank trains on its block of images."""

    name = "caption"
    unit = "captions"
    loss_unit = "word"  # per caption word, <end> included
    scores = (Score("val_cider", "best_cider", higher_is_better=True),)

    def __init__(self, config: CaptionTrainConfig, data: CaptionData, vocab: CaptionVocab,
                 record: dict[str, Any]) -> None:  # fmt: skip
        self.config, self.data, self.vocab, self.record = config, data, vocab, record
        self.num_classes = len(vocab)
        self.train_images = data.dataset.split("train")
        self.val_images = data.dataset.split("val")
        self.train_caps = encode_captions(self.train_images, vocab, config.max_length)
        self.val_caps = encode_captions(self.val_images, vocab, config.max_length)
        self.train_inputs = data.inputs(self.train_images)  # rows by position in the split
        self.val_inputs = data.inputs(self.val_images)

    def build_model(self) -> nn.Module:
        feature_size = int(self.data.pixels.shape[-1]) if self.config.features else None
        self.model = Captioner(self.config.model_config(len(self.vocab), feature_size))
        return self.model

    def start_epoch(self, epoch: int, boundary: bool) -> None:
        g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + epoch) % 2**63)
        self.order = torch.randperm(len(self.train_images), generator=g)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_images) // self.config.batch_size)

    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        B = self.config.batch_size
        picked = self.order[cursor * B : (cursor + 1) * B]
        ids, rows = caption_batch(self.train_caps, picked)  # every caption of the batch's images
        captions, words, weight = int(ids.shape[0]), 0, 1.0
        if dp.active:  # this rank's images, and the batch's word count its loss is weighed by
            words = int((ids[:, 1:] != PAD).sum())
            mine, weight = dp.shard_examples(list(range(len(picked))))
            picked = picked[mine]
            ids, rows = caption_batch(self.train_caps, picked)
        ids, rows = ids.to(dp.device), rows.to(dp.device)  # (N, T + 2), (N,)
        images = self.train_inputs[picked].to(dp.device)  # (B, 3, S, S) or (B, F) / (B, K, F)
        logits = net(images, ids[:, :-1], rows)  # (N, T + 1, V)
        if dp.active:  # this rank's summed loss over the batch's words, times W (DDP averages)
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=PAD,
                                   reduction="sum") * (weight * dp.world_size / words)  # fmt: skip
        else:
            loss = caption_loss(logits, ids[:, 1:], PAD)
        return loss, captions

    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        if not dp.is_main:  # rank 0 evaluates (it alone writes the best checkpoint)
            return None
        return Evaluation(validate(model, self.vocab, self.val_images, self.val_inputs,  # type: ignore[arg-type]
                                   self.val_caps, self.config, dp.device))  # fmt: skip

    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.record, self.vocab.to_json()  # the stored train config and the data record

    def start_fields(self) -> dict[str, Any]:
        captions = len(self.train_caps.ids)
        return {"data": f"vocab {len(self.vocab)}, {captions:,} training captions"}


def train_captioner(config: CaptionTrainConfig | None = None, *, resume: RunPath = None,
                    changes: Changes = None, on_event: OnEvent = None) -> FitResult:  # fmt: skip
    """Train a Captioner per ``config``, or resume the run directory ``resume`` with ``changes``
    (``rnnlab.training.session.begin``). Events and signals as in
    ``rnnlab.training.loop.fit``."""
    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    launch, device = start_process(config)
    data = load_caption_data(config)
    if ckpt is None:
        vocab = CaptionVocab.build([c for im in data.dataset.split("train") for c in im.captions],
                                   config.min_count)  # fmt: skip
    else:
        vocab = ckpt.vocab
    run_dir = ckpt.run_dir if ckpt else Path(config.out_dir or f"runs/{Path(config.data).stem}"
                                             f"-caption-{config.cell}")  # fmt: skip
    record = _record(config, data, run_dir)
    if ckpt is not None and ckpt.record.get("sha256") != record["data"]["sha256"]:
        raise DataError(f"{data.dataset.source}: changed since the run started (sha256 differs); "
                        "resume with the caption file the run was trained on")  # fmt: skip
    task = CaptionTask(config, data, vocab, record)
    for name, caps in (("train", task.train_caps), ("val", task.val_caps)):
        if caps.truncated:
            emit({"kind": "note", "text": f"{caps.truncated} {name} caption(s) cut to "
                  f"--max-length {config.max_length} words"})  # fmt: skip
    return run_task(lambda dp: task, launch, device, run_dir, emit, ckpt)


def _record(config: CaptionTrainConfig, data: CaptionData, run_dir: Path) -> dict[str, Any]:
    """The stored train config (absolute paths, so eval, predict and resume work from any
    directory) and what the data was."""
    train = {
        **config.to_dict(),
        "out_dir": str(run_dir.resolve()),
        "data": str(data.dataset.source.resolve()),
        "images": str(data.dataset.image_dir.resolve()),
        "features": str(Path(config.features).resolve()) if config.features else "",
    }
    return {"train": train, "data": {"source": train["data"],
                                     "sha256": data_sha256(data.dataset.source)}}  # fmt: skip


# -- its run directories --------------------------------------------------------------------------

KIND = RunKind("caption", CaptionTrainConfig, CaptionerConfig, Captioner,
               lambda data, source: {"vocab": CaptionVocab.from_json(data, source)},
               sizes=lambda c: {"vocab": c.vocab_size})  # fmt: skip
