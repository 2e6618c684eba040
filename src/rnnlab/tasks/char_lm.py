"""The char-LM task: TrainConfig, presets, truncated-BPTT batches with carried state, and ``train``.

Truncated BPTT (Williams & Peng 1990; the lecture's "carry the hidden state forever, backprop only
k steps"): the corpus is cut into B streams (``rnnlab.data.tbptt``); each step trains on the next
``seq_len`` characters of every stream, starting from the state the previous chunk ended in,
detached so gradients stop at the chunk boundary. An epoch boundary restarts the streams from a
zero state. The carried state is trainer state: on CPU a run resumed at step N produces
bit-identical losses to the uninterrupted run. Validation loss is in nats/char (and bits/char);
the best checkpoint has the lowest. Everything else (the step, guard, stop rules, checkpoints) is
``rnnlab.training.loop.fit``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import CELL_HELP, SCAN_CELLS, CellName, cell_class
from rnnlab.checkpoint import CheckpointError
from rnnlab.data import Corpus, DataError, StreamBatcher, Vocab, cached_corpus, prepare_corpus
from rnnlab.evaluate import evaluate_tokens
from rnnlab.kernels import extension_status, regulariser_fallback
from rnnlab.loading import MAX_PARAMETERS, LoadedRun, RunKind
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.sample import DecodingError, SampleConfig, generate
from rnnlab.training.config import BIG, MAX_WIDTH, Backend, RunConfig
from rnnlab.training.distributed import (
    DataParallel,
    check_divisible,
)
from rnnlab.training.loop import Evaluation, Event, FitResult, Score, Task
from rnnlab.training.session import Changes, OnEvent, RunPath, begin, run_task, start_process
from rnnlab.validation import ConfigError, from_mapping, setting

MAX_VOCAB = 0x110000 + 256  # every Unicode code point, or bytes


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a char-LM run. CLI flags are these names in kebab-case."""

    input: str = setting("", "training text file; on resume: where to find it if it moved",
                         resume="location")  # fmt: skip
    # data
    byte_level: bool = setting(
        False, "model bytes (vocabulary of 256), not Unicode code points", aliases=("--bytes",)
    )
    errors: Literal["strict", "replace"] = setting(
        "strict", "invalid UTF-8: strict (error naming the byte offset) or replace (U+FFFD)"
    )
    val_frac: float = setting(0.05, "fraction of the text held out for validation", low=0, high=0.9)
    test_frac: float = setting(0.05, "fraction of the text held out for testing", low=0, high=0.9)
    # model
    cell: CellName = setting("gru", CELL_HELP)
    hidden_size: int = setting(384, "units per layer", low=1, high=MAX_WIDTH)
    num_layers: int = setting(1, "stacked recurrent layers", low=1, high=64)
    embedding_size: int = setting(0, "embedding width (0: hidden_size)", low=0, high=MAX_WIDTH)
    dropout: float = setting(
        0.0, "dropout probability between layers and before the output", low=0, high=1
    )
    tie_weights: bool = setting(False, "share the embedding and output matrices")
    # regularisers (AWD-LSTM's, Merity et al. 2017, and zoneout): off by default, training only
    zoneout: float = setting(
        0.0, "zoneout of h (Krueger et al. 2016): probability a unit keeps its previous value at "
        "a step; eval uses the expectation", low=0, high=1,
    )  # fmt: skip
    zoneout_cell: float = setting(
        0.0, "zoneout of the LSTM's cell state c (Krueger et al. 2016: c 0.5, h 0.05 for chars)",
        low=0, high=1,
    )  # fmt: skip
    weight_drop: float = setting(
        0.0, "DropConnect on the recurrent matrices W_hh, one mask per forward (weight drop, "
        "Merity et al. 2017)", low=0, high=0.99, resume="inexact",
    )  # fmt: skip
    locked_dropout: bool = setting(
        False, "--dropout draws one mask per sequence, shared over time (variational/locked "
        "dropout, Gal & Ghahramani 2016)", resume="inexact",
    )  # fmt: skip
    dropout_input: float = setting(
        0.0, "locked dropout on the embedding output (Gal & Ghahramani 2016; AWD-LSTM's "
        "dropouti)", low=0, high=0.99, resume="inexact",
    )  # fmt: skip
    embedding_dropout: float = setting(
        0.0, "drop whole embedding rows, a character's vector, per forward (Gal & Ghahramani "
        "2016; AWD-LSTM's dropoute)", low=0, high=0.99, resume="inexact",
    )  # fmt: skip
    backend: Backend = setting(
        "auto", "recurrence engine (all compute the same function)", resume="inexact"
    )
    batch_size: int = setting(32, "parallel streams per step", low=1, high=65536)
    seq_len: int = setting(64, "characters per stream per step (truncated BPTT)", low=1, high=10**6)
    # monitoring
    eval_batches: int = setting(0, "validation batches per evaluation (0: all)", low=0, high=BIG,
                                resume="free")  # fmt: skip
    sample_length: int = setting(200, "characters sampled at each evaluation (0: off)", low=0,
                                 high=10**6, resume="free")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_frac + self.test_frac >= 0.95:
            raise ConfigError(
                "val_frac + test_frac", "< 0.95, leaving text to train on",
                self.val_frac + self.test_frac,
            )  # fmt: skip
        if self.backend == "native" and (self.zoneout or self.zoneout_cell):
            raise ConfigError("backend", "auto, fused or reference with zoneout (torch's kernels "
                              "cannot zone the state)", self.backend)  # fmt: skip
        if self.zoneout_cell and not cell_class(self.cell).has_cell_state:
            raise ConfigError("zoneout_cell", "0 unless the cell has a c (lstm, layernorm_lstm)",
                              self.zoneout_cell)  # fmt: skip
        if self.weight_drop and self.cell in SCAN_CELLS:
            raise ConfigError("weight_drop", f"0 for {self.cell} (no recurrent matrix to drop; use "
                              "--dropout or --zoneout)", self.weight_drop)  # fmt: skip
        if self.tie_weights and (self.embedding_size or self.hidden_size) != self.hidden_size:
            raise ConfigError(
                "tie_weights", "embedding_size 0 or == hidden_size", self.embedding_size
            )

    def model_kwargs(self, vocab_size: int) -> dict[str, Any]:
        """The CharLMConfig keywords of this run."""
        return {
            "vocab_size": vocab_size,
            "cell": self.cell,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "embedding_size": self.embedding_size,
            "dropout": self.dropout,
            "tie_weights": self.tie_weights,
            "backend": self.backend,
            "zoneout": self.zoneout,
            "zoneout_cell": self.zoneout_cell,
            "weight_drop": self.weight_drop,
            "locked_dropout": self.locked_dropout,
            "dropout_input": self.dropout_input,
            "embedding_dropout": self.embedding_dropout,
        }


PRESETS: dict[str, dict[str, Any]] = {
    # The default (TrainConfig's own values): a 1x384 GRU, batch 32 x 64, Adam 3e-3 with a cosine
    # to 0.1x; chosen by bench/quality.py --search for the best validation loss after 1 and 3
    # minutes on a 2-core CPU (README "Quality per minute").
    "small": {},
    "tiny": {"hidden_size": 64, "num_layers": 1, "batch_size": 16, "seq_len": 32},
    "medium": {"hidden_size": 512, "num_layers": 2, "dropout": 0.2, "lr": 2e-3},
    # char-rnn's classic setting (Karpathy 2015): 2x128 LSTM, RMSprop, per-epoch decay.
    "char-rnn": {
        "hidden_size": 128,
        "num_layers": 2,
        "batch_size": 50,
        "seq_len": 50,
        "optimizer": "rmsprop",
        "lr": 2e-3,
        "lr_schedule": "step",
        "warmup_steps": 0,
    },
}


class CharLMTask(Task):
    """TBPTT over B streams of one corpus; the carried state (L, B/W, H) is trainer state."""

    name = "char_lm"
    unit = "chars"
    sharded = "streams"
    scores = (Score("val_loss", "best_val_loss"),)
    loss_unit = "char"

    def __init__(self, config: TrainConfig, corpus: Corpus, dp: DataParallel) -> None:
        self.config, self.corpus, self.dp = config, corpus, dp
        self.num_classes = len(corpus.vocab)
        self.train_data = StreamBatcher(corpus.split("train"), config.batch_size, config.seq_len)
        self.val_data = _val_batcher(corpus, config)
        self.carried: Any = None  # (L, B/W, H) or a tuple of them: this rank's streams
        self.pending: Any = None

    def build_model(self) -> nn.Module:
        self.model = CharLM(CharLMConfig(**self.config.model_kwargs(self.num_classes)))
        return self.model

    def steps_per_epoch(self) -> int:
        return self.train_data.num_batches

    def start_epoch(self, epoch: int, boundary: bool) -> None:
        if boundary:
            self.carried = None  # the streams restart from the top: a zero state

    def train_loss(self, net: nn.Module, cursor: int, dp: DataParallel) -> tuple[Tensor, int]:
        x, y = (dp.shard(t).to(dp.device) for t in self.train_data.get(cursor))  # (B/W, T)
        logits, self.pending = net(x, self.carried)  # (B/W, T, V)
        # Every rank holds B/W streams of T characters: the plain mean, averaged by DDP, is the
        # whole batch's mean.
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), x.numel() * dp.world_size

    def accept_step(self) -> None:
        self.carried = _detach(self.pending)  # truncated BPTT: stop gradients at the boundary

    def evaluate(self, model: nn.Module, dp: DataParallel) -> Evaluation | None:
        # Sharded: each rank scores its block of the streams and the ranks add up their nats and
        # characters, so the loss is the one a single process computes.
        part = evaluate_tokens(model, self.val_data, self.config.eval_batches or None,  # type: ignore[arg-type]
                               dp.rows(self.val_data.batch_size))  # fmt: skip
        nats, count = dp.sum(part.nats, part.tokens)
        val = nats / max(count, 1)
        return Evaluation({"val_loss": val, "val_bpc": val / math.log(2)})

    def healthy_events(self, model: nn.Module, step: int, dp: DataParallel) -> list[Event]:
        if not (self.config.sample_length and dp.is_main):
            return []
        return [{"kind": "sample", "step": step, "text": _sample_text(model, self)}]

    def trainer_state(self, dp: DataParallel) -> dict[str, Any]:
        whole = dp.gather_state(self.carried)  # every rank sends its streams' state
        return {"carried": _to_device(whole, torch.device("cpu"))}  # (L, B, H): every stream

    def load_trainer_state(self, state: Mapping[str, Any], dp: DataParallel, source: str) -> None:
        carried = _checked_state(state.get("carried"), self.model, self.config.batch_size, source)
        self.carried = _to_device(dp.shard_state(carried), dp.device)

    def checkpoint_files(self) -> tuple[dict[str, Any], dict[str, Any]]:
        meta = self.corpus.meta
        stored = {**self.config.to_dict(), "input": meta["source"]}
        corpus = {"source": meta["source"], "sha256": meta["source_sha256"]}
        return ({"train": stored, "corpus": corpus},
                self.corpus.vocab.to_json())  # fmt: skip

    def start_fields(self) -> dict[str, Any]:
        chars = len(self.corpus.split("train"))
        return {"data": f"vocab {self.num_classes}, {chars:,} training chars",
                "backend": _backend_line(self.model, self.dp.device)}  # fmt: skip


def train(config: TrainConfig | None = None, *, resume: RunPath = None, changes: Changes = None,
          on_event: OnEvent = None) -> FitResult:  # fmt: skip
    """Train a CharLM on ``config.input``, or resume the run directory ``resume``.

    On resume the saved config is the run's; ``changes`` (field -> value) are applied following
    the resume rules of ``rnnlab.training.config`` (run length, cadence, device, learning rate...
    may change; model, data, batch, optimizer, seed may not, a ConfigError says which). A
    ``config`` given with ``resume`` counts as the changes (``rnnlab.training.session.begin``).
    Checkpoints go to the run directory of ``resume`` and nowhere else.

    ``on_event`` receives progress dicts (``kind``: start, note, step, eval, sample, checkpoint,
    nonfinite, end); the library never prints. SIGTERM or Ctrl-C finishes the current step,
    writes a checkpoint and returns with ``stopped="interrupted"``.
    """
    config, ckpt, emit = begin(KIND, config, resume, changes, on_event)
    launch, device = start_process(config)
    check_divisible(config.batch_size, launch.world_size, resuming=ckpt is not None)
    if ckpt is None:
        corpus = prepare_corpus(config.input, byte_level=config.byte_level, errors=config.errors,
                                split=_split(config))  # fmt: skip
    else:
        corpus = _resumed_corpus(config, ckpt, emit)
    if config.backend in ("auto", "fused"):
        # Build (or wait for another process's build of) the C++ engine before SIGTERM/Ctrl-C
        # are deferred to step boundaries, so a signal during a first-use build acts at once.
        extension_status()
    run_dir = ckpt.run_dir if ckpt else Path(config.out_dir or f"runs/{Path(config.input).stem}"
                                             f"-{config.cell}")  # fmt: skip
    return run_task(lambda dp: CharLMTask(config, corpus, dp), launch, device, run_dir, emit, ckpt)


def _resumed_corpus(config: TrainConfig, ckpt: LoadedRun, emit: Callable[[Event], None]) -> Corpus:
    """The corpus a resumed run trains on: found by ``training_corpus`` (``--input`` names a moved
    file), its vocabulary the run's."""
    saved_input = ckpt.train_config.input if ckpt.train_config else ""
    given = config.input if config.input != saved_input else None  # --input on resume
    corpus = training_corpus(config, ckpt.corpus, given, ckpt.vocab)
    if ckpt.vocab.tokens != corpus.vocab.tokens:
        raise DataError(f"vocabulary mismatch on resume: {ckpt.vocab.diff(corpus.vocab)}; "
                        "resume with the file the run was trained on")  # fmt: skip
    if config.max_steps <= ckpt.step:
        text = (f"the checkpoint is at step {ckpt.step} and max_steps is {config.max_steps}: "
                "nothing to train; give a larger --max-steps")  # fmt: skip
        emit({"kind": "note", "text": text})
    return corpus


# -- pieces ---------------------------------------------------------------------------------------


def _backend_line(model: CharLM, device: torch.device) -> str:
    """The backend for the start line, with what a regulariser changes about it: zoneout where
    torch's kernels would have run (``regulariser_fallback``), and input dropout's unfolded
    lookup (a per-sequence mask leaves no table to fold; the engine still runs)."""
    line = model.resolved_backend(device)
    notes = [regulariser_fallback(model.rnn, device)]
    if model.config.dropout_input and line == "fused":
        notes.append("--dropout-input: embedding lookup not folded")
    notes = [n for n in notes if n]
    return line + (f" ({'; '.join(notes)})" if notes else "")


def _sample_text(model: nn.Module, task: CharLMTask) -> str:
    vocab, config = task.corpus.vocab, task.config
    prime = vocab.encode(vocab.default_prime()).tolist()
    options = SampleConfig(length=config.sample_length, temperature=0.8, seed=config.seed)
    try:
        return vocab.decode(generate(model, prime, options)[0])  # type: ignore[arg-type]
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


# -- its run directories --------------------------------------------------------------------------


@dataclass
class _ModelSchema:
    """The bounds of CharLMConfig's fields as read from a run directory."""

    vocab_size: int = setting(1, "vocabulary size", low=1, high=MAX_VOCAB)
    cell: CellName = setting("lstm", "cell")
    hidden_size: int = setting(256, "units per layer", low=1, high=MAX_WIDTH)
    num_layers: int = setting(1, "layers", low=1, high=64)
    embedding_size: int = setting(0, "embedding width", low=0, high=MAX_WIDTH)
    dropout: float = setting(0.0, "dropout", low=0, high=1)
    tie_weights: bool = setting(False, "tied embedding/head")
    backend: Backend = setting("auto", "backend")
    zoneout: float = setting(0.0, "zoneout of h", low=0, high=1)
    zoneout_cell: float = setting(0.0, "zoneout of c", low=0, high=1)
    weight_drop: float = setting(0.0, "weight drop", low=0, high=0.99)
    locked_dropout: bool = setting(False, "locked dropout")
    dropout_input: float = setting(0.0, "input dropout", low=0, high=0.99)
    embedding_dropout: float = setting(0.0, "embedding dropout", low=0, high=0.99)


def read_model_config(data: dict[str, Any], source: str) -> CharLMConfig:
    """A CharLMConfig read from config.json, bounded before anything is built."""
    known = {f.name for f in dataclasses.fields(CharLMConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(str(unknown[0]), "a CharLMConfig field", "an unknown key", source)
    schema = {f.name for f in dataclasses.fields(_ModelSchema)}
    if "vocab_size" not in data:
        raise ConfigError("vocab_size", "a value", "nothing (missing key)", source)
    from_mapping(_ModelSchema, {k: v for k, v in data.items() if k in schema}, source)
    try:
        config = CharLMConfig(**data)
    except (TypeError, ValueError) as e:
        raise ConfigError("(fields)", "consistent values", str(e), source) from None
    # An estimate first: building even on the meta device costs time for an absurd config.
    H, E, L, V = config.hidden_size, config.embedding_size, config.num_layers, config.vocab_size
    shapes = cell_class(config.cell).parameter_shapes  # counted from the shapes, nothing built
    estimate = V * E + V * H + sum(math.prod(s) for s in shapes(E, H).values())
    estimate += (L - 1) * sum(math.prod(s) for s in shapes(H, H).values())
    if estimate > MAX_PARAMETERS:
        raise ConfigError("(size)", f"at most {MAX_PARAMETERS:,} parameters", estimate, source)
    return config


KIND = RunKind(
    "char_lm", TrainConfig, CharLMConfig, CharLM,
    vocabs=lambda data, source: {"vocab": Vocab.from_json(data)},
    sizes=lambda config: {"vocab": config.vocab_size},
    read_model=read_model_config,  # bounds first: CharLMConfig is not a validated dataclass
    record_key="corpus",
    train_required=False,  # a model-only checkpoint samples and evaluates on files
)  # fmt: skip


def training_corpus(
    config: TrainConfig,
    record: dict[str, Any],
    given: str | os.PathLike[str] | None = None,
    vocab: Vocab | None = None,
) -> Corpus:
    """The corpus a run trained on, found without trusting the working directory: the file
    ``given`` by the user (its vocabulary must be ``vocab``, its content the run's), else the
    stored absolute path if its content is unchanged, else the corpus cache entry with the
    stored content hash; otherwise a DataError that says which file is needed and how."""
    split = (1 - config.val_frac - config.test_frac, config.val_frac, config.test_frac)
    options = {"byte_level": config.byte_level, "errors": config.errors, "split": split}
    sha = record.get("sha256", "")
    source = record.get("source") or config.input
    if given:
        corpus = prepare_corpus(given, **options)
        if vocab is not None and corpus.vocab.tokens != vocab.tokens:
            raise DataError(
                f"{given}: vocabulary mismatch with the run: {vocab.diff(corpus.vocab)}; "
                "pass the file the run was trained on"
            )
        if sha and corpus.meta["source_sha256"] != sha:
            raise DataError(
                f"{given}: not the text this run trained on (its content differs from "
                f"{source}, sha256 {sha[:12]}); pass the original file"
            )
        return corpus
    if source and Path(source).is_file():
        corpus = prepare_corpus(source, **options)
        if not sha or corpus.meta["source_sha256"] == sha:
            return corpus
    cached = cached_corpus(sha, **options) if sha else None
    if cached is not None:
        if source and Path(source).is_file():
            warnings.warn(
                f"{source} changed since training; using the cached copy of the original text",
                stacklevel=2,
            )
        return cached
    state = "changed since training" if source and Path(source).is_file() else "not found"
    raise DataError(
        f"{source or 'the training file'}: {state} and not in the corpus cache; pass the "
        "original text with --input FILE"
    )
