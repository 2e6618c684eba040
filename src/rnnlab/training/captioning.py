"""The captioning training loop: teacher forcing over (image, caption) pairs, validation by
decoding, checkpoints, resume.

One readable loop; the shared pieces (optimizer, schedule, clipping, the non-finite guard,
signals, the run lock, the metrics log, trainer-state packing) are ``rnnlab.training.tools``.
Each epoch visits every training caption once in a seeded random order (neuraltalk2 and Show and
Tell train on caption pairs, so an image with five captions is seen five times)::

    caption rows  0 1 2 3 4 5 6 7 8 9 ...      one row per reference caption
    permutation   7 2 9 0 ...                  torch.randperm, seeded by (seed, epoch)
    step k        rows perm[k*B:(k+1)*B] -> images[image_rows[...]] (B, 3, S, S) + ids (B, T+2)

Validation every ``eval_every`` steps: the teacher-forced loss on every val caption, and BLEU-4 and
CIDEr-D of greedy captions of (up to ``eval_images``) val images; the best checkpoint is the one
with the highest CIDEr-D (as neuraltalk2 selects by its language score). A resumed run continues
from the latest checkpoint: model, optimizer, step, epoch, cursor and RNG states are restored.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from rnnlab.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
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
from rnnlab.metrics.captioning import score_captions
from rnnlab.models.captioner import Captioner, CaptionerConfig, caption_loss, generate_captions
from rnnlab.runtime import capture_rng, resolve_device, restore_rng, seed_everything, set_threads
from rnnlab.training.distributed import (
    DataParallel,
    launch_from_env,
    main_reports,
    rank_device,
    rank_rng_fields,
    rank_seed,
    saved_rng,
)
from rnnlab.training.tools import (
    GracefulStop,
    MetricsLog,
    StepGuard,
    Throughput,
    TrainingError,
    clip_gradients,
    lr_at,
    make_optimizer,
    pack_trainer_state,
    unpack_trainer_state,
)
from rnnlab.validation import ConfigError, from_mapping, setting, validate

Event = dict[str, Any]
TRAINER_SCHEMA = {"optimizer": dict, "step": int, "cursor": int, "epoch": int,
                  "best_cider": float, "rng": dict}  # fmt: skip
MODEL_FIELDS = ("cell", "embedding_size", "hidden_size", "num_layers", "dropout", "conditioning",
                "attention", "image_size", "cnn_channels", "cnn_blocks", "feature_size",
                "attention_size")  # fmt: skip


@dataclass
class CaptionTrainConfig:
    """Every setting of a captioning run; CLI flags are these names in kebab-case."""

    data: str = setting("", "caption JSON in the Karpathy-split format")
    images: str = setting("", "image folder (default: the JSON's folder)")
    features: str = setting("", "precomputed features .npy/.safetensors, one row per image "
                            "(instead of the CNN)")  # fmt: skip
    out_dir: str = setting("", "run directory (default runs/<json>-caption-<cell>)")
    # vocabulary and lengths
    min_count: int = setting(1, "keep words seen at least this often in training captions",
                             low=1, high=10**9)  # fmt: skip
    max_length: int = setting(16, "captions are cut to this many words", low=1, high=1000)
    # model (see CaptionerConfig)
    cell: Literal["lstm", "gru", "rnn", "mut1", "mut2", "mut3"] = setting("lstm", "decoder cell")
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
    # optimisation
    batch_size: int = setting(16, "images per step (each with all its captions)", low=1,
                              high=65536)  # fmt: skip
    max_steps: int = setting(2000, "stop after this many steps", low=1, high=10**12)
    max_minutes: float = setting(0.0, "stop after this wall time, minutes (0: off)", low=0,
                                 high=1e7)  # fmt: skip
    optimizer: Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"] = setting("adam", "optimizer")
    lr: float = setting(2e-3, "peak learning rate", low=1e-12, high=100.0)
    weight_decay: float = setting(0.0, "weight decay", low=0, high=10.0)
    lr_schedule: Literal["cosine", "step", "constant"] = setting("cosine", "learning-rate schedule")
    warmup_steps: int = setting(100, "linear warm-up steps", low=0, high=10**12)
    min_lr_frac: float = setting(0.05, "cosine floor as a fraction of lr", low=0, high=1)
    decay_steps: int = setting(0, "cosine length in steps (0: max_steps)", low=0, high=10**12)
    lr_decay: float = setting(0.8, "step schedule: factor per epoch", low=0, high=1)
    lr_decay_after: int = setting(1, "step schedule: first decayed epoch", low=0, high=10**9)
    grad_clip: float = setting(5.0, "gradient clipping threshold (0: off)", low=0, high=1e6)
    grad_clip_mode: Literal["norm", "value"] = setting("norm", "clip the global norm or values")
    max_nonfinite: int = setting(10, "abort after this many bad steps in a row", low=1,
                                 high=10**6)  # fmt: skip
    # cadence and machine
    eval_every: int = setting(250, "validate every N steps", low=1, high=10**12)
    eval_images: int = setting(0, "val images captioned per validation (0: all)", low=0,
                               high=10**9)  # fmt: skip
    log_every: int = setting(50, "progress every N steps", low=1, high=10**12)
    keep_last: int = setting(2, "step-N checkpoints kept (best/ is kept too)", low=1, high=10**6)
    seed: int = setting(1, "random seed", low=0, high=2**63 - 1)
    threads: int = setting(0, "CPU threads (0: torch's default)", low=0, high=4096)
    device: str = setting("cpu", "cpu, cuda or cuda:N")

    def __post_init__(self) -> None:
        validate(self)
        step = 2 ** (self.cnn_blocks - 1)  # the CNN halves the grid cnn_blocks - 1 times
        if not self.features and self.image_size % step:
            raise ConfigError("image_size", f"a multiple of {step} (--cnn-blocks "
                              f"{self.cnn_blocks} pools {self.cnn_blocks - 1} times)",
                              self.image_size)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


@dataclass
class CaptionTrainResult:
    run_dir: Path
    step: int
    best_cider: float
    last_train_loss: float
    stopped: str  # max_steps | max_minutes | interrupted
    rank: int = 0  # under torchrun: this process's rank (rank 0 writes and reports for the run)
    world_size: int = 1  # processes that trained together (data parallel)


def train_captioner(
    config: CaptionTrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    max_steps: int | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> CaptionTrainResult:
    """Train a Captioner per ``config``, or resume the run directory ``resume`` (its saved
    config; ``max_steps`` may extend it). ``on_event`` receives progress dicts (kind: start,
    note, step, eval, checkpoint, nonfinite, end); the library never prints. SIGTERM or Ctrl-C
    finishes the step, writes a checkpoint and returns ``stopped="interrupted"``."""
    emit = on_event or (lambda event: None)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resolve_checkpoint(resume, "latest"))
        saved = ckpt.config.get("train")
        source = str(ckpt.path / "config.json")
        config = from_mapping(CaptionTrainConfig, saved, f"{source}: train")
        if max_steps is not None:
            config = replace(config, max_steps=max_steps)  # validated like a typed flag
        run_dir = ckpt.path.parent
    elif config is None:
        raise TypeError("train_captioner() needs a CaptionTrainConfig, or resume=RUN_DIR")
    else:
        run_dir = Path(config.out_dir or f"runs/{Path(config.data).stem}-caption-{config.cell}")
    set_threads(config.threads)
    launch = launch_from_env()  # torchrun's WORLD_SIZE/RANK/LOCAL_RANK, or one process
    emit = main_reports(emit, launch)
    device = rank_device(config.device, launch)
    data = load_caption_data(config)
    with GracefulStop() as stop, DataParallel(launch, device) as dp, contextlib.ExitStack() as own:
        dp.open_run_directory(run_dir, ckpt is None, own)  # rank 0 creates and locks it
        return _loop(config, run_dir.resolve(), data, ckpt, dp, emit, stop)


def _loop(
    config: CaptionTrainConfig,
    run_dir: Path,
    data: CaptionData,
    ckpt: Checkpoint | None,
    dp: DataParallel,
    emit: Callable[[Event], None],
    stop: GracefulStop,
) -> CaptionTrainResult:
    device, W = dp.device, dp.world_size
    train_images, val_images = data.dataset.split("train"), data.dataset.split("val")
    if ckpt is None:
        vocab = CaptionVocab.build([c for im in train_images for c in im.captions],
                                   config.min_count)  # fmt: skip
    else:
        vocab = CaptionVocab.from_json(ckpt.vocab, str(ckpt.path / "vocab.json"))
    train_caps = encode_captions(train_images, vocab, config.max_length)
    val_caps = encode_captions(val_images, vocab, config.max_length)
    for name, caps in (("train", train_caps), ("val", val_caps)):
        if caps.truncated:
            emit({"kind": "note", "text": f"{caps.truncated} {name} caption(s) cut to "
                  f"--max-length {config.max_length} words"})  # fmt: skip
    train_inputs = data.inputs(train_images)  # (N_train, ...) rows by position in the split
    val_inputs = data.inputs(val_images)
    feature_size = int(data.pixels.shape[-1]) if config.features else None
    seed_everything(config.seed)  # every rank builds the same model
    model = Captioner(config.model_config(len(vocab), feature_size)).to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    steps_per_epoch = max(1, len(train_images) // config.batch_size)
    step, cursor, epoch, best, elapsed = 0, 0, 0, -math.inf, 0.0
    if ckpt is not None:
        _load_model(model, ckpt.model, str(ckpt.path / "model.safetensors"))
        source = str(ckpt.path / "trainer.json")
        t = unpack_trainer_state(ckpt.trainer_tensors, ckpt.trainer, TRAINER_SCHEMA, source)
        rng, saved_world = saved_rng(t, dp.rank, source)
        try:
            optimizer.load_state_dict(t["optimizer"])
            if rng is not None:
                restore_rng(rng)
            else:  # a rank the checkpoint did not have
                seed_everything(rank_seed(config.seed, dp.rank))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{source}: does not fit this model ({e})") from None
        step, cursor, epoch = t["step"], t["cursor"], t["epoch"]
        best, elapsed = float(t["best_cider"]), float(t.get("elapsed", 0.0))
        dp.check_same("the checkpoint step", step, "every node must read the same run directory")
        if saved_world != W:
            emit({"kind": "note", "text": f"resuming a {saved_world}-process run on {W}: it "
                  "continues, but not bit-identically"})  # fmt: skip
    elif dp.rank:
        seed_everything(rank_seed(config.seed, dp.rank))  # each rank its own dropout masks
    net = dp.wrap(model)  # DistributedDataParallel for several processes, the model for one
    metrics = MetricsLog(  # rank 0 writes metrics.jsonl; the other ranks keep no log
        run_dir / "metrics.jsonl" if dp.is_main else None, resume_step=step if ckpt else None
    )
    guard = StepGuard(len(vocab), config.warmup_steps, config.max_nonfinite)
    speed = Throughput(elapsed)
    # Absolute paths, so eval, predict and resume work from any directory.
    stored = {
        **config.to_dict(),
        "out_dir": str(run_dir),
        "data": str(data.dataset.source.resolve()),
        "images": str(data.dataset.image_dir.resolve()),
        "features": str(Path(config.features).resolve()) if config.features else "",
    }
    data_record = {"source": stored["data"], "sha256": _sha256(data.dataset.source)}
    if ckpt is not None and ckpt.config.get("data", {}).get("sha256") != data_record["sha256"]:
        raise DataError(
            f"{data.dataset.source}: changed since the run started (sha256 differs); "
            "resume with the caption file the run was trained on"
        )
    emit({"kind": "start", "run_dir": str(run_dir), "step": step, "max_steps": config.max_steps,
          "parameters": model.num_parameters(), "vocab_size": len(vocab),
          "train_captions": len(train_caps.ids), "val_images": len(val_images),
          "steps_per_epoch": steps_per_epoch, "device": str(device),
          "resumed": ckpt is not None, "world_size": W})  # fmt: skip

    def checkpoint(is_best: bool) -> None:
        rngs = dp.gather_objects(capture_rng())  # every rank's; rank 0 writes them
        saved.append(step)
        if not dp.is_main:
            return
        metrics.sync()
        tensors, tree = pack_trainer_state({
            "optimizer": optimizer.state_dict(), "step": step, "cursor": cursor, "epoch": epoch,
            "best_cider": best if math.isfinite(best) else -1.0, **rank_rng_fields(rngs),
            "elapsed": speed.elapsed()})  # fmt: skip
        path = save_checkpoint(
            run_dir, step, model=model.state_dict(),
            config={"model": model.config.to_dict(), "train": stored, "data": data_record},
            vocab=vocab.to_json(), trainer_tensors=tensors, trainer=tree,
            keep_last=config.keep_last, is_best=is_best)  # fmt: skip
        emit({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})

    saved: list[int] = []
    stopped, loss_value = "max_steps", math.nan
    clock = elapsed  # the run's wall time, as rank 0 measured it at the last step's agreement
    order = _epoch_order(config.seed, epoch, len(train_images))
    model.train()
    while step < config.max_steps:
        if cursor >= steps_per_epoch:
            cursor, epoch = 0, epoch + 1
            order = _epoch_order(config.seed, epoch, len(train_images))
        picked = order[cursor * config.batch_size : (cursor + 1) * config.batch_size]
        ids, rows = _caption_batch(train_caps, picked)  # every caption of the batch's images
        captions, words, weight = int(ids.shape[0]), 0, 1.0
        if dp.active:  # this rank's images, and the batch's word count its loss is weighed by
            words = int((ids[:, 1:] != PAD).sum())
            mine, weight = dp.shard_examples(list(range(len(picked))))
            picked = picked[mine]
            ids, rows = _caption_batch(train_caps, picked)
        ids, rows = ids.to(device), rows.to(device)  # (B, T + 2), (B,)
        images = train_inputs[picked].to(device)  # (N, 3, S, S) or (N, F) / (N, K, F)
        lr = lr_at(step, config, steps_per_epoch, clock)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = net(images, ids[:, :-1], rows)  # (B, T + 1, V)
        if dp.active:  # this rank's summed loss over the batch's words, times W (DDP averages)
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), ignore_index=PAD,
                                   reduction="sum") * (weight * W / words)  # fmt: skip
        else:
            loss = caption_loss(logits, ids[:, 1:], PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the ranks here
        grad_norm = clip_gradients(model.parameters(), config.grad_clip, config.grad_clip_mode)
        # One collective a step: the batch's loss, any rank's signal, rank 0's clock.
        loss_value, interrupted, clock = dp.agree(loss, stop.signal is not None, speed.elapsed())
        verdict = guard.check(step, loss_value, grad_norm)
        if verdict == "ok":
            optimizer.step()
        else:
            emit({"kind": "nonfinite", "step": step, "loss": loss_value, "reason": verdict})
            if guard.give_up():  # the aborting step is in the log too
                metrics.write({"step": step + 1, "train_loss": loss_value, "lr": lr,
                               "grad_norm": grad_norm, "verdict": verdict})  # fmt: skip
                metrics.close()
                raise TrainingError(f"{guard.in_a_row} bad steps in a row at step {step} "
                                    f"({verdict}); lower --lr or --grad-clip")  # fmt: skip
        step, cursor = step + 1, cursor + 1
        speed.add(captions)  # the whole batch's captions
        record = {"step": step, "train_loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                  "epoch": epoch, "elapsed_s": round(speed.elapsed(), 3)}  # fmt: skip
        if step % config.log_every == 0 or step == config.max_steps:
            emit({"kind": "step", **record, "max_steps": config.max_steps,
                  "captions_per_s": speed.rate})  # fmt: skip
        if config.max_minutes and clock > 60 * config.max_minutes:
            stopped = "max_minutes"
        if dp.stop_now(interrupted, stop.signal is not None):
            stopped = "interrupted"
        is_best = False
        due = step % config.eval_every == 0 or step == config.max_steps or stopped == "max_minutes"
        if due and stopped != "interrupted":  # an interrupted run checkpoints without evaluating
            if dp.is_main:  # rank 0 evaluates (it alone writes the best checkpoint)
                val = _validate(model, vocab, val_images, val_inputs, val_caps, config, device)
                record.update(val)
                is_best = val["val_cider"] > best
                best = max(best, val["val_cider"])
                emit({"kind": "eval", "step": step, **val, "best": is_best})
                model.train()
            metrics.write(record)
            checkpoint(is_best)
        else:
            metrics.write(record)
        if stopped != "max_steps":
            break
    if not saved or saved[-1] != step:
        checkpoint(False)
    metrics.close()
    dp.wait_for_all()  # no rank exits (torchrun would stop the rest) before rank 0 is done
    emit({"kind": "end", "step": step, "stopped": stopped, "best_cider": best,
          "elapsed_s": speed.elapsed()})  # fmt: skip
    return CaptionTrainResult(run_dir, step, best, loss_value, stopped, dp.rank, W)


def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order of the training images in an epoch: a function of (seed, epoch) only, so a
    resumed run walks the same batches."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)  # torch's seed range
    return torch.randperm(n, generator=g)


def _caption_batch(
    caps: EncodedCaptions, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every caption of the images at positions ``images`` (N,): ids (B, T + 2) and, per
    caption, the position of its image in ``images`` (B,)."""
    wanted = images.numpy()
    mask = np.isin(caps.image_rows, wanted)
    position = {int(r): i for i, r in enumerate(wanted)}
    rows = [position[int(r)] for r in caps.image_rows[mask]]
    return torch.from_numpy(caps.ids[mask]), torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def _validate(
    model: Captioner,
    vocab: CaptionVocab,
    images: list[CaptionImage],
    inputs: torch.Tensor,
    caps: EncodedCaptions,
    config: CaptionTrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Teacher-forced loss on every val caption; greedy BLEU-4/CIDEr-D on val images."""
    model.eval()
    total, words = 0.0, 0
    for i in range(0, len(images), 64):
        ids, rows = _caption_batch(caps, torch.arange(i, min(len(images), i + 64)))
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _load_model(model: Captioner, tensors: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{source}: does not fit the model its config describes "
                              f"({first})") from None  # fmt: skip


@dataclass
class LoadedCaptioner:
    path: Path
    model: Captioner
    vocab: CaptionVocab
    train_config: CaptionTrainConfig


def load_captioner(
    path: str | Path, which: Literal["best", "latest"] = "best", device: str = "cpu"
) -> LoadedCaptioner:
    """A trained Captioner from a run or checkpoint directory (verified, never unpickled)."""
    directory = resolve_checkpoint(path, which)
    ckpt = load_checkpoint(directory, map_location=resolve_device(device))
    source = str(directory / "config.json")
    if "model" not in ckpt.config or "train" not in ckpt.config:
        raise CheckpointError(f"{source}: not a captioning run (no model/train config)")
    config = CaptionerConfig.from_dict(ckpt.config["model"], f"{source}: model")
    train_config = from_mapping(CaptionTrainConfig, ckpt.config["train"], f"{source}: train")
    vocab = CaptionVocab.from_json(ckpt.vocab, str(directory / "vocab.json"))
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{source}: vocab_size {config.vocab_size} but vocab.json holds "
                              f"{len(vocab)} words")  # fmt: skip
    model = Captioner(config).to(resolve_device(device))
    _load_model(model, ckpt.model, str(directory / "model.safetensors"))
    model.eval()
    return LoadedCaptioner(directory, model, vocab, train_config)


__all__ = [
    "CaptionData",
    "CaptionTrainConfig",
    "CaptionTrainResult",
    "LoadedCaptioner",
    "load_caption_data",
    "load_captioner",
    "train_captioner",
]
