"""The settings every task's run shares (RunConfig), declared once, and the resume rules.

A task's config subclasses ``RunConfig`` and adds its own fields (data, model, evaluation size);
where a task tunes a shared setting's default (its learning rate, its evaluation cadence) it says
so with ``@retune(lr=2e-3)``, which keeps the shared help, range and resume rule. So every
task's train command has the same flags with the same help, and every task's resume follows one
table, generated from the fields' ``resume`` metadata (``resume_table``):

| rule       | meaning on ``--resume``                                                         |
|------------|---------------------------------------------------------------------------------|
| free       | may change; results stay bit-exact (how long, where, how watched)               |
| inexact    | may change; the run is then no longer bit-identical to an uninterrupted one     |
| fixed      | may not change: it defines the model, its data or its optimizer state           |
| location   | where files are (a moved input, the run directory); never compared              |
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from rnnlab.validation import ConfigError, setting, validate

Cell = Literal[
    "rnn", "lstm", "gru", "mut1", "mut2", "mut3", "indrnn", "layernorm_lstm", "layernorm_gru"
]
Optimizer = Literal["adam", "adamw", "rmsprop", "adagrad", "sgd"]
Schedule = Literal["cosine", "step", "constant"]
Backend = Literal["auto", "reference", "native", "fused"]
BIG = 10**12  # "practically unbounded" for step counts
MAX_WIDTH = 16384  # hidden/embedding sizes: a 16384-wide LSTM layer is already 2 GB of weights
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")
C = TypeVar("C", bound="RunConfig")


@dataclass
class RunConfig:
    """How long a run trains, how it optimises, how it is watched and where it runs: the fields
    every task shares. CLI flags are these names in kebab-case."""

    out_dir: str = setting("", "run directory (default runs/<data>-<task or cell>)",
                           resume="location")  # fmt: skip
    max_steps: int = setting(2000, "stop after this many steps", low=1, high=BIG, resume="free")
    max_minutes: float = setting(
        0.0,
        "stop after this wall time, minutes (0: off); the cosine anneals by it; on the command "
        "line without --max-steps it is the only limit",
        low=0,
        high=1e7,
        resume="inexact",
    )
    optimizer: Optimizer = setting("adam", "optimizer")
    lr: float = setting(3e-3, "peak learning rate", low=1e-12, high=100.0, resume="inexact")
    weight_decay: float = setting(0.0, "L2 / decoupled weight decay", low=0, high=10.0,
                                  resume="inexact")  # fmt: skip
    lr_schedule: Schedule = setting("cosine", "learning-rate schedule after warm-up",
                                    resume="inexact")  # fmt: skip
    warmup_steps: int = setting(50, "linear warm-up, steps", low=0, high=BIG, resume="inexact")
    min_lr_frac: float = setting(0.1, "cosine floor, fraction of --lr", low=0, high=1,
                                 resume="inexact")  # fmt: skip
    decay_steps: int = setting(0, "cosine horizon, steps (0: max_steps)", low=0, high=BIG,
                               resume="inexact")  # fmt: skip
    lr_decay: float = setting(0.97, "step schedule: factor per epoch", low=0, high=1,
                              resume="inexact")  # fmt: skip
    lr_decay_after: int = setting(1, "step schedule: first epoch that decays", low=0, high=BIG,
                                  resume="inexact")  # fmt: skip
    grad_clip: float = setting(5.0, "clip gradients at this norm/value (0: off)", low=0,
                               high=1e6, resume="inexact")  # fmt: skip
    grad_clip_mode: Literal["norm", "value"] = setting(
        "norm", "norm: global L2 norm; value: element-wise (char-rnn)", resume="inexact"
    )
    eval_every: int = setting(200, "validate (and checkpoint) every N steps", low=1, high=BIG,
                              resume="free")  # fmt: skip
    checkpoint_every: int = setting(0, "also checkpoint every N steps (0: only at evaluations)",
                                    low=0, high=BIG, resume="free")  # fmt: skip
    keep_last: int = setting(3, "step-N checkpoints kept (best/ is kept as well)", low=1,
                             high=10**6, resume="free")  # fmt: skip
    patience: int = setting(0, "stop after N evaluations without a new best (0: off)", low=0,
                            high=BIG, resume="free")  # fmt: skip
    max_nonfinite: int = setting(5, "abort after N non-finite or diverged steps in a row", low=1,
                                 high=10**6, resume="free")  # fmt: skip
    log_every: int = setting(10, "report progress every N steps", low=1, high=BIG, resume="free")
    seed: int = setting(1337, "seed of every random number generator (init, data order, "
                        "dropout)", low=0, high=2**63 - 1)  # fmt: skip
    device: str = setting("auto", "auto, cpu, mps, cuda or cuda:N", resume="free")
    threads: int = setting(0, "CPU threads for torch (0: torch's default)", low=0, high=4096,
                           resume="free")  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)
        if not DEVICE.fullmatch(self.device):
            raise ConfigError("device", "auto, cpu, mps, cuda or cuda:N", self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def values_for(self, cls: type) -> dict[str, Any]:
        """This config's values of the fields it shares with the dataclass ``cls`` (a model's
        config): how a task builds its model config from its run config."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in self.to_dict().items() if k in names}


def retune(**defaults: Any) -> Callable[[type], type]:
    """A class decorator, placed under ``@dataclass``, giving shared settings a task's own
    defaults while their help, range and resume rule stay the shared ones::

        @dataclass
        @retune(lr=2e-3, eval_every=500)
        class Seq2SeqTrainConfig(RunConfig): ...
    """

    def apply(cls: type) -> type:
        annotations = cls.__dict__.get("__annotations__", {})
        for name, default in defaults.items():
            shared = next((c.__dataclass_fields__[name] for c in cls.__mro__[1:]
                           if name in getattr(c, "__dataclass_fields__", {})), None)  # fmt: skip
            if shared is None:
                raise TypeError(f"retune: {cls.__name__} inherits no setting named {name!r}")
            annotations[name] = shared.type
            setattr(cls, name, dataclasses.field(default=default, metadata=shared.metadata))
        cls.__annotations__ = annotations
        return cls

    return apply


def resume_rule(cls: type, name: str) -> str:
    """The resume rule (free, inexact, fixed, location) of field ``name`` of config ``cls``."""
    return next(f.metadata.get("resume", "fixed") for f in dataclasses.fields(cls)
                if f.name == name)  # fmt: skip


def resume_table(cls: type) -> dict[str, tuple[str, ...]]:
    """Field names of ``cls`` by resume rule: the README's resume table, from the metadata."""
    table: dict[str, list[str]] = {"free": [], "inexact": [], "fixed": [], "location": []}
    for f in dataclasses.fields(cls):
        table[f.metadata.get("resume", "fixed")].append(f.name)
    return {rule: tuple(names) for rule, names in table.items()}


_RULE_WORDS = {
    "free": "may change; results stay bit-exact",
    "inexact": "may change; the run is then no longer bit-identical to an uninterrupted one",
    "fixed": "may not change (they define the model, its data or its optimizer state)",
}


def resume_table_markdown(cls: type) -> str:
    """The resume table of config ``cls`` as a Markdown table of its flags (the docs print it;
    a test holds them to it)."""

    def flag(f: dataclasses.Field) -> str:
        aliases = f.metadata.get("aliases", ())
        return f"`{aliases[0] if aliases else '--' + f.name.replace('_', '-')}`"

    table = resume_table(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    rows = ["| on resume | settings |", "|---|---|"]
    for rule, words in _RULE_WORDS.items():
        rows.append(f"| {words} | {', '.join(flag(by_name[n]) for n in table[rule])} |")
    return "\n".join(rows)


def resumed_config(saved: C, changes: dict[str, Any]) -> tuple[C, list[str]]:
    """``saved`` with ``changes`` applied; returns it and one note per applied change.

    A ``fixed`` field whose value differs raises ConfigError naming it (typing the value a run
    already has is fine); ``out_dir`` is ignored (a resume writes into its run directory).
    """
    cls = type(saved)
    known = {f.name for f in dataclasses.fields(cls)}
    values, notes = saved.to_dict(), []
    for name, value in changes.items():
        if name not in known:
            raise ConfigError(name, f"a {cls.__name__} field", "an unknown name")
        if name == "out_dir" or value == values[name]:
            continue
        rule = resume_rule(cls, name)
        if rule == "fixed":
            raise ConfigError(
                name, f"{values[name]!r} as the run was trained (it cannot change on resume)", value
            )
        if rule == "inexact":
            notes.append(f"{name}: {values[name]!r} -> {value!r} (resume no longer bit-exact)")
        elif rule == "free":
            notes.append(f"{name}: {values[name]!r} -> {value!r}")
        if name == "max_steps" and not values["decay_steps"] and "decay_steps" not in changes:
            # The cosine's horizon defaults to max_steps: keep the one the run started with, so a
            # longer (or shorter) run continues the very schedule it was on (bit-exact).
            values["decay_steps"] = values["max_steps"]
            notes.append(f"decay_steps: the cosine keeps its horizon of {values['max_steps']} "
                         f"steps (--decay-steps changes it)")  # fmt: skip
        values[name] = value
    return cls(**values), notes
