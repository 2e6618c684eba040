"""The sequence-classification loop: ``text, label`` rows -> SequenceClassifier, with accuracy,
macro-F1 and a confusion matrix; checkpoints and exact resume through ``rnnlab.training.tools``.

Rows come from a TSV/CSV file (``rnnlab.data.pairs.read_labeled``), read as characters or
whitespace tokens. Validation rows come from ``val_data`` or a hash split of the training file by
text (``val_frac``). The vocabulary and the label set are built from the training rows; a symbol
or label a validation/evaluation file has and training does not is a DataError naming the file
and line. The best checkpoint has the highest validation accuracy (then lowest loss).
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
    Pair,
    Symbols,
    Tokenizer,
    check_known,
    length_batches,
    pad_batch,
    read_labeled,
)
from rnnlab.metrics.classification import ClassificationReport, classification_report
from rnnlab.models.classifier import CellName, ClassifierConfig, SequenceClassifier
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
TEXT_SPECIALS = ("<pad>", "<unk>")
TRAINER_SCHEMA = {"optimizer": dict, "step": int, "cursor": int, "epoch": int,
                  "best_accuracy": float, "best_val_loss": float, "rng": dict}  # fmt: skip
RESUMABLE = ("max_steps", "max_minutes", "eval_every", "keep_last", "log_every", "device",
             "threads", "max_nonfinite")  # fmt: skip


@dataclass
class ClassifyTrainConfig:
    """Everything that defines a classification run; CLI flags are these names in kebab-case."""

    data: str = setting("", "training rows: TSV or CSV of text, label")
    val_data: str = setting("", "validation rows (default: a hash split of --data)")
    tokens: Tokenizer = setting("char", "text symbols: characters or space-separated tokens")
    header: bool = setting(False, "the files start with a header row")
    val_frac: float = setting(0.1, "hash split of --data held out for validation", low=0.0,
                              high=0.5)  # fmt: skip
    out_dir: str = setting("", "run directory (default runs/<file>-classify)")
    embedding_size: int = setting(32, "embedding width", low=1, high=16384)
    hidden_size: int = setting(64, "units per layer and direction", low=1, high=16384)
    num_layers: int = setting(1, "stacked layers", low=1, high=64)
    cell: CellName = setting("lstm", "recurrent cell")
    bidirectional: bool = setting(False, "bidirectional")
    dropout: float = setting(0.0, "dropout", low=0.0, high=0.9)
    pooling: Literal["last", "mean", "max"] = setting("last", "last state, or mean/max over time")
    backend: Literal["auto", "reference", "native", "fused"] = setting("auto", "recurrence engine")
    batch_size: int = setting(32, "rows per step", low=1, high=65536)
    max_steps: int = setting(1000, "stop after this many steps", low=1, high=BIG)
    max_minutes: float = setting(0.0, "stop after this wall time, minutes (0: off)", low=0,
                                 high=1e7)  # fmt: skip
    optimizer: Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"] = setting("adam", "optimizer")
    lr: float = setting(3e-3, "peak learning rate", low=1e-12, high=100.0)
    weight_decay: float = setting(0.0, "weight decay", low=0, high=10.0)
    lr_schedule: Literal["cosine", "step", "constant"] = setting("cosine", "schedule after warm-up")
    warmup_steps: int = setting(20, "linear warm-up, steps", low=0, high=BIG)
    min_lr_frac: float = setting(0.05, "cosine floor, fraction of --lr", low=0, high=1)
    decay_steps: int = setting(0, "cosine horizon, steps (0: max_steps)", low=0, high=BIG)
    lr_decay: float = setting(0.97, "step schedule: factor per epoch", low=0, high=1)
    lr_decay_after: int = setting(1, "step schedule: first epoch that decays", low=0, high=BIG)
    grad_clip: float = setting(5.0, "clip gradients at this global norm (0: off)", low=0, high=1e6)
    grad_clip_mode: Literal["norm", "value"] = setting("norm", "norm: global L2; value: elements")
    eval_every: int = setting(200, "validate and checkpoint every N steps", low=1, high=BIG)
    keep_last: int = setting(3, "step checkpoints kept besides best/", low=1, high=10**6)
    max_nonfinite: int = setting(5, "abort after N non-finite steps in a row", low=1, high=10**6)
    log_every: int = setting(50, "progress event every N steps", low=1, high=BIG)
    seed: int = setting(1234, "random seed", low=0, high=2**63 - 1)
    device: str = setting("cpu", "cpu, cuda, cuda:N or auto")
    threads: int = setting(0, "torch CPU threads (0: torch's default)", low=0, high=4096)

    def __post_init__(self) -> None:
        validate(self)
        if not self.data:
            raise ConfigError("data", "a TSV/CSV file of text, label rows", self.data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self, vocab_size: int, num_classes: int) -> ClassifierConfig:
        names = {f.name for f in dataclasses.fields(ClassifierConfig)}
        kept = {k: v for k, v in self.to_dict().items() if k in names}
        return ClassifierConfig(vocab_size=vocab_size, num_classes=num_classes, **kept)


@dataclass
class LabeledData:
    train: list[Pair]
    val: list[Pair]
    vocab: Symbols
    labels: Symbols
    record: dict[str, Any]


def load_labeled(config: ClassifyTrainConfig) -> LabeledData:
    rows = read_labeled(config.data, tokens=config.tokens, header=config.header)
    digest = hashlib.sha256(Path(config.data).read_bytes()).hexdigest()
    if config.val_data:
        train = rows
        val = read_labeled(config.val_data, tokens=config.tokens, header=config.header)
    else:
        held = [_fraction(" ".join(r.source)) < config.val_frac for r in rows]
        train = [r for r, h in zip(rows, held, strict=True) if not h]
        val = [r for r, h in zip(rows, held, strict=True) if h]
        if not val or not train:
            raise DataError(f"{config.data}: the validation split is empty or takes every row; "
                            "change --val-frac or give --val-data")  # fmt: skip
    vocab = Symbols.build((r.source for r in rows), TEXT_SPECIALS)  # all training-file text
    labels = Symbols.build((r.target for r in train), ())
    if config.val_data:
        check_known(val, vocab, labels, config.val_data, "label")
    else:  # one file: a label only in the held-out rows is still the user's label set
        labels = Symbols.build((r.target for r in rows), ())
    return LabeledData(train, val, vocab, labels, {"data": str(Path(config.data).resolve()),
                                                   "data_sha256": digest})  # fmt: skip


def _fraction(text: str) -> float:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def encode_rows(rows: Sequence[Pair], vocab: Symbols, labels: Symbols | None,
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
def evaluate_rows(model: SequenceClassifier, rows: Sequence[Pair], vocab: Symbols,
                  labels: Symbols, *, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> ClassifyEval:  # fmt: skip
    """Loss, accuracy, macro-F1 and the confusion matrix over ``rows``."""
    was_training = model.training
    model.eval()
    try:
        ids, ys = encode_rows(rows, vocab, labels)
        total, predicted = 0.0, []
        for start in range(0, len(ids), batch_size):
            x, n = pad_batch(ids[start : start + batch_size])
            y = torch.tensor(ys[start : start + batch_size], device=device)
            logits = model(x.to(device), n)
            total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            predicted += logits.argmax(-1).tolist()
        report = classification_report(predicted, ys, len(labels))
        return ClassifyEval(total / max(len(ys), 1), report, predicted)
    finally:
        model.train(was_training)


@dataclass
class ClassifyResult:
    run_dir: Path
    step: int
    best_accuracy: float
    stopped: str
    rank: int = 0  # under torchrun: this process's rank (rank 0 writes and reports for the run)
    world_size: int = 1  # processes that trained together (data parallel)


def train_classifier(
    config: ClassifyTrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    changes: Mapping[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> ClassifyResult:
    """Train a SequenceClassifier, or resume ``resume`` (changing only ``RESUMABLE`` fields).
    Events as in the seq2seq loop (start, step, eval, checkpoint, nonfinite, end)."""
    emit = on_event or (lambda event: None)
    with GracefulStop() as stop:
        ckpt = None
        if resume is None:
            if config is None:
                raise TypeError("train_classifier() needs a ClassifyTrainConfig or resume=RUN_DIR")
            run_dir = Path(config.out_dir or Path("runs") / f"{Path(config.data).stem}-classify")
            config = dataclasses.replace(config, data=str(Path(config.data).resolve()),
                                         val_data=str(Path(config.val_data).resolve())
                                         if config.val_data else "")  # fmt: skip
        else:
            path = resolve_checkpoint(resume, "latest")
            ckpt = load_checkpoint(path)
            saved = from_mapping(ClassifyTrainConfig, ckpt.config.get("train"),
                                 str(path / "config.json"))  # fmt: skip
            wanted = {k: v for k, v in (changes or {}).items() if k != "out_dir"}
            fixed = sorted(k for k, v in wanted.items() if k not in RESUMABLE
                           and v != getattr(saved, k))  # fmt: skip
            if fixed:
                raise ConfigError(fixed[0], f"the run's value {getattr(saved, fixed[0])!r} (a "
                                  f"resume may change {', '.join(RESUMABLE)})",
                                  wanted[fixed[0]])  # fmt: skip
            new_length = wanted.get("max_steps", saved.max_steps) != saved.max_steps
            if saved.decay_steps == 0 and new_length:
                wanted["decay_steps"] = saved.max_steps  # the cosine horizon the run started with
            config, run_dir = dataclasses.replace(saved, **wanted), path.parent
        set_threads(config.threads)
        launch = launch_from_env()  # torchrun's WORLD_SIZE/RANK/LOCAL_RANK, or one process
        emit = main_reports(emit, launch)
        device = rank_device(config.device, launch)
        data = load_labeled(config)
        config.model_config(len(data.vocab), len(data.labels))  # refuse a bad model up front
        if ckpt is not None and ckpt.config.get("data", {}).get("data_sha256") != data.record[
                "data_sha256"]:  # fmt: skip
            raise DataError(f"{config.data}: not the file the run was trained on")
        with DataParallel(launch, device) as dp, contextlib.ExitStack() as own:
            dp.open_run_directory(run_dir, ckpt is None, own)  # rank 0 creates and locks it
            return _loop(config, run_dir.resolve(), ckpt, data, dp, emit, stop)


def _loop(config: ClassifyTrainConfig, run_dir: Path, ckpt: Any, data: LabeledData,
          dp: DataParallel, emit: Callable[[Event], None],
          stop: GracefulStop) -> ClassifyResult:  # fmt: skip
    device, W = dp.device, dp.world_size
    seed_everything(config.seed)  # every rank builds the same model
    model = SequenceClassifier(config.model_config(len(data.vocab), len(data.labels))).to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.weight_decay)
    ids, ys = encode_rows(data.train, data.vocab, data.labels)
    lengths = [len(i) for i in ids]

    def epoch_batches(epoch: int) -> list[list[int]]:
        return length_batches(
            lengths,
            config.batch_size,
            torch.Generator().manual_seed((config.seed * 1_000_003 + epoch) % 2**63),
        )

    step, cursor, epoch, elapsed = 0, 0, 0, 0.0
    best_acc, best_loss = -1.0, math.inf
    if ckpt is not None:
        where = str(ckpt.path / "trainer.json")
        t = unpack_trainer_state(ckpt.trainer_tensors, ckpt.trainer, TRAINER_SCHEMA, where)
        rng, saved_world = saved_rng(t, dp.rank, where)
        try:
            model.load_state_dict(ckpt.model)
            optimizer.load_state_dict(t["optimizer"])
            if rng is not None:
                restore_rng(rng)
            else:  # a rank the checkpoint did not have
                seed_everything(rank_seed(config.seed, dp.rank))
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{where}: not this run's state ({e})") from None
        step, cursor, epoch = t["step"], t["cursor"], t["epoch"]
        best_acc, best_loss = float(t["best_accuracy"]), float(t["best_val_loss"])
        elapsed = float(t.get("elapsed", 0.0))
        dp.check_same("the checkpoint step", step, "every node must read the same run directory")
        if saved_world != W:
            emit({"kind": "note", "text": f"resuming a {saved_world}-process run on {W}: it "
                  "continues, but not bit-identically"})  # fmt: skip
    elif dp.rank:
        seed_everything(rank_seed(config.seed, dp.rank))  # each rank its own dropout masks
    net = dp.wrap(model)  # DistributedDataParallel for several processes, the model for one
    batches = epoch_batches(epoch)
    metrics = MetricsLog(  # rank 0 writes metrics.jsonl; the other ranks keep no log
        run_dir / "metrics.jsonl" if dp.is_main else None, resume_step=step if ckpt else None
    )
    guard = StepGuard(max(len(data.labels), 2), config.warmup_steps, config.max_nonfinite)
    speed = Throughput(elapsed)
    saved: list[int] = []
    emit({"kind": "start", "run_dir": str(run_dir), "step": step, "resumed": ckpt is not None,
          "parameters": model.num_parameters(), "train_rows": len(data.train),
          "val_rows": len(data.val), "vocab": len(data.vocab), "labels": len(data.labels),
          "steps_per_epoch": len(batches), "device": str(device),
          "world_size": W})  # fmt: skip

    def checkpoint(is_best: bool) -> None:
        rngs = dp.gather_objects(capture_rng())  # every rank's; rank 0 writes them
        saved.append(step)
        if not dp.is_main:
            return
        metrics.sync()
        tensors, tree = pack_trainer_state({
            "optimizer": optimizer.state_dict(), "step": step, "cursor": cursor, "epoch": epoch,
            "best_accuracy": best_acc, "best_val_loss": best_loss, **rank_rng_fields(rngs),
            "elapsed": speed.elapsed()})  # fmt: skip
        path = save_checkpoint(
            run_dir, step, model=model.state_dict(),
            config={"model": model.config.to_dict(), "train": config.to_dict(),
                    "data": data.record},
            vocab={"text": data.vocab.to_json(), "labels": data.labels.to_json()},
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
        mine, weight = dp.shard_examples(chosen)  # this rank's block of the batch's rows
        x, n = pad_batch([ids[i] for i in mine])
        y = torch.tensor([ys[i] for i in mine], device=device)
        lr = lr_at(step, config, len(batches), clock)  # type: ignore[arg-type]
        for group in optimizer.param_groups:
            group["lr"] = lr
        if dp.active:  # this rank's summed loss over the batch's rows, times W (DDP averages)
            loss = F.cross_entropy(net(x.to(device), n), y, reduction="sum") * (
                weight * W / len(chosen)
            )
        else:
            loss = F.cross_entropy(model(x.to(device), n), y)
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
                raise TrainingError(f"{guard.in_a_row} {verdict} steps in a row at step {step}; "
                                    "lower --lr or --grad-clip")  # fmt: skip
        step, cursor = step + 1, cursor + 1
        speed.add(sum(lengths[i] for i in chosen))  # the whole batch's characters
        record: dict[str, Any] = {"step": step, "train_loss": loss_value, "lr": lr,
                                  "grad_norm": grad_norm, "epoch": epoch,
                                  "elapsed_s": round(speed.elapsed(), 3)}  # fmt: skip
        if step % config.log_every == 0:
            emit({"kind": "step", **record, "max_steps": config.max_steps})
        if config.max_minutes and clock > 60 * config.max_minutes:
            stopped = "max_minutes"
        if dp.stop_now(interrupted, stop.signal is not None):
            stopped = "interrupted"
        is_best = False
        evaluate_now = step % config.eval_every == 0 or step == config.max_steps
        if (evaluate_now or stopped == "max_minutes") and stopped != "interrupted" and dp.is_main:
            # Rank 0 evaluates (it alone writes the best checkpoint); the others go on.
            result = evaluate_rows(model, data.val, data.vocab, data.labels, device=device)
            acc = result.report.accuracy
            is_best = math.isfinite(result.loss) and (acc, -result.loss) > (best_acc, -best_loss)
            if is_best:
                best_acc, best_loss = acc, result.loss
            record.update(val_loss=result.loss, val_accuracy=acc,
                          val_macro_f1=result.report.macro_f1)  # fmt: skip
            emit({"kind": "eval", "step": step, "val_loss": result.loss, "val_accuracy": acc,
                  "val_macro_f1": result.report.macro_f1, "best": is_best})  # fmt: skip
        metrics.write(record)
        if evaluate_now and stopped != "interrupted":
            checkpoint(is_best)
        if stopped != "max_steps":
            break
    if (not saved or saved[-1] != step) and verdict == "ok":
        checkpoint(False)
    metrics.close()
    dp.wait_for_all()  # no rank exits (torchrun would stop the rest) before rank 0 is done
    emit({"kind": "end", "step": step, "stopped": stopped, "best_accuracy": best_acc})
    return ClassifyResult(run_dir, step, best_acc, stopped, dp.rank, W)


@dataclass
class LoadedClassifier:
    model: SequenceClassifier
    vocab: Symbols
    labels: Symbols
    config: ClassifyTrainConfig
    path: Path


def load_classifier(path: str | Path, which: Literal["best", "latest"] = "best",
                    device: str = "cpu") -> LoadedClassifier:  # fmt: skip
    """A trained classifier from a run or checkpoint directory (verified; never unpickled)."""
    ckpt_path = resolve_checkpoint(path, which)
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    where = str(ckpt_path / "config.json")
    if "model" not in ckpt.config or "train" not in ckpt.config:
        raise CheckpointError(f"{where}: not a classifier run (no model/train config)")
    model_config = from_mapping(ClassifierConfig, ckpt.config["model"], where)
    train_config = from_mapping(ClassifyTrainConfig, ckpt.config["train"], where)
    vocab = Symbols.from_json(ckpt.vocab.get("text"), f"{ckpt_path}/vocab.json: text")
    labels = Symbols.from_json(ckpt.vocab.get("labels"), f"{ckpt_path}/vocab.json: labels")
    if (len(vocab), len(labels)) != (model_config.vocab_size, model_config.num_classes):
        raise CheckpointError(f"{ckpt_path}/vocab.json: sizes do not match the model config")
    model = SequenceClassifier(model_config)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{ckpt_path}/model.safetensors: does not fit ({msg})") from None
    return LoadedClassifier(model.to(device).eval(), vocab, labels, train_config, ckpt_path)
