"""The training loop: truncated BPTT over B streams, clipping, eval, NaN guard, checkpoints, resume.

One readable loop, top to bottom. Truncated BPTT (Williams & Peng 1990; the lecture's "carry the
hidden state forever, backprop only k steps"): the corpus is cut into B streams (see
``rnnlab.data.tbptt``); each step trains on the next ``seq_len`` characters of every stream,
starting from the state the previous chunk ended in, detached so gradients stop at the chunk
boundary.

Everything a resumed run needs to continue *exactly* is checkpointed: model, optimizer moments and
counters, all RNG states, the data cursor, the carried hidden state, best loss and patience. On
CPU a run resumed at step N produces bit-identical losses to the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.checkpoint import (
    CheckpointError,
    flatten_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from rnnlab.data import Corpus, DataError, StreamBatcher, Vocab, prepare_corpus
from rnnlab.evaluate import evaluate_tokens
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.runtime import capture_rng, resolve_device, restore_rng, seed_everything, set_threads
from rnnlab.sample import SampleConfig, generate

OPTIMIZERS = ("adam", "adamw", "rmsprop", "adagrad", "sgd")
SCHEDULES = ("constant", "step", "cosine")
Event = dict[str, Any]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


@dataclass
class TrainConfig:
    """Everything that defines a run. CLI flags are these names in kebab-case."""

    input: str = field(default="", metadata={"help": "training text file"})
    out_dir: str = field(
        default="", metadata={"help": "run directory (default runs/<file>-<cell>)"}
    )
    # data
    byte_level: bool = field(default=False, metadata={"help": "model bytes, not code points"})
    errors: str = field(default="strict", metadata={"help": "invalid UTF-8: strict|replace"})
    val_frac: float = field(default=0.05, metadata={"help": "fraction held out for validation"})
    test_frac: float = field(default=0.05, metadata={"help": "fraction held out for testing"})
    # model
    cell: str = field(default="lstm", metadata={"help": "rnn|lstm|gru|mut1|mut2|mut3"})
    hidden_size: int = 256
    num_layers: int = 1
    embedding_size: int = field(default=0, metadata={"help": "0 means hidden_size"})
    dropout: float = 0.0
    tie_weights: bool = False
    backend: str = field(default="auto", metadata={"help": "auto|reference|native|fused"})
    # optimisation
    batch_size: int = 32
    seq_len: int = 64
    max_steps: int = 2000
    max_minutes: float = field(default=0.0, metadata={"help": "stop after this wall time (0: off)"})
    optimizer: str = field(default="adam", metadata={"help": "|".join(OPTIMIZERS)})
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_schedule: str = field(default="cosine", metadata={"help": "|".join(SCHEDULES)})
    warmup_steps: int = 50
    min_lr_frac: float = field(default=0.1, metadata={"help": "cosine floor, fraction of lr"})
    decay_steps: int = field(default=0, metadata={"help": "cosine horizon (0: max_steps)"})
    lr_decay: float = field(default=0.97, metadata={"help": "step schedule: factor per epoch"})
    lr_decay_after: int = field(default=1, metadata={"help": "step schedule: first decay epoch"})
    grad_clip: float = field(default=5.0, metadata={"help": "0 disables clipping"})
    grad_clip_mode: str = field(default="norm", metadata={"help": "norm (global) | value"})
    # monitoring
    eval_every: int = 200
    eval_batches: int = field(default=0, metadata={"help": "validation batches (0: all)"})
    patience: int = field(default=0, metadata={"help": "early stop after N evals w/o gain"})
    max_nonfinite: int = field(default=5, metadata={"help": "abort after N bad steps in a row"})
    sample_length: int = field(
        default=200, metadata={"help": "chars sampled at each eval (0: off)"}
    )
    checkpoint_every: int = field(default=0, metadata={"help": "0 means at every eval"})
    keep_last: int = 3
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"
    threads: int = field(default=0, metadata={"help": "torch threads (0: default)"})

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _check_choice("grad_clip_mode", self.grad_clip_mode, ("norm", "value"))
        _check_choice("errors", self.errors, ("strict", "replace"))
        for name in ("batch_size", "seq_len", "max_steps", "eval_every", "keep_last", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        if not 0 <= self.val_frac < 1 or not 0 <= self.test_frac < 1:
            raise ValueError("val_frac/test_frac: expected fractions in [0, 1)")
        if self.val_frac + self.test_frac >= 1:
            raise ValueError(
                f"val_frac + test_frac: must leave training data, got "
                f"{self.val_frac + self.test_frac}"
            )

    def model_config(self, vocab_size: int) -> CharLMConfig:
        return CharLMConfig(
            vocab_size,
            self.cell,
            self.hidden_size,
            self.num_layers,
            self.embedding_size,
            self.dropout,
            self.tie_weights,
            self.backend,
        )


# Fields a resumed run may change: how long and how it is watched, never what is computed.
RESUME_OVERRIDABLE = (
    "max_steps",
    "max_minutes",
    "eval_every",
    "eval_batches",
    "patience",
    "sample_length",
    "checkpoint_every",
    "keep_last",
    "log_every",
    "max_nonfinite",
)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    last_train_loss: float
    stopped: str  # max_steps | max_minutes | early_stop | interrupted


def lr_at(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate at a step: linear warm-up, then constant / per-epoch decay / cosine."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "step":  # char-rnn: multiply by lr_decay after each epoch
        epochs = step // steps_per_epoch - config.lr_decay_after + 1
        return config.lr * config.lr_decay ** max(0, epochs)
    if config.lr_schedule == "cosine":
        span = max(1, (config.decay_steps or config.max_steps) - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        floor = config.lr * config.min_lr_frac
        return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))
    return config.lr


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params, lr, wd = model.parameters(), config.lr, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if config.optimizer == "rmsprop":  # char-rnn's choice, alpha = decay_rate 0.95
        return torch.optim.RMSprop(params, lr=lr, alpha=0.95, weight_decay=wd)
    if config.optimizer == "adagrad":  # min-char-rnn's choice
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd)


def train(
    config: TrainConfig,
    *,
    resume: str | Path | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> TrainResult:
    """Train (or resume) a CharLM on ``config.input``; returns where the run ended.

    ``on_event`` receives progress dicts (``kind``: start, step, eval, sample, checkpoint,
    nonfinite, end); the library never prints. SIGTERM or Ctrl-C finishes the current step,
    writes a checkpoint and returns with ``stopped="interrupted"``; a second Ctrl-C stops at once
    (checkpoints are atomic, so the last complete one is intact either way).
    """
    with GracefulStop() as stop:
        return _train(config, resume, on_event or (lambda event: None), stop)


class GracefulStop:
    """Turns SIGTERM and a first SIGINT into a flag the loop checks between steps (main thread
    only; elsewhere signals keep their handlers). Restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _train(
    config: TrainConfig,
    resume: str | Path | None,
    emit: Callable[[Event], None],
    stop: GracefulStop,
) -> TrainResult:
    ckpt = None
    if resume is not None:
        ckpt = _resume_checkpoint(Path(resume))
        config = _resumed_config(ckpt.config["train"], config)
    set_threads(config.threads)
    device = resolve_device(config.device)
    run_dir = Path(config.out_dir or _default_run_dir(config))
    if ckpt is None and list_checkpoints(run_dir):
        raise ValueError(
            f"out_dir: {run_dir} already holds a run; resume it with --resume "
            f"{run_dir} or choose another --out-dir"
        )

    corpus = prepare_corpus(
        config.input, byte_level=config.byte_level, errors=config.errors, split=_split(config)
    )
    if ckpt is not None:
        saved = Vocab.from_json(ckpt.vocab)
        if saved.tokens != corpus.vocab.tokens:
            raise DataError(
                f"vocabulary mismatch on resume: {saved.diff(corpus.vocab)}; resume "
                f"with the file the run was trained on"
            )
    train_data = StreamBatcher(corpus.split("train"), config.batch_size, config.seq_len)
    val_data = _val_batcher(corpus, config)

    seed_everything(config.seed)
    model = CharLM(config.model_config(len(corpus.vocab))).to(device)
    optimizer = make_optimizer(model, config)
    step, cursor, epoch, carried = 0, 0, 0, None
    best, evals_since_best = math.inf, 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        t = unflatten_state(ckpt.trainer_tensors, ckpt.trainer["state"])
        optimizer.load_state_dict(t["optimizer"])
        step, cursor, epoch = t["step"], t["cursor"], t["epoch"]
        best, evals_since_best = t["best_val_loss"], t["evals_since_best"]
        carried = _to_device(t["carried"], device)
        restore_rng(t["rng"])
        _truncate_metrics(run_dir / "metrics.jsonl", step)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
    history = _read_metrics(run_dir / "metrics.jsonl")

    emit(
        {
            "kind": "start",
            "run_dir": str(run_dir),
            "step": step,
            "device": str(device),
            "parameters": model.num_parameters(),
            "vocab_size": len(corpus.vocab),
            "train_tokens": len(corpus.split("train")),
            "steps_per_epoch": train_data.num_batches,
            "backend": model.resolved_backend(device),
            "resumed": ckpt is not None,
        }
    )

    def checkpoint(is_best: bool) -> None:
        trainer = {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "cursor": cursor,
            "epoch": epoch,
            "best_val_loss": best,
            "evals_since_best": evals_since_best,
            "carried": _to_device(carried, torch.device("cpu")),
            "rng": capture_rng(),
        }
        tensors, tree = flatten_state(trainer)
        path = save_checkpoint(
            run_dir,
            step,
            model=model.state_dict(),
            config={"model": model.config.to_dict(), "train": asdict(config)},
            vocab=corpus.vocab.to_json(),
            trainer_tensors=tensors,
            trainer={"state": tree},
            keep_last=config.keep_last,
            is_best=is_best,
        )
        saved_steps.append(step)
        emit({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})

    saved_steps: list[int] = []

    start_time, bad_in_a_row, skipped = time.perf_counter(), 0, 0
    window_tokens, window_start = 0, time.perf_counter()
    stopped, loss_value = "max_steps", math.nan
    model.train()
    while step < config.max_steps:
        if cursor >= train_data.num_batches:  # epoch boundary: streams restart, state resets
            cursor, epoch, carried = 0, epoch + 1, None
        x, y = (t.to(device) for t in train_data.get(cursor))  # (B, T) each
        lr = lr_at(step, config, train_data.num_batches)
        for group in optimizer.param_groups:
            group["lr"] = lr

        logits, new_state = model(x, carried)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _clip(model, config)
        loss_value = loss.item()
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        if finite:
            optimizer.step()
            bad_in_a_row = 0
        else:  # NaN/inf guard: skip the update, keep the parameters, count it
            skipped += 1
            bad_in_a_row += 1
            emit({"kind": "nonfinite", "step": step, "loss": loss_value, "in_a_row": bad_in_a_row})
            if bad_in_a_row >= config.max_nonfinite:
                raise TrainingError(
                    f"{bad_in_a_row} non-finite steps in a row at step {step}; "
                    f"the last good checkpoint in {run_dir} is intact — lower "
                    f"--lr or --grad-clip"
                )
        carried = _detach(new_state) if finite else carried  # truncated BPTT: stop gradients
        step, cursor = step + 1, cursor + 1
        window_tokens += x.numel()

        record = {
            "step": step,
            "train_loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "epoch": epoch,
            "nonfinite_skips": skipped,
        }
        if step % config.log_every == 0 or step == config.max_steps:
            now = time.perf_counter()
            record["tokens_per_s"] = window_tokens / max(now - window_start, 1e-9)
            window_tokens, window_start = 0, now
            emit({"kind": "step", **record})
        out_of_time = bool(config.max_minutes) and (
            time.perf_counter() - start_time > 60 * config.max_minutes
        )
        if out_of_time:
            stopped = "max_minutes"
        if stop.signal is not None:  # checkpoint below, without a (possibly long) evaluation
            stopped = "interrupted"
        evaluate_now = step % config.eval_every == 0 or step == config.max_steps or out_of_time
        if evaluate_now and stopped != "interrupted":
            val = _evaluate(model, val_data, config)
            record.update(val_loss=val, val_bpc=val / math.log(2))
            is_best = val < best
            best, evals_since_best = (val, 0) if is_best else (best, evals_since_best + 1)
            emit(
                {
                    "kind": "eval",
                    "step": step,
                    "val_loss": val,
                    "val_bpc": val / math.log(2),
                    "best": is_best,
                }
            )
            if config.sample_length:
                emit(
                    {
                        "kind": "sample",
                        "step": step,
                        "text": _sample_text(model, corpus.vocab, config),
                    }
                )
            model.train()
            if not config.checkpoint_every:
                checkpoint(is_best)
            if config.patience and evals_since_best >= config.patience:
                stopped = "early_stop"
        elif config.checkpoint_every and step % config.checkpoint_every == 0:
            checkpoint(False)
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        history.append(record)
        if stopped != "max_steps":
            break
    if not saved_steps or saved_steps[-1] != step:  # the final state is always saved
        checkpoint(False)
    metrics.close()
    plot_losses(history, run_dir / "loss.png")
    emit(
        {
            "kind": "end",
            "step": step,
            "stopped": stopped,
            "best_val_loss": best,
            "nonfinite_skips": skipped,
        }
    )
    return TrainResult(run_dir, step, best, loss_value, stopped)


# -- pieces of the loop ---------------------------------------------------------------------


def _clip(model: torch.nn.Module, config: TrainConfig) -> float:
    """Returns the pre-clip global gradient norm (inf/nan when any gradient is non-finite)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if config.grad_clip and config.grad_clip_mode == "norm":
        return float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if config.grad_clip:  # char-rnn's element-wise clamp
        torch.nn.utils.clip_grad_value_(params, config.grad_clip)
    return norm


def _evaluate(model: CharLM, data: StreamBatcher, config: TrainConfig) -> float:
    limit = config.eval_batches or None
    return evaluate_tokens(model, data, max_batches=limit).loss


def _sample_text(model: CharLM, vocab: Vocab, config: TrainConfig) -> str:
    prime = vocab.encode(vocab.default_prime()).tolist()
    cfg = SampleConfig(length=config.sample_length, temperature=0.8, seed=config.seed)
    return vocab.decode(generate(model, prime, cfg)[0])


def _val_batcher(corpus: Corpus, config: TrainConfig) -> StreamBatcher:
    """Validation streams: as many of the training batch size as the split allows."""
    tokens = corpus.split("val")
    if len(tokens) == 0:
        raise DataError("validation split is empty; raise --val-frac or use a longer file")
    batch = max(1, min(config.batch_size, (len(tokens) - 1) // (config.seq_len + 1)))
    return StreamBatcher(tokens, batch, min(config.seq_len, len(tokens) - 1))


def _split(config: TrainConfig) -> tuple[float, float, float]:
    return (1 - config.val_frac - config.test_frac, config.val_frac, config.test_frac)


def _default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{Path(config.input).stem}-{config.cell}"


def _resume_checkpoint(path: Path):  # noqa: ANN202
    from rnnlab.checkpoint import resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(path))
    if "train" not in ckpt.config or "state" not in (ckpt.trainer or {}):
        raise CheckpointError(f"checkpoint {ckpt.path}: no trainer state; it cannot be resumed")
    return ckpt


def _resumed_config(saved: dict, given: TrainConfig) -> TrainConfig:
    """The saved config, with only the fields a resume may change taken from ``given``."""
    known = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in known}
    defaults = TrainConfig()
    for name in RESUME_OVERRIDABLE:
        if getattr(given, name) != getattr(defaults, name):
            merged[name] = getattr(given, name)
    if given.input:
        merged["input"] = given.input
    return TrainConfig(**merged)


def _detach(state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _to_device(state: Any, device: torch.device) -> Any:
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.to(device) for s in state)
    return state.to(device)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records a killed run wrote after the checkpoint we resume from (like purge_step)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    tmp.replace(path)


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_losses(history: list[dict], path: Path) -> None:
    """Training and validation loss curves (nats/char) as a PNG; Agg, so no display is needed."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["train_loss"] for r in history], lw=0.8, label="train")
    val = [r for r in history if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {'|'.join(choices)}, got {value!r}")
