"""The one loader of run directories, for every task: sample, eval, predict, export, cells and
``--resume`` all read a run through ``load_run_of``.

A run directory may come from someone else, be copied half-way or be hand-edited, so everything
is checked before it costs anything, each problem as one line naming the file, the field, what
was expected and what was found:

    config.json        "task" (or, in runs written before it was stored, the shape of "model")
                       says which kind of run it is; "model" is the task's model config (every
                       field typed and bounded), "train" its train config (the validator of its
                       CLI flags), plus the record of the data it trained on
    vocab.json         the task's vocabularies, each valid, sizes equal to the model's
    model.safetensors  header names/shapes/dtypes == those of the model the config describes,
                       built on the meta device (no memory), before the tensors are read
    tensors            finite (a NaN/inf weight is refused, never evaluated or sampled)

A task declares what its runs hold as a ``RunKind`` (in its file under ``rnnlab.tasks``); a
command names the kinds it supports, and a run of another kind is one line saying what it is.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnlab.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from rnnlab.checkpoint import resolve_checkpoint as _resolve
from rnnlab.validation import ConfigError, from_mapping

# Runs written before config.json stored its "task" are told apart by a key of their model config.
_LEGACY_TASKS = {"source_vocab_size": "seq2seq", "num_classes": "classify",
                 "conditioning": "caption", "num_answers": "vqa"}  # fmt: skip
_TITLES = {"char_lm": ("char-LM", "rnnlab train"), "seq2seq": ("seq2seq", "rnnlab seq2seq train"),
           "classify": ("classifier", "rnnlab classify train"),
           "caption": ("captioning", "rnnlab caption train"),
           "vqa": ("VQA", "rnnlab vqa train"),
           "dialog": ("visual dialog", "rnnlab dialog train")}  # fmt: skip
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: far beyond these models, far below an absurd one
_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class RunKind:
    """What one task's run directories hold, for the loader: config.json's "task" (``name``), the
    types of its train and model configs (read with the one validator, or by ``read_model``
    where a model config needs more checks), the model class, ``vocabs(data, source)`` reading
    vocab.json into named vocabularies, and ``sizes(model_config)``, the size each must have."""

    name: str  # char_lm | seq2seq | classify | caption | vqa
    train_config: type
    model_config: type
    build: Callable[[Any], nn.Module]
    vocabs: Callable[[Any, str], dict[str, Any]]
    sizes: Callable[[Any], dict[str, int]]
    read_model: Callable[[Any, str], Any] | None = None  # default: from_mapping(model_config)
    record_key: str = "data"  # config.json's record of the training data ("corpus": char-LM)
    train_required: bool = True  # a run of this kind always stores its train config


@dataclass
class LoadedRun:
    """A verified run: its model (built, loaded, on its device, in eval mode), vocabularies,
    train config, data record and, for a resume, the trainer state."""

    kind: str
    path: Path  # the checkpoint directory
    run_dir: Path  # the run directory holding it
    step: int
    model: Any
    vocabs: dict[str, Any]
    train_config: Any  # None for a model-only char-LM checkpoint
    record: dict[str, Any]  # what the data was (file, sha256)
    trainer_tensors: dict[str, Tensor]
    trainer: dict[str, Any]

    @property
    def vocab(self) -> Any:
        """The one vocabulary of a char-LM, classifier (its text) or captioner."""
        return self.vocabs["vocab"]

    @property
    def source(self) -> Any:
        return self.vocabs["source"]

    @property
    def target(self) -> Any:
        return self.vocabs["target"]

    @property
    def labels(self) -> Any:
        return self.vocabs["labels"]

    @property
    def corpus(self) -> dict[str, Any]:
        """The char-LM's corpus record (source path, sha256)."""
        return self.record


def run_directory(path: str | os.PathLike[str]) -> Path:
    """The run directory of ``path``: itself, or the parent of a ``step-N``/``best`` in it."""
    path = Path(path)
    if (path / "manifest.json").exists() and path.parent != path:
        return path.parent
    return path


def find_checkpoint(path: str | os.PathLike[str], which: str = "best") -> Path:
    """The checkpoint directory for ``path`` (a run or checkpoint directory). ``best`` is the
    best validation step; before any validation it falls back to the latest, and says so."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run directory")
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint: expected best or latest, got {which!r}")
    if which == "best" and not (path / "manifest.json").exists() and not (path / "best").is_dir():
        if latest_checkpoint(path) is not None:
            warnings.warn(f"{path}: no best/ checkpoint yet; using the latest", stacklevel=2)
        which = "latest"
    return _resolve(path, which=which)


def load_run_of(
    kinds: Sequence[RunKind],
    path: str | os.PathLike[str],
    which: str = "best",
    device: torch.device | str = "cpu",
    *,
    supported: Sequence[str] | None = None,
    command: str = "",
    need_trainer: bool = False,
) -> LoadedRun:
    """Load, check and build the run or checkpoint directory ``path`` on ``device``.

    ``kinds`` are the kinds the caller knows (to name what a run is); ``supported`` the names it
    accepts (default: all of ``kinds``). A run of another kind is a CheckpointError saying what
    it is and what ``command`` supports. Every other problem is a CheckpointError or ConfigError
    naming the file and the field (see the module docstring)."""
    directory = find_checkpoint(path, which)
    accepted = list(supported or [k.name for k in kinds])
    parsed: dict[str, Any] = {}

    def validate(parts: dict[str, Any], headers: dict[str, dict[str, Any]]) -> None:
        name = _task_of(parts["config.json"], directory)
        if name not in accepted:
            title, trainer = _TITLES[name]
            wanted = " or ".join(_TITLES[n][0] for n in accepted)
            who = f"{command} supports" if command else "expected"
            raise CheckpointError(f"{directory}: a {title} run (trained by {trainer}); {who} "
                                  f"{wanted} runs")  # fmt: skip
        kind = next(k for k in kinds if k.name == name)
        parsed.update(_check_parts(kind, directory, parts, headers, need_trainer))

    ckpt = load_checkpoint(directory, map_location=device, validate=validate)
    for name, t in ckpt.model.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {directory / 'model.safetensors'}: {name}: expected finite "
                "weights, found NaN or inf (a diverged or damaged model)"
            )
    model = parsed["kind"].build(parsed["model_config"])
    model.load_state_dict(ckpt.model)  # names, shapes and dtypes were checked against the header
    model.to(device).eval()
    return LoadedRun(parsed["kind"].name, directory, run_directory(directory), ckpt.step, model,
                     parsed["vocabs"], parsed["train_config"], parsed["record"],
                     ckpt.trainer_tensors, ckpt.trainer)  # fmt: skip


def _task_of(config: dict[str, Any], directory: Path) -> str:
    """The task a checkpoint's config.json belongs to."""
    source = str(directory / "config.json")
    if "task" in config:
        if not isinstance(config["task"], str) or config["task"] not in _TITLES:
            raise ConfigError("task", f"one of {', '.join(_TITLES)}", config["task"], source)
        return config["task"]
    if not isinstance(config.get("model"), dict):
        raise ConfigError("model", "an object (the model's config)", config.get("model"), source)
    return next((t for key, t in _LEGACY_TASKS.items() if key in config["model"]), "char_lm")


def _check_parts(
    kind: RunKind,
    directory: Path,
    parts: dict[str, Any],
    headers: dict[str, dict[str, Any]],
    need_trainer: bool,
) -> dict[str, Any]:
    source = str(directory / "config.json")
    config = parts["config.json"]
    if not isinstance(config.get("model"), dict):
        raise ConfigError("model", "an object (the model's config)", config.get("model"), source)
    read = kind.read_model or (lambda data, where: from_mapping(kind.model_config, data, where))
    model_config = read(config["model"], f"{source} (model)")
    train_config = None
    if "train" in config or need_trainer or kind.train_required:
        if not isinstance(config.get("train"), dict):
            found = config.get("train", "nothing")
            raise ConfigError("train", "an object (the training config)", found, source)
        train_config = from_mapping(kind.train_config, config["train"], f"{source} (train)",
                                    unknown="ignore")  # fmt: skip
    record = config.get(kind.record_key, {})
    if not isinstance(record, dict) or not all(
        isinstance(record.get(k, ""), str) for k in ("source", "sha256")
    ):
        raise ConfigError(kind.record_key, "an object with source and sha256 strings", record,
                          source)  # fmt: skip
    vocab_file = directory / "vocab.json"
    try:
        vocabs = kind.vocabs(parts["vocab.json"], str(vocab_file))
    except (CheckpointError, ConfigError):
        raise
    except Exception as e:  # a vocabulary's own checks: duplicates, bad kinds, surrogates, ...
        raise CheckpointError(f"checkpoint {vocab_file}: not a valid vocabulary ({e})") from None
    for name, size in kind.sizes(model_config).items():
        if len(vocabs[name]) != size:
            what, found = "tokens" if len(vocabs) == 1 else name, len(vocabs[name])
            raise CheckpointError(f"checkpoint {vocab_file}: {what}: expected {size} (the "
                                  f"model's vocabulary size), found {found}")  # fmt: skip
    _check_tensors_against_config(directory / "model.safetensors", headers,
                                  kind.build, model_config)  # fmt: skip
    return {"kind": kind, "model_config": model_config, "train_config": train_config,
            "vocabs": vocabs, "record": dict(record)}  # fmt: skip


def _check_tensors_against_config(
    file: Path, headers: dict[str, dict[str, Any]], build: Callable[[Any], nn.Module], config: Any
) -> None:
    """The header's tensor names, shapes and dtypes against the model the config describes,
    built on the meta device (shapes only, no memory); more than MAX_PARAMETERS is refused."""
    with torch.device("meta"):
        expected = build(config).state_dict()
    count = sum(t.numel() for t in expected.values())
    if count > MAX_PARAMETERS:
        raise ConfigError("(size)", f"at most {MAX_PARAMETERS:,} parameters", count,
                          str(file.with_name("config.json")))  # fmt: skip
    header = headers["model.safetensors"]
    aliases = header.get("__aliases__", {})
    found = {k: v for k, v in header.items() if k not in ("__metadata__", "__aliases__")}
    names = set(found) | set(aliases)
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing:
        raise CheckpointError(f"checkpoint {file}: {missing[0]}: expected a tensor, found none")
    if extra:
        raise CheckpointError(
            f"checkpoint {file}: {extra[0]}: expected no such tensor in this model, found one"
        )
    for name, t in expected.items():
        info = found[aliases.get(name, name)]
        if list(t.shape) != info["shape"]:
            raise CheckpointError(
                f"checkpoint {file}: {name}: expected shape {list(t.shape)} (from config.json), "
                f"found {info['shape']}"
            )
        want = _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype))
        if info["dtype"] != want:
            raise CheckpointError(
                f"checkpoint {file}: {name}: expected dtype {want}, found {info['dtype']}"
            )
        n = math.prod(info["shape"]) * t.element_size()
        start, end = info["data_offsets"]
        if end - start != n:
            raise CheckpointError(
                f"checkpoint {file}: {name}: expected {n} bytes, found {end - start}"
            )
