"""The one training loop, ``fit``, and the ``Task`` contract each task fills in.

A task (``rnnlab.tasks``: char-LM, seq2seq, classify, caption) supplies only what differs between
tasks: its model, its batches and loss, its evaluation and which metric makes an evaluation the
best, plus any extra trainer state (the char-LM's carried hidden state). ``fit`` owns the rest, the
same for every task, top to bottom:

    for each step:  lr -> loss -> zero_grad/backward -> clip -> agree (DDP) -> guard -> step
                    record -> progress -> stop rules (steps, minutes, signal)
                    evaluate when due -> healthy? best? patience -> metrics.jsonl -> checkpoint
    at the end:     final checkpoint (unless the model diverged) -> loss plot -> end event

Rules every task gets alike: a bad step (loss or gradient norm NaN/inf, or, after warm-up, a loss
above ln(V) + 1 nats) is skipped, ``max_nonfinite`` in a row abort (the aborting step is in the
log); an evaluation is *healthy* when all its numbers are finite and its loss is not above
ln(V) + 1 either: only healthy evaluations checkpoint and only they can be best; a run stopped by
``max_minutes`` evaluates and writes ``best/`` like any other; a signal (SIGTERM, Ctrl-C) finishes
the step and checkpoints without evaluating; a run that never evaluated reports ``best=None``,
never a placeholder score.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnlab.checkpoint import CheckpointError, list_checkpoints, save_checkpoint
from rnnlab.loading import LoadedRun
from rnnlab.runtime import capture_rng, restore_rng, seed_everything
from rnnlab.training.config import RunConfig
from rnnlab.training.distributed import DataParallel, rank_rng_fields, rank_seed, saved_rng
from rnnlab.training.plots import plot_history
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

Event = dict[str, Any]


@dataclass(frozen=True)
class Score:
    """One number that ranks evaluations: the record key (``val_wer``), the trainer-state field
    it is checkpointed as (``best_wer``) and whether higher is better."""

    key: str
    saved_as: str
    higher_is_better: bool = False


@dataclass
class Evaluation:
    """What a task's evaluation found: ``metrics`` go into metrics.jsonl and the eval event
    (``val_loss`` in nats per unit, ``val_wer``...), ``extra`` only into the event (an example)."""

    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    """How a run ended. ``best`` is the best evaluation's metrics (None: no evaluation ran)."""

    run_dir: Path
    step: int
    stopped: str  # max_steps | max_minutes | early_stop | interrupted
    last_train_loss: float
    best: dict[str, float] | None
    rank: int = 0  # under torchrun: this process's rank (rank 0 writes and reports for the run)
    world_size: int = 1  # processes that trained together (data parallel)


class Task(ABC):
    """What one task supplies to ``fit``. Subclasses set the class attributes and implement the
    abstract methods; the others have defaults that fit a task without carried state."""

    name: str  # config.json's "task": which kind of run the loader reads it as
    unit: str = "tokens"  # what throughput counts
    sharded: str = (
        "batches"  # what data parallel splits between the ranks: f"{unit}_per_s" in records
    )
    scores: tuple[Score, ...] = ()  # compared in order; the first decides, the next break ties
    loss_unit: str = "token"  # what a loss in nats is per (nats/char, nats/word...)
    config: RunConfig
    num_classes: int  # V of the guard: a loss above ln(V) + 1 after warm-up is diverged

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (the loop seeds every RNG first, so every rank builds the same one)."""

    batches: Sequence[Any]  # the current epoch's batches, for a task that lists them

    def steps_per_epoch(self) -> int:
        """Batches in the current epoch (default: those ``start_epoch`` put in ``batches``)."""
        return len(self.batches)

    def start_epoch(self, epoch: int, boundary: bool) -> None:  # noqa: B027 (an optional hook)
        """Called for the epoch a run starts or resumes in (``boundary`` False) and whenever the
        previous epoch has just ended (True)."""

    @abstractmethod
    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        """(this rank's loss of batch ``cursor``, weighed so DDP's gradient average is the whole
        batch's; the global batch's size in ``unit``s)."""

    def accept_step(self) -> None:  # noqa: B027 (an optional hook)
        """The step's update was applied (the char-LM carries its state on from here)."""

    @abstractmethod
    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        """Validation metrics on rank 0 (None on other ranks, unless the task shards it)."""

    def healthy_events(self, model: nn.Module, step: int, dp: DataParallel) -> list[Event]:
        """Events after a healthy evaluation (the char-LM's sample)."""
        return []

    def trainer_state(self, dp: DataParallel) -> dict[str, Any]:
        """Extra trainer-state fields (collective: called on every rank)."""
        return {}

    def load_trainer_state(self, state: Mapping[str, Any], dp: DataParallel, source: str) -> None:  # noqa: B027 (an optional hook)
        """Restore the fields ``trainer_state`` saved."""

    @abstractmethod
    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config.json's parts besides its task and model config: the train config and the
        data record; vocab.json) of a checkpoint."""

    def start_fields(self) -> dict[str, Any]:
        """Extra fields of the start event: ``data``, what it trains on, in words."""
        return {}


def fit(
    task: Task,
    run_dir: Path,
    dp: DataParallel,
    stop: GracefulStop,
    emit: Callable[[Event], None],
    resume: LoadedRun | None = None,
) -> FitResult:
    """Train ``task.build_model()`` in ``run_dir`` (created and locked by the caller through
    ``dp.open_run_directory``), from ``resume`` when given. Raises TrainingError when
    ``max_nonfinite`` bad steps come in a row, CheckpointError when ``resume`` does not fit."""
    config, device, W = task.config, dp.device, dp.world_size
    seed_everything(config.seed)  # every rank builds the same model
    model = task.build_model().to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    step, cursor, epoch, elapsed, best, evals_since_best = 0, 0, 0, 0.0, None, 0
    if resume is not None:
        step, cursor, epoch, elapsed, best, evals_since_best = _resumed_state(
            task, model, optimizer, resume, dp, emit
        )
    else:
        task.start_epoch(epoch, boundary=False)
        if dp.rank:
            seed_everything(rank_seed(config.seed, dp.rank))  # each rank its own dropout masks
    net = dp.wrap(model)  # DistributedDataParallel for several processes, the model for one
    metrics = MetricsLog(  # rank 0 writes metrics.jsonl; the other ranks keep no log
        run_dir / "metrics.jsonl" if dp.is_main else None, resume_step=step if resume else None
    )
    guard = StepGuard(max(task.num_classes, 2), config.warmup_steps, config.max_nonfinite)
    speed = Throughput(elapsed)
    steps_at_start = step
    emit({"kind": "start", "run_dir": str(run_dir), "step": step, "max_steps": config.max_steps,
          "device": str(device), "parameters": _parameters(model),
          "steps_per_epoch": task.steps_per_epoch(), "resumed": resume is not None,
          "world_size": W, "unit": task.unit, "loss_unit": task.loss_unit,
          **task.start_fields()})  # fmt: skip

    saved_steps: list[int] = []

    def checkpoint(is_best: bool) -> None:
        # Every rank sends its RNG state (and its task state); rank 0 writes them all.
        extra, rngs = task.trainer_state(dp), dp.gather_objects(capture_rng())
        saved_steps.append(step)
        if not dp.is_main:
            return
        metrics.sync()  # the log holds this step's record before a checkpoint claims the step
        trainer = {"optimizer": optimizer.state_dict(), "step": step, "cursor": cursor,
                   "epoch": epoch, "evals_since_best": evals_since_best,
                   "evaluated": best is not None, **_best_fields(task, best), **extra,
                   **rank_rng_fields(rngs), "elapsed": speed.elapsed()}  # fmt: skip
        tensors, tree = pack_trainer_state(trainer)
        parts, vocab_json = task.checkpoint_files()
        path = save_checkpoint(run_dir, step, model=model.state_dict(),
                               config={"task": task.name, "model": model.config.to_dict(), **parts},
                               vocab=vocab_json, trainer_tensors=tensors, trainer=tree,
                               keep_last=config.keep_last, is_best=is_best)  # fmt: skip
        emit({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})

    stopped, loss_value, verdict = "max_steps", math.nan, "ok"
    clock = elapsed  # the run's wall time, as rank 0 measured it at the last step's agreement
    model.train()
    while step < config.max_steps:
        if cursor >= task.steps_per_epoch():
            epoch, cursor = epoch + 1, 0
            task.start_epoch(epoch, boundary=True)
        lr = lr_at(step, config, task.steps_per_epoch(), clock)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, units = task.train_loss(net, cursor, dp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the ranks here
        grad_norm = clip_gradients(model.parameters(), config.grad_clip, config.grad_clip_mode)
        # One collective a step: the whole batch's loss, whether any rank was signalled, and
        # rank 0's clock (time limit, schedule), so every rank decides alike at the same step.
        loss_value, interrupted, clock = dp.agree(loss, stop.signal is not None, speed.elapsed())
        verdict = guard.check(step, loss_value, grad_norm)
        if verdict == "ok":
            optimizer.step()
            task.accept_step()
        else:  # non-finite or diverged: skip the update, keep the parameters, count it
            emit({"kind": "nonfinite", "step": step + 1, "loss": loss_value, "reason": verdict,
                  "in_a_row": guard.in_a_row})  # fmt: skip
        step, cursor = step + 1, cursor + 1
        speed.add(units)
        record: dict[str, Any] = {
            "step": step, "train_loss": loss_value, "lr": lr, "grad_norm": grad_norm,
            "epoch": epoch, "nonfinite_skips": guard.skipped,
            "elapsed_s": round(speed.elapsed(), 3), f"{task.unit}_per_s": round(speed.rate, 1),
        }  # fmt: skip
        if verdict != "ok" and guard.give_up():  # the aborting step is in the log too
            metrics.write({**record, "verdict": verdict})
            metrics.close()
            if dp.is_main:  # the curve that led there
                plot_history(metrics.history, run_dir / "loss.png", task.loss_unit)
            raise TrainingError(_abort_message(guard, verdict, step, run_dir))
        if step % config.log_every == 0 or step == config.max_steps:
            seconds_per_step = (speed.elapsed() - elapsed) / max(step - steps_at_start, 1)
            emit({"kind": "step", **record, "rate": speed.rate, "max_steps": config.max_steps,
                  "eta_s": _eta(config, step, seconds_per_step, speed.elapsed())})  # fmt: skip
        if config.max_minutes and clock > 60 * config.max_minutes:
            stopped = "max_minutes"
        if dp.stop_now(interrupted, stop.signal is not None):
            stopped = "interrupted"  # checkpoint below, without a (possibly long) evaluation
        due = step % config.eval_every == 0 or step == config.max_steps or stopped == "max_minutes"
        save_now = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
        is_best = False
        if due and stopped != "interrupted":
            found, healthy, is_best, best = _evaluate(task, model, dp, guard, best, step, emit)
            record.update(found)
            evals_since_best = 0 if is_best else evals_since_best + 1
            save_now = save_now or healthy
            if config.patience and evals_since_best >= config.patience:
                stopped = "early_stop"
        metrics.write(record)
        if save_now:
            checkpoint(is_best)
        if stopped != "max_steps":
            break
    if (not saved_steps or saved_steps[-1] != step) and verdict != "diverged":
        checkpoint(False)  # the final state is always saved, unless it diverged
    metrics.close()
    if dp.is_main:
        plot_history(metrics.history, run_dir / "loss.png", task.loss_unit,
                     [s.key for s in task.scores if s.key != "val_loss"])  # fmt: skip
    dp.wait_for_all()  # no rank exits (torchrun would stop the rest) before rank 0 is done
    emit({"kind": "end", "step": step, "stopped": stopped, "best": best,
          "nonfinite_skips": guard.skipped, "elapsed_s": speed.elapsed()})  # fmt: skip
    return FitResult(run_dir, step, stopped, loss_value, best, dp.rank, W)


# -- pieces of the loop ---------------------------------------------------------------------


def _evaluate(
    task: Task,
    model: nn.Module,
    dp: DataParallel,
    guard: StepGuard,
    best: dict[str, float] | None,
    step: int,
    emit: Callable[[Event], None],
) -> tuple[dict[str, float], bool, bool, dict[str, float] | None]:
    """Evaluate and judge: (the metrics for the record, healthy, a new best, the best metrics).
    Rank 0 decides; every rank gets its verdict and acts on it."""
    found, metrics = task.evaluate(model, dp), {}
    healthy, is_best = False, False
    if dp.is_main and found is not None:
        problem = _unhealthy(task, found, guard)
        healthy = not problem
        is_best = healthy and (best is None or _better(task, found.metrics, best))
        if is_best:
            best = {s.key: found.metrics[s.key] for s in task.scores}
        metrics = found.metrics
        emit({"kind": "eval", "step": step, **found.metrics, **found.extra, "best": is_best})
        if problem:
            emit({"kind": "note", "text": f"step {step}: {problem}; no checkpoint of a diverged "
                  "model"})  # fmt: skip
    healthy, is_best, best = dp.from_main((healthy, is_best, best))
    if healthy:
        for event in task.healthy_events(model, step, dp):
            emit(event)
    model.train()
    return metrics, healthy, is_best, best


def _eta(config: RunConfig, step: int, seconds_per_step: float, elapsed: float) -> float:
    """Seconds left: to max_steps at this session's pace, or to max_minutes if that comes first."""
    eta = (config.max_steps - step) * seconds_per_step
    if config.max_minutes:
        eta = min(eta, max(0.0, 60 * config.max_minutes - elapsed))
    return eta


def _abort_message(guard: StepGuard, verdict: str, step: int, run_dir: Path) -> str:
    return (f"{guard.in_a_row} {verdict.replace('nonfinite', 'non-finite')} steps in a row at "
            f"step {step} (rule: loss NaN/inf, or above ln(V)+1 = {guard.limit:.2f} nats "
            f"after warm-up); the last good checkpoint is {_last_good(run_dir)}; lower --lr or "
            "--grad-clip")  # fmt: skip


def _resumed_state(
    task: Task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    resume: LoadedRun,
    dp: DataParallel,
    emit: Callable[[Event], None],
) -> tuple[int, int, int, float, dict[str, float] | None, int]:
    """Load ``resume`` into the model, optimizer, RNGs and task; returns the loop's counters
    (step, cursor, epoch, elapsed seconds, best metrics or None, evaluations since the best)."""
    source = str(resume.path / "trainer.json")
    try:
        model.load_state_dict(resume.model.state_dict())
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{resume.path}/model.safetensors: does not fit the model its "
                              f"config describes ({msg})") from None  # fmt: skip
    schema = {"optimizer": dict, "step": int, "cursor": int, "epoch": int, "rng": dict,
              **{s.saved_as: float for s in task.scores}}  # fmt: skip
    t = unpack_trainer_state(resume.trainer_tensors, resume.trainer, schema, source)
    rng, saved_world = saved_rng(t, dp.rank, source)
    try:
        optimizer.load_state_dict(t["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{source}: optimizer: does not fit this model ({e})") from None
    task.start_epoch(t["epoch"], boundary=False)  # the epoch it resumes in: is the cursor in it?
    if t["cursor"] > task.steps_per_epoch():
        raise CheckpointError(f"{source}: cursor: expected <= {task.steps_per_epoch()}, found "
                              f"{t['cursor']}")  # fmt: skip
    task.load_trainer_state(t, dp, source)
    dp.check_same("the checkpoint step", t["step"], "every node must read the same run directory")
    if saved_world != dp.world_size:
        text = (f"resuming a {saved_world}-process run on {dp.world_size}: the {task.sharded} "
                "are re-sharded; it continues, but not bit-identically")  # fmt: skip
        emit({"kind": "note", "text": text})
    try:
        if rng is not None:
            restore_rng(rng)
        else:  # a rank the checkpoint did not have
            seed_everything(rank_seed(task.config.seed, dp.rank))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: rng: not a saved RNG state ({e})") from None
    best = {s.key: float(t[s.saved_as]) for s in task.scores}
    # Checkpoints written before "evaluated" was stored held a placeholder (inf, -1) instead.
    evaluated = t.get("evaluated", all(math.isfinite(v) and v >= 0 for v in best.values()))
    evals = t.get("evals_since_best", 0)  # absent from older classify and caption checkpoints
    evals = evals if type(evals) is int and evals >= 0 else 0
    elapsed = float(t.get("elapsed", 0.0))
    return t["step"], t["cursor"], t["epoch"], elapsed, best if evaluated else None, evals


def _better(task: Task, metrics: Mapping[str, float], best: Mapping[str, float]) -> bool:
    """Whether ``metrics`` beat ``best``: the first score decides, the next ones break ties."""

    def rank(m: Mapping[str, float]) -> tuple[float, ...]:  # smaller is better
        return tuple(-m[s.key] if s.higher_is_better else m[s.key] for s in task.scores)

    return rank(metrics) < rank(best)


def _unhealthy(task: Task, found: Evaluation, guard: StepGuard) -> str:
    """Why an evaluation is not healthy ("" when it is)."""
    bad = {k: v for k, v in found.metrics.items() if not math.isfinite(v)}
    if bad:
        return f"the evaluation is not finite ({_shown(bad)})"
    loss = found.metrics.get("val_loss", 0.0)
    if guard.diverged(loss):
        return f"validation loss {loss:.4g} is worse than guessing (> {guard.limit:.2f})"
    return ""


def _best_fields(task: Task, best: dict[str, float] | None) -> dict[str, float]:
    """The trainer-state fields of the best scores; before any evaluation the worst values."""
    if best is None:
        return {s.saved_as: (-1.0 if s.higher_is_better else math.inf) for s in task.scores}
    return {s.saved_as: best[s.key] for s in task.scores}


def _shown(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _last_good(run_dir: Path) -> str:
    if (run_dir / "best").is_dir():
        return str(run_dir / "best")
    found = list_checkpoints(run_dir) if run_dir.is_dir() else []  # (another node's rank)
    return str(found[-1]) if found else "none (no checkpoint was written yet)"
