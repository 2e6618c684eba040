"""TrainConfig: every setting of a char-LM run, its range and unit, presets, and the resume table.

Each field is a CLI flag in kebab-case (``hidden_size`` -> ``--hidden-size``); its ``setting``
says what it accepts, so ``rnnlab.validation`` checks a typed flag, a Python call and a config
read back from a run directory the same way.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from rnnlab.validation import ConfigError, setting, validate

Cell = Literal["rnn", "lstm", "gru", "mut1", "mut2", "mut3"]
Optimizer = Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"]
Schedule = Literal["cosine", "step", "constant"]
BIG = 10**12  # "practically unbounded" for step counts
MAX_WIDTH = 16384  # hidden/embedding sizes: a 16384-wide LSTM layer is already 2 GB of weights
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")


@dataclass
class TrainConfig:
    """Everything that defines a run. CLI flags are these names in kebab-case."""

    input: str = setting("", "training text file; on resume: where to find it if it moved")
    out_dir: str = setting("", "run directory (default runs/<file>-<cell>)")
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
    cell: Cell = setting("gru", "recurrent cell")
    hidden_size: int = setting(384, "units per layer", low=1, high=MAX_WIDTH)
    num_layers: int = setting(1, "stacked recurrent layers", low=1, high=64)
    embedding_size: int = setting(0, "embedding width (0: hidden_size)", low=0, high=MAX_WIDTH)
    dropout: float = setting(
        0.0, "dropout probability between layers and before the output", low=0, high=1
    )
    tie_weights: bool = setting(False, "share the embedding and output matrices")
    backend: Literal["auto", "reference", "native", "fused"] = setting(
        "auto", "recurrence engine (all compute the same function)"
    )
    # optimisation
    batch_size: int = setting(32, "parallel streams per step", low=1, high=65536)
    seq_len: int = setting(64, "characters per stream per step (truncated BPTT)", low=1, high=10**6)
    max_steps: int = setting(2000, "stop after this many steps", low=1, high=BIG)
    max_minutes: float = setting(
        0.0,
        "stop after this wall time, minutes (0: off); the cosine anneals by it; on the command "
        "line without --max-steps it is the only limit",
        low=0,
        high=1e7,
    )
    optimizer: Optimizer = setting("adam", "optimizer")
    lr: float = setting(3e-3, "peak learning rate", low=1e-12, high=100.0)
    weight_decay: float = setting(0.0, "L2 / decoupled weight decay", low=0, high=10.0)
    lr_schedule: Schedule = setting("cosine", "learning-rate schedule after warm-up")
    warmup_steps: int = setting(50, "linear warm-up, steps", low=0, high=BIG)
    min_lr_frac: float = setting(0.1, "cosine floor, fraction of --lr", low=0, high=1)
    decay_steps: int = setting(0, "cosine horizon, steps (0: max_steps)", low=0, high=BIG)
    lr_decay: float = setting(0.97, "step schedule: factor per epoch", low=0, high=1)
    lr_decay_after: int = setting(1, "step schedule: first epoch that decays", low=0, high=BIG)
    grad_clip: float = setting(5.0, "clip gradients at this norm/value (0: off)", low=0, high=1e6)
    grad_clip_mode: Literal["norm", "value"] = setting(
        "norm", "norm: global L2 norm; value: element-wise (char-rnn)"
    )
    # monitoring
    eval_every: int = setting(200, "validate (and checkpoint) every N steps", low=1, high=BIG)
    eval_batches: int = setting(0, "validation batches per evaluation (0: all)", low=0, high=BIG)
    patience: int = setting(
        0, "stop after N evaluations without a new best (0: off)", low=0, high=BIG
    )
    max_nonfinite: int = setting(
        5, "abort after N non-finite or diverged steps in a row", low=1, high=10**6
    )
    sample_length: int = setting(
        200, "characters sampled at each evaluation (0: off)", low=0, high=10**6
    )
    checkpoint_every: int = setting(
        0, "also checkpoint every N steps (0: only at evaluations)", low=0, high=BIG
    )
    keep_last: int = setting(
        3, "step-N checkpoints kept (best/ is kept as well)", low=1, high=10**6
    )
    log_every: int = setting(10, "report progress every N steps", low=1, high=BIG)
    seed: int = setting(1337, "seed of every random number generator", low=0, high=2**63 - 1)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads for torch (0: torch's default)", low=0, high=4096)

    def __post_init__(self) -> None:
        validate(self)
        if not DEVICE.fullmatch(self.device):
            raise ConfigError("device", "auto, cpu, mps, cuda or cuda:N", self.device)
        if self.val_frac + self.test_frac >= 0.95:
            raise ConfigError(
                "val_frac + test_frac", "< 0.95, leaving text to train on",
                self.val_frac + self.test_frac,
            )  # fmt: skip
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
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

# The resume table (README "Resuming"): every field is in exactly one group.
# May change, results stay bit-exact: how long it runs, where, and how it is watched.
RESUME_FREE = (
    "max_steps", "device", "threads", "eval_every", "eval_batches",
    "checkpoint_every", "keep_last", "patience", "sample_length", "log_every", "max_nonfinite",
)  # fmt: skip
# May change, but the run is no longer bit-identical to an uninterrupted one.
RESUME_ENDS_EXACTNESS = (
    "max_minutes", "lr", "lr_schedule", "warmup_steps", "min_lr_frac", "decay_steps", "lr_decay",
    "lr_decay_after", "grad_clip", "grad_clip_mode", "weight_decay", "backend",
)  # fmt: skip
# May not change: they define the model, its data or its optimizer state.
RESUME_FIXED = (
    "cell", "hidden_size", "num_layers", "embedding_size", "dropout", "tie_weights",
    "byte_level", "errors", "val_frac", "test_frac", "batch_size", "seq_len", "optimizer", "seed",
)  # fmt: skip
# Locations: --input finds a moved training file (its content must match); the run directory is
# always the one given to --resume.
RESUME_LOCATIONS = ("input", "out_dir")


def resumed_config(saved: TrainConfig, changes: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """``saved`` with ``changes`` applied; returns it and one note per applied change.

    A field in RESUME_FIXED whose value differs raises ConfigError naming it (typing the value a
    run already has is fine); ``out_dir`` is ignored (a resume writes into its run directory).
    """
    known = {f.name for f in fields(TrainConfig)}
    values, notes = saved.to_dict(), []
    for name, value in changes.items():
        if name not in known:
            raise ConfigError(name, "a TrainConfig field", "an unknown name")
        if name == "out_dir" or value == values[name]:
            continue
        if name in RESUME_FIXED:
            raise ConfigError(
                name, f"{values[name]!r} as the run was trained (it cannot change on resume)", value
            )
        if name in RESUME_ENDS_EXACTNESS:
            notes.append(f"{name}: {values[name]!r} -> {value!r} (resume no longer bit-exact)")
        elif name != "input":
            notes.append(f"{name}: {values[name]!r} -> {value!r}")
        if name == "max_steps" and not values["decay_steps"] and "decay_steps" not in changes:
            # The cosine's horizon defaults to max_steps: keep the one the run started with, so a
            # longer (or shorter) run continues the very schedule it was on (bit-exact).
            values["decay_steps"] = values["max_steps"]
            notes.append(f"decay_steps: the cosine keeps its horizon of {values['max_steps']} "
                         f"steps (--decay-steps changes it)")  # fmt: skip
        values[name] = value
    return TrainConfig(**values), notes
