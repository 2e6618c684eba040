"""The char-LM training loop: truncated BPTT over B streams, evaluation, checkpoints, resume.

One readable loop, top to bottom; the shared pieces (optimizer, schedule, clipping, the guard,
signals, the lock, the metrics log) are in ``rnnlab.training.tools``. Truncated BPTT (Williams &
Peng 1990; the lecture's "carry the hidden state forever, backprop only k steps"): the corpus is
cut into B streams (see ``rnnlab.data.tbptt``); each step trains on the next ``seq_len``
characters of every stream, starting from the state the previous chunk ended in, detached so
gradients stop at the chunk boundary.

Everything a resumed run needs to continue *exactly* is checkpointed: model, optimizer moments and
counters, all RNG states, the data cursor, the carried hidden state, best loss and patience. On
CPU a run resumed at step N produces bit-identical losses to the uninterrupted run. A resume
writes only into the run directory it was given (never where a stored path points), under an OS
lock that refuses a second writer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.checkpoint import CheckpointError, list_checkpoints, save_checkpoint
from rnnlab.data import Corpus, DataError, StreamBatcher, Vocab, prepare_corpus
from rnnlab.evaluate import evaluate_tokens
from rnnlab.kernels import extension_status
from rnnlab.loading import RunCheckpoint, load_run_checkpoint, run_directory, training_corpus
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.runtime import capture_rng, restore_rng, seed_everything, set_threads
from rnnlab.sample import DecodingError, SampleConfig, generate
from rnnlab.training.config import TrainConfig, resumed_config
from rnnlab.training.distributed import (
    DataParallel,
    check_divisible,
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

Event = dict[str, Any]
TRAINER_SCHEMA = {"optimizer": dict, "step": int, "cursor": int, "epoch": int,
                  "best_val_loss": float, "evals_since_best": int, "rng": dict}  # fmt: skip


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_loss: float
    last_train_loss: float
    stopped: str  # max_steps | max_minutes | early_stop | interrupted
    rank: int = 0  # under torchrun: this process's rank (rank 0 writes and reports for the run)
    world_size: int = 1  # processes that trained together (data parallel)


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    changes: Mapping[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> TrainResult:
    """Train a CharLM on ``config.input``, or resume the run directory ``resume``.

    On resume the saved config is the run's; ``changes`` (field -> value) are applied following
    the resume table (``rnnlab.training.config``: run length, cadence, device, learning rate...
    may change; model, data, batch, optimizer, seed may not, a ConfigError says which). A
    ``config`` given with ``resume`` counts as the changes: its fields that differ from the
    saved ones. Checkpoints go to the run directory of ``resume`` and nowhere else.

    ``on_event`` receives progress dicts (``kind``: start, note, step, eval, sample,
    checkpoint, nonfinite, end); the library never prints. SIGTERM or Ctrl-C finishes the current
    step, writes a checkpoint and returns with ``stopped="interrupted"``; a second Ctrl-C stops at
    once (checkpoints are atomic, so the last complete one is intact either way).
    """
    # Under torchrun rank 0 reports for the run (resume notes included); errors come from all.
    emit = main_reports(on_event or (lambda event: None), launch_from_env())
    if resume is None:
        if config is None:
            raise TypeError("train() needs a TrainConfig, or resume=RUN_DIR")
        if changes:
            raise TypeError("changes= only applies with resume=RUN_DIR")
        run_dir = Path(config.out_dir or Path("runs") / f"{Path(config.input).stem}-{config.cell}")
        return _train(config, run_dir, None, emit)
    ckpt = load_run_checkpoint(resume, "latest", need_trainer=True)
    assert ckpt.train_config is not None
    wanted = dict(changes or {})
    if config is not None:
        saved = ckpt.train_config.to_dict()
        for name, value in config.to_dict().items():
            if value != saved[name] and not (name == "input" and not value):
                wanted.setdefault(name, value)
    run_dir = ckpt.run_dir
    out_dir = wanted.pop("out_dir", "")
    if out_dir and Path(out_dir).resolve() != run_dir.resolve():
        raise TrainingError(
            f"out_dir: a resume writes into its own run directory {run_dir}, not {out_dir}; "
            f"copy the run first (cp -a {run_dir} {out_dir}) and resume the copy"
        )
    resumed, notes = resumed_config(ckpt.train_config, wanted)
    for note in notes:
        emit({"kind": "note", "text": f"resume changes {note}"})
    return _train(resumed, run_dir, ckpt, emit)


def _train(
    config: TrainConfig, run_dir: Path, ckpt: RunCheckpoint | None, emit: Callable[[Event], None]
) -> TrainResult:
    set_threads(config.threads)
    launch = launch_from_env()  # torchrun's WORLD_SIZE/RANK/LOCAL_RANK, or one process
    check_divisible(config.batch_size, launch.world_size)
    device = rank_device(config.device, launch)
    if ckpt is None:
        corpus = prepare_corpus(
            config.input, byte_level=config.byte_level, errors=config.errors, split=_split(config)
        )
    else:
        saved_input = ckpt.train_config.input if ckpt.train_config else ""
        given = config.input if config.input != saved_input else None  # --input on resume
        corpus = training_corpus(config, ckpt.corpus, given, ckpt.vocab)
        if ckpt.vocab.tokens != corpus.vocab.tokens:
            raise DataError(
                f"vocabulary mismatch on resume: {ckpt.vocab.diff(corpus.vocab)}; resume "
                f"with the file the run was trained on"
            )
        if config.max_steps <= ckpt.step:
            text = (f"the checkpoint is at step {ckpt.step} and max_steps is {config.max_steps}: "
                    "nothing to train; give a larger --max-steps")  # fmt: skip
            emit({"kind": "note", "text": text})
    train_data = StreamBatcher(corpus.split("train"), config.batch_size, config.seq_len)
    val_data = _val_batcher(corpus, config)

    if config.backend in ("auto", "fused"):
        # Build (or wait for another process's build of) the C++ engine before SIGTERM/Ctrl-C
        # are deferred to step boundaries, so a signal during a first-use build acts at once.
        extension_status()
    # Signals stay deferred until the process group is closed: when one rank exits, torchrun
    # stops the others, and rank 0 must not die between its last checkpoint and the end.
    with GracefulStop() as stop, DataParallel(launch, device) as dp, contextlib.ExitStack() as own:
        dp.open_run_directory(run_dir, ckpt is None, own)  # rank 0 creates and locks it
        return _loop(config, run_dir.resolve(), ckpt, corpus, train_data, val_data, dp, emit,
                     stop)  # fmt: skip


def _loop(
    config: TrainConfig,
    run_dir: Path,
    ckpt: RunCheckpoint | None,
    corpus: Corpus,
    train_data: StreamBatcher,
    val_data: StreamBatcher,
    dp: DataParallel,
    emit: Callable[[Event], None],
    stop: GracefulStop,
) -> TrainResult:
    V, device, W = len(corpus.vocab), dp.device, dp.world_size
    seed_everything(config.seed)  # every rank builds the same model
    model = CharLM(CharLMConfig(**config.model_kwargs(V))).to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    step, cursor, epoch, carried, elapsed = 0, 0, 0, None, 0.0
    best, evals_since_best = math.inf, 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model.state_dict())
        source = str(ckpt.path / "trainer.json")
        t = unpack_trainer_state(ckpt.trainer_tensors, ckpt.trainer, TRAINER_SCHEMA, source)
        try:
            optimizer.load_state_dict(t["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{source}: optimizer: does not fit this model ({e})") from None
        step, cursor, epoch = t["step"], t["cursor"], t["epoch"]
        best, evals_since_best = float(t["best_val_loss"]), t["evals_since_best"]
        carried = _checked_state(t.get("carried"), model, config.batch_size, source)
        carried = _to_device(dp.shard_state(carried), device)  # (L, B/W, H): this rank's streams
        elapsed = float(t.get("elapsed", 0.0))
        if cursor > train_data.num_batches:
            raise CheckpointError(
                f"{source}: cursor: expected <= {train_data.num_batches}, found {cursor}"
            )
        rng, saved_world = saved_rng(t, dp.rank, source)
        dp.check_same("the checkpoint step", step, "every node must read the same run directory")
        if saved_world != W:
            emit({"kind": "note", "text": f"resuming a {saved_world}-process run on {W}: "
                  "the streams are re-sharded; it continues, but not bit-identically"})  # fmt: skip
        try:
            if rng is not None:
                restore_rng(rng)
            else:  # a rank the checkpoint did not have
                seed_everything(rank_seed(config.seed, dp.rank))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source}: rng: not a saved RNG state ({e})") from None
    elif dp.rank:
        seed_everything(rank_seed(config.seed, dp.rank))  # each rank draws its own dropout masks
    net = dp.wrap(model)  # DistributedDataParallel for several processes, the model for one
    metrics = MetricsLog(  # rank 0 writes metrics.jsonl; the other ranks keep no log
        run_dir / "metrics.jsonl" if dp.is_main else None, resume_step=step if ckpt else None
    )
    guard = StepGuard(V, config.warmup_steps, config.max_nonfinite)
    speed = Throughput(elapsed)
    stored = {**config.to_dict(), "out_dir": str(run_dir), "input": corpus.meta["source"]}
    corpus_record = {"source": corpus.meta["source"], "sha256": corpus.meta["source_sha256"]}

    emit(
        {
            "kind": "start",
            "run_dir": str(run_dir),
            "step": step,
            "max_steps": config.max_steps,
            "device": str(device),
            "parameters": model.num_parameters(),
            "vocab_size": V,
            "train_tokens": len(corpus.split("train")),
            "steps_per_epoch": train_data.num_batches,
            "backend": model.resolved_backend(device),
            "resumed": ckpt is not None,
            "world_size": W,
        }
    )

    def checkpoint(is_best: bool) -> None:
        # Every rank sends its streams' state and its RNG state; rank 0 writes them all.
        whole, rngs = dp.gather_state(carried), dp.gather_objects(capture_rng())
        saved_steps.append(step)
        if not dp.is_main:
            return
        metrics.sync()  # the log holds this step's record before a checkpoint claims the step
        trainer = {
            "optimizer": optimizer.state_dict(),
            "step": step,
            "cursor": cursor,
            "epoch": epoch,
            "best_val_loss": best,
            "evals_since_best": evals_since_best,
            "carried": _to_device(whole, torch.device("cpu")),  # (L, B, H): every stream
            **rank_rng_fields(rngs),  # every rank's RNG state
            "elapsed": speed.elapsed(),
        }
        tensors, tree = pack_trainer_state(trainer)
        path = save_checkpoint(
            run_dir,
            step,
            model=model.state_dict(),
            config={"model": model.config.to_dict(), "train": stored, "corpus": corpus_record},
            vocab=corpus.vocab.to_json(),
            trainer_tensors=tensors,
            trainer=tree,
            keep_last=config.keep_last,
            is_best=is_best,
        )
        emit({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})

    saved_steps: list[int] = []
    stopped, loss_value, verdict = "max_steps", math.nan, "ok"
    clock = elapsed  # the run's wall time, as rank 0 measured it at the last step's agreement
    model.train()
    while step < config.max_steps:
        if cursor >= train_data.num_batches:  # epoch boundary: streams restart, state resets
            cursor, epoch, carried = 0, epoch + 1, None
        x, y = (dp.shard(t).to(device) for t in train_data.get(cursor))  # (B/W, T) each
        lr = lr_at(step, config, train_data.num_batches, clock)
        for group in optimizer.param_groups:
            group["lr"] = lr

        logits, new_state = net(x, carried)  # (B/W, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the ranks here
        grad_norm = clip_gradients(model.parameters(), config.grad_clip, config.grad_clip_mode)
        # One collective a step: the whole batch's loss, whether any rank was signalled, and
        # rank 0's clock (time limit, schedule), so every rank decides alike at the same step.
        loss_value, interrupted, clock = dp.agree(loss, stop.signal is not None, speed.elapsed())
        verdict = guard.check(step, loss_value, grad_norm)
        if verdict == "ok":
            optimizer.step()
            carried = _detach(new_state)  # truncated BPTT: stop gradients at the boundary
        else:  # non-finite or diverged: skip the update, keep the parameters, count it
            emit({"kind": "nonfinite", "step": step, "loss": loss_value, "reason": verdict,
                  "in_a_row": guard.in_a_row})  # fmt: skip
        step, cursor = step + 1, cursor + 1
        speed.add(x.numel() * W)  # characters of the global batch

        record = {
            "step": step,
            "train_loss": loss_value,
            "lr": lr,
            "grad_norm": grad_norm,
            "epoch": epoch,
            "nonfinite_skips": guard.skipped,
            "elapsed_s": round(speed.elapsed(), 3),
            "chars_per_s": round(speed.rate, 1),
        }
        if verdict != "ok" and guard.give_up():  # the aborting step is in the log too
            metrics.write(record)
            metrics.close()
            raise TrainingError(
                f"{guard.in_a_row} {verdict.replace('nonfinite', 'non-finite')} steps in a row "
                f"at step {step - 1} (rule: loss NaN/inf, or above ln(V)+1 = {guard.limit:.2f} "
                f"nats after warm-up); the last good checkpoint is {_last_good(run_dir)}; "
                "lower --lr or --grad-clip"
            )
        if step % config.log_every == 0 or step == config.max_steps:
            eta = speed.eta((config.max_steps - step) * x.numel() * W)
            if config.max_minutes:  # whichever limit comes first
                eta = min(eta, max(0.0, 60 * config.max_minutes - speed.elapsed()))
            emit({"kind": "step", **record, "tokens_per_s": speed.rate, "eta_s": eta,
                  "max_steps": config.max_steps})  # fmt: skip
        out_of_time = bool(config.max_minutes) and clock > 60 * config.max_minutes
        if out_of_time:
            stopped = "max_minutes"
        # A signal: checkpoint below, without a (possibly long) evaluation.
        if dp.stop_now(interrupted, stop.signal is not None):
            stopped = "interrupted"
        evaluate_now = step % config.eval_every == 0 or step == config.max_steps or out_of_time
        save_now, is_best = (
            bool(config.checkpoint_every) and step % config.checkpoint_every == 0,
            False,
        )
        if evaluate_now and stopped != "interrupted":
            # Sharded: each rank scores its block of the streams and the ranks add up their
            # nats and characters, so the loss is the one a single process computes.
            part = evaluate_tokens(model, val_data, config.eval_batches or None,
                                   dp.rows(val_data.batch_size))  # fmt: skip
            nats, count = dp.sum(part.nats, part.tokens)
            val = nats / max(count, 1)
            record.update(val_loss=val, val_bpc=val / math.log(2))
            healthy = math.isfinite(val) and not guard.diverged(val)
            is_best = healthy and val < best
            best, evals_since_best = (val, 0) if is_best else (best, evals_since_best + 1)
            emit({"kind": "eval", "step": step, "val_loss": val, "val_bpc": val / math.log(2),
                  "best": is_best})  # fmt: skip
            if not healthy:
                emit(
                    {
                        "kind": "note",
                        "text": f"step {step}: validation loss {val:.4g} is worse "
                        f"than guessing (> {guard.limit:.2f}); no checkpoint of a diverged model",
                    }
                )
            if config.sample_length and healthy and dp.is_main:
                emit({"kind": "sample", "step": step,
                      "text": _sample_text(model, corpus.vocab, config)})  # fmt: skip
            model.train()
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
        plot_losses(metrics.history, run_dir / "loss.png")
    dp.wait_for_all()  # no rank exits (torchrun would stop the rest) before rank 0 is done
    emit({"kind": "end", "step": step, "stopped": stopped, "best_val_loss": best,
          "nonfinite_skips": guard.skipped, "elapsed_s": speed.elapsed()})  # fmt: skip
    return TrainResult(run_dir, step, best, loss_value, stopped, dp.rank, W)


# -- pieces of the loop ---------------------------------------------------------------------


def _sample_text(model: CharLM, vocab: Vocab, config: TrainConfig) -> str:
    prime = vocab.encode(vocab.default_prime()).tolist()
    cfg = SampleConfig(length=config.sample_length, temperature=0.8, seed=config.seed)
    try:
        return vocab.decode(generate(model, prime, cfg)[0])
    except DecodingError as e:
        return f"(no sample: {e})"


def _val_batcher(corpus: Corpus, config: TrainConfig) -> StreamBatcher:
    """Validation streams: as many of the training batch size as the split allows."""
    tokens = corpus.split("val")
    if len(tokens) < 2:
        raise DataError("validation split is empty; raise --val-frac or use a longer file")
    batch = max(1, min(config.batch_size, (len(tokens) - 1) // (config.seq_len + 1)))
    return StreamBatcher(tokens, batch, min(config.seq_len, len(tokens) - 1))


def _split(config: TrainConfig) -> tuple[float, float, float]:
    return (1 - config.val_frac - config.test_frac, config.val_frac, config.test_frac)


def _last_good(run_dir: Path) -> str:
    if (run_dir / "best").is_dir():
        return str(run_dir / "best")
    found = list_checkpoints(run_dir) if run_dir.is_dir() else []  # (another node's rank)
    return str(found[-1]) if found else "none (no checkpoint was written yet)"


def _checked_state(state: Any, model: CharLM, batch: int, source: str) -> Any:
    """The carried hidden state of a checkpoint, shapes checked against this run's model."""
    if state is None:
        return None
    expected = model.initial_state(batch)
    parts = state if isinstance(state, (tuple, list)) else (state,)
    want = expected if isinstance(expected, tuple) else (expected,)
    if len(parts) != len(want) or any(
        not isinstance(p, Tensor) or p.shape != w.shape or p.dtype != w.dtype
        for p, w in zip(parts, want, strict=False)
    ):
        shapes = [tuple(w.shape) for w in want]
        raise CheckpointError(f"{source}: carried: expected hidden state(s) of shape {shapes}")
    return tuple(parts) if isinstance(expected, tuple) else parts[0]


def _detach(state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _to_device(state: Any, device: torch.device) -> Any:
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(s.to(device) for s in state)
    return state.to(device)


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


__all__ = ["TrainResult", "train", "plot_losses", "run_directory"]
