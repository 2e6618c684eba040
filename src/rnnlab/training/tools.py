"""Training tools every task's loop shares: optimizer and schedule, clipping, the non-finite and
divergence guard, graceful stop on signals, the run-directory lock, the metrics log, and
trainer-state packing. Plain functions and small classes; each loop (char-LM today, seq2seq and
captioning next) stays short and readable top to bottom and calls these.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from rnnlab.checkpoint import CheckpointError, flatten_state, unflatten_state
from rnnlab.io import write_atomic


class TrainingError(RuntimeError):
    """Training cannot go on (too many non-finite or diverged steps, another writer, ...)."""


# -- optimizer and schedule -------------------------------------------------------------------


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], name: str, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``adam | adamw | rmsprop | adagrad | sgd`` over ``parameters``.

    Adam, AdamW, Adagrad and SGD use torch's fused kernels where the parameters allow (CPU or
    CUDA, floating point): one pass over each tensor instead of a dozen, 7-20x faster than the
    per-tensor loop torch picks by default on CPU (bench/trainer.py; the same update up to float
    rounding). RMSprop has no fused kernel and uses the multi-tensor (foreach) one.
    """
    params = list(parameters)
    fused = _fused_ok(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "rmsprop":  # char-rnn's choice, alpha = decay_rate 0.95
        return torch.optim.RMSprop(params, lr=lr, alpha=0.95, weight_decay=weight_decay)
    if name == "adagrad":  # min-char-rnn's choice
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"optimizer: expected adam|adamw|rmsprop|adagrad|sgd, got {name!r}")


def _fused_ok(params: list[torch.nn.Parameter]) -> bool | None:
    """True when torch's fused optimizer kernels take these parameters (None: torch decides)."""
    ok = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() and not p.is_sparse
        for p in params
    )
    return True if ok else None


class ScheduleSettings(Protocol):
    lr: float
    lr_schedule: str
    warmup_steps: int
    min_lr_frac: float
    decay_steps: int
    max_steps: int
    max_minutes: float
    lr_decay: float
    lr_decay_after: int


def lr_at(step: int, config: ScheduleSettings, steps_per_epoch: int, elapsed: float = 0.0) -> float:
    """Learning rate at a step: linear warm-up, then constant / per-epoch decay / cosine.

    The cosine (Loshchilov & Hutter 2017, without restarts) runs from ``lr`` to
    ``lr * min_lr_frac`` over ``decay_steps`` (default: ``max_steps``) after warm-up. With
    ``max_minutes`` and no ``decay_steps``, it ends at whichever limit comes first: its progress
    is the larger of the steps done and the wall time ``elapsed`` (seconds, across resumes) spent
    of the budget, so a time-limited run anneals by its deadline (such a run follows the clock
    and is not bit-reproducible; step-limited runs are).
    """
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "step":  # char-rnn: multiply by lr_decay after each epoch
        epochs = step // steps_per_epoch - config.lr_decay_after + 1
        return config.lr * config.lr_decay ** max(0, epochs)
    if config.lr_schedule == "cosine":
        span = max(1, (config.decay_steps or config.max_steps) - config.warmup_steps)
        progress = (step - config.warmup_steps) / span
        if config.max_minutes and not config.decay_steps:
            progress = max(progress, elapsed / (60.0 * config.max_minutes))
        progress = min(1.0, progress)
        floor = config.lr * config.min_lr_frac
        return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))
    return config.lr


def clip_gradients(parameters: Iterable[torch.nn.Parameter], clip: float, mode: str) -> float:
    """Clip in place; returns the pre-clip global gradient norm (inf/nan when any gradient is
    non-finite). ``mode`` norm: rescale to global L2 norm ``clip``; value: clamp each element to
    [-clip, clip] (char-rnn). ``clip`` 0 only measures."""
    params = [p for p in parameters if p.grad is not None]
    if clip and mode == "norm":
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if clip:
        torch.nn.utils.clip_grad_value_(params, clip)
    return norm


# -- the non-finite and divergence guard ----------------------------------------------------------


class StepGuard:
    """Decides whether a step's update may be applied, and aborts after too many bad ones.

    A step is bad when its loss or gradient norm is NaN/inf, or when, after warm-up, its loss is
    above ``ln(V) + 1`` nats: worse than guessing uniformly among V tokens by a wide margin, which
    a learning model never is (its loss starts at about ln V and falls). Bad steps are skipped
    (parameters unchanged); ``max_in_a_row`` of them in a row raise TrainingError.
    """

    def __init__(self, vocab_size: int, warmup_steps: int, max_in_a_row: int) -> None:
        self.limit = math.log(vocab_size) + 1.0
        self.warmup_steps = warmup_steps
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0

    def diverged(self, loss: float) -> bool:
        """A finite loss that is worse than uniform guessing (the divergence rule)."""
        return math.isfinite(loss) and loss > self.limit

    def check(self, step: int, loss: float, grad_norm: float) -> str:
        """``ok``, ``nonfinite`` or ``diverged`` for this step (counting the bad ones)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            verdict = "nonfinite"
        elif step >= self.warmup_steps and self.diverged(loss):
            verdict = "diverged"
        else:
            self.in_a_row = 0
            return "ok"
        self.in_a_row += 1
        self.skipped += 1
        return verdict

    def give_up(self) -> bool:
        return self.in_a_row >= self.max_in_a_row


# -- graceful stop --------------------------------------------------------------------------------


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


# -- one writer per run directory -----------------------------------------------------------------


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.lock``, held while a process writes the run.

    The kernel drops it when the process ends however it ends (kill -9 included), so there is
    never a stale lock to clean up; a second writer is refused at once with the holder's pid.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TrainingError(
                f"{self.path.parent}: another rnnlab process (pid {holder}) is writing this run "
                "directory; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


# -- metrics log ----------------------------------------------------------------------------------


class MetricsLog:
    """``metrics.jsonl``: one JSON record per step, appended in order.

    Records are buffered and written at most every ``flush_seconds`` (one write instead of one per
    step: a step of a small model takes milliseconds), and on ``sync()`` and ``close()``. A fresh
    run starts an empty log (leftovers of a run killed before its first checkpoint are dropped); a
    resumed run keeps records up to the checkpoint's step and drops later ones (the killed run's,
    like TensorBoard's purge_step) and a torn last line. ``sync()`` makes the log durable: the
    loop calls it before writing a checkpoint, so a checkpoint never claims a step whose record
    could still be lost (records a kill loses are always after the last checkpoint, and a resume
    drops those anyway). ``path=None`` keeps no log at all (a data-parallel rank other than 0:
    rank 0 writes the run's log).
    """

    def __init__(
        self, path: Path | None, resume_step: int | None = None, flush_seconds: float = 1.0
    ) -> None:
        self.path = None if path is None else Path(path)
        self.history: list[dict[str, Any]] = []
        self._file: Any = None
        if self.path is not None:
            self.history = read_metrics(self.path) if resume_step is not None else []
            self.history = [r for r in self.history if r["step"] <= (resume_step or 0)]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
            # Appended to, never through a symbolic link (a run directory may come from anyone).
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._pending: list[str] = []
        self._flush_seconds = flush_seconds
        self._flushed_at = time.monotonic()

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is None:
            return
        self._pending.append(json.dumps(dict(record)) + "\n")
        self.history.append(dict(record))
        if time.monotonic() - self._flushed_at >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered records to the OS (readers such as ``tail -f`` see them)."""
        if self._file is None:
            return
        if self._pending:
            self._file.write("".join(self._pending))
            self._pending.clear()
        self._file.flush()
        self._flushed_at = time.monotonic()

    def sync(self) -> None:
        if self._file is not None:
            self.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self.flush()
            self._file.close()


def read_metrics(path: Path, *, damaged: str = "drop") -> list[dict[str, Any]]:
    """Records of a metrics log, each line read by the strict JSON reader
    (``rnnlab.checkpoint.store.parse_json``; NaN and Infinity allowed: the log keeps a
    non-finite loss as it was) and required to be an object with an integer ``step``. A torn
    last line (what a kill leaves: no newline, not JSON) is always dropped with a
    warning. Any other bad line is dropped with a warning naming the file and its line numbers
    (``damaged="drop"``: resume, where a damaged log never blocks the run) or raised as a
    CheckpointError "file: line N: expected ..., found ..." (``damaged="error"``: the readers
    that report on the log, such as ``rnnlab gradients``)."""
    from rnnlab.checkpoint.store import parse_json

    if damaged not in ("drop", "error"):
        raise ValueError(f"damaged: expected drop or error, found {damaged!r}")
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    records: list[dict[str, Any]] = []
    dropped: list[int] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line, f"{path}: line {number}", nonfinite=True)
            if not isinstance(record, dict) or type(record.get("step")) is not int:
                found = (
                    "an object without an integer step"
                    if isinstance(record, dict)
                    else (f"a JSON {type(record).__name__}")
                )
                raise CheckpointError(
                    f"{path}: line {number}: expected a JSON object with an integer step, "
                    f"found {found}"
                )
        except CheckpointError:
            if number == len(lines):  # no newline after it: torn by a kill
                warnings.warn(f"{path}: dropped a torn last line ({number})", stacklevel=2)
                continue
            if damaged == "error":
                raise
            dropped.append(number)
            continue
        records.append(record)
    if dropped:
        shown = ", ".join(map(str, dropped[:10])) + (", ..." if len(dropped) > 10 else "")
        warnings.warn(f"{path}: dropped {len(dropped)} damaged line(s): {shown}", stacklevel=2)
    return records


class Throughput:
    """Elapsed training seconds (across resumes) and characters per second in this process."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.session_start = time.perf_counter()
        self.before = elapsed  # seconds spent by earlier processes of the run
        self.tokens = 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.session_start

    @property
    def rate(self) -> float:
        """Characters per second since this process started training."""
        return self.tokens / max(time.perf_counter() - self.session_start, 1e-9)

    def eta(self, tokens_left: int) -> float:
        return tokens_left / max(self.rate, 1e-9)


# -- trainer state --------------------------------------------------------------------------------


def pack_trainer_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, JSON) of a trainer state dict, for ``save_checkpoint``."""
    tensors, tree = flatten_state(dict(state))
    return tensors, {"state": tree}


def unpack_trainer_state(
    tensors: Mapping[str, Tensor],
    trainer: Mapping[str, Any],
    schema: Mapping[str, type],
    source: str,
) -> dict[str, Any]:
    """The trainer state saved by ``pack_trainer_state``, with each field of ``schema`` checked
    for presence and type (ints for counters, floats for losses, dicts for optimizer state)."""
    if "state" not in trainer:
        raise CheckpointError(f"{source}: state: expected the trainer state, found nothing")
    try:
        state = unflatten_state(dict(tensors), trainer["state"])
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: state: expected an object, found {type(state).__name__}")
    for name, kind in schema.items():
        if name not in state:
            raise CheckpointError(f"{source}: {name}: expected {kind.__name__}, found nothing")
        value = state[name]
        if kind is int:  # counters: non-negative ints (bool is not a counter)
            ok = type(value) is int and value >= 0
        elif kind is float:
            ok = type(value) in (int, float)
        else:
            ok = isinstance(value, kind)
        if not ok:
            shown = repr(value) if type(value) in (int, float, str) else type(value).__name__
            raise CheckpointError(f"{source}: {name}: expected {kind.__name__}, found {shown}")
    return state
