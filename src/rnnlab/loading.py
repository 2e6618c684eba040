"""The one loader of char-LM run checkpoints, shared by ``sample``, ``eval`` and ``train --resume``.

A run directory may come from someone else, be copied half-way or be hand-edited, so everything
is checked before it costs anything, each problem as one line naming the file, the field, what
was expected and what was found:

    config.json        schema: "model" (CharLMConfig, every field typed and bounded), "train"
                       (TrainConfig, the same validator as the CLI flags), "corpus"
    vocab.json         a valid Vocab whose size is the model's vocab_size
    model.safetensors  header names/shapes/dtypes == those of the model the config describes,
                       computed on the meta device (no memory), before the tensors are read
    tensors            finite (a NaN/inf weight is refused, never evaluated or sampled)
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rnnlab.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
)
from rnnlab.data import Corpus, DataError, Vocab, cached_corpus, prepare_corpus
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.training.config import MAX_WIDTH, Cell
from rnnlab.validation import ConfigError, from_mapping, setting

MAX_VOCAB = 0x110000 + 256  # every Unicode code point, or bytes
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: far beyond a char-LM, far below an absurd one
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


@dataclass
class _ModelSchema:
    """The bounds of CharLMConfig's fields as read from a run directory."""

    vocab_size: int = setting(1, "vocabulary size", low=1, high=MAX_VOCAB)
    cell: Cell = setting("lstm", "cell")
    hidden_size: int = setting(256, "units per layer", low=1, high=MAX_WIDTH)
    num_layers: int = setting(1, "layers", low=1, high=64)
    embedding_size: int = setting(0, "embedding width", low=0, high=MAX_WIDTH)
    dropout: float = setting(0.0, "dropout", low=0, high=1)
    tie_weights: bool = setting(False, "tied embedding/head")
    backend: Literal["auto", "reference", "native", "fused"] = setting("auto", "backend")


@dataclass
class RunCheckpoint:
    """A verified char-LM checkpoint: its model (built and loaded), vocabulary and configs."""

    path: Path  # the checkpoint directory
    run_dir: Path  # the run directory holding it
    step: int
    model: CharLM
    vocab: Vocab
    train_config: Any  # the run's TrainConfig; None for a model-only checkpoint
    corpus: dict[str, Any]  # {"source": absolute path, "sha256": ...} when recorded
    trainer_tensors: dict[str, Tensor]
    trainer: dict[str, Any]


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
    if which == "best" and not (path / "manifest.json").exists() and not (path / "best").is_dir():
        if latest_checkpoint(path) is not None:
            warnings.warn(f"{path}: no best/ checkpoint yet; using the latest", stacklevel=2)
        which = "latest"
    return resolve_checkpoint(path, which=which)


def load_run_checkpoint(
    path: str | os.PathLike[str],
    which: str = "best",
    device: torch.device | str = "cpu",
    *,
    need_trainer: bool = False,
    train_config_type: type | None = None,
) -> RunCheckpoint:
    """Load, check and build the char-LM of a run or checkpoint directory on ``device``; its
    training config is read as ``train_config_type`` (the char-LM's TrainConfig) when given."""
    directory = find_checkpoint(path, which)
    parsed: dict[str, Any] = {}

    def validate(parts: dict[str, Any], headers: dict[str, dict[str, Any]]) -> None:
        parsed.update(_check_parts(directory, parts, headers, need_trainer, train_config_type))

    ckpt = load_checkpoint(directory, validate=validate)
    for name, t in ckpt.model.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {directory / 'model.safetensors'}: {name}: expected finite "
                "weights, found NaN or inf (a diverged or damaged model)"
            )
    model = CharLM(parsed["model_config"])
    model.load_state_dict(ckpt.model)  # names, shapes and dtypes were checked against the header
    model.to(device).eval()
    return RunCheckpoint(
        path=directory,
        run_dir=run_directory(directory),
        step=ckpt.step,
        model=model,
        vocab=parsed["vocab"],
        train_config=parsed["train_config"],
        corpus=parsed["corpus"],
        trainer_tensors=ckpt.trainer_tensors,
        trainer=ckpt.trainer,
    )


def _check_parts(
    directory: Path,
    parts: dict[str, Any],
    headers: dict[str, dict[str, Any]],
    need_trainer: bool,
    train_config_type: type | None,
) -> dict[str, Any]:
    source = str(directory / "config.json")
    config = parts["config.json"]
    if not isinstance(config.get("model"), dict):
        raise ConfigError("model", "an object (the model's config)", config.get("model"), source)
    model_config = _model_config(config["model"], f"{source} (model)")
    train_config = None
    if train_config_type is not None and ("train" in config or need_trainer):
        if not isinstance(config.get("train"), dict):
            found = config.get("train", "nothing")
            raise ConfigError("train", "an object (the training config)", found, source)
        train_config = from_mapping(
            train_config_type, config["train"], f"{source} (train)", unknown="ignore"
        )
    corpus = config.get("corpus", {})
    if not isinstance(corpus, dict) or not all(
        isinstance(corpus.get(k, ""), str) for k in ("source", "sha256")
    ):
        raise ConfigError("corpus", "an object with source and sha256 strings", corpus, source)
    vocab_file = directory / "vocab.json"
    try:
        vocab = Vocab.from_json(parts["vocab.json"])
    except Exception as e:  # Vocab's own checks: duplicates, bad kinds, surrogates, ...
        raise CheckpointError(f"checkpoint {vocab_file}: not a valid vocabulary ({e})") from None
    if len(vocab) != model_config.vocab_size:
        raise CheckpointError(
            f"checkpoint {vocab_file}: tokens: expected {model_config.vocab_size} (the model's "
            f"vocab_size, rows of its embedding), found {len(vocab)}"
        )
    _check_tensors_against_config(directory / "model.safetensors", headers, model_config)
    return {"model_config": model_config, "train_config": train_config, "vocab": vocab,
            "corpus": dict(corpus)}  # fmt: skip


def _model_config(data: dict[str, Any], source: str) -> CharLMConfig:
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
    G = {"lstm": 4, "gru": 3, "mut1": 3, "mut2": 3, "mut3": 3}.get(config.cell, 1)
    H, E, L, V = config.hidden_size, config.embedding_size, config.num_layers, config.vocab_size
    estimate = V * E + G * H * (E + H) + (L - 1) * G * H * 2 * H + V * H
    if estimate > MAX_PARAMETERS:
        raise ConfigError("(size)", f"at most {MAX_PARAMETERS:,} parameters", estimate, source)
    return config


def _check_tensors_against_config(
    file: Path, headers: dict[str, dict[str, Any]], config: CharLMConfig
) -> None:
    """The header's tensor names, shapes and dtypes against the model the config describes,
    built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        expected = CharLM(config).state_dict()
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


def training_corpus(
    config: Any,  # the run's TrainConfig (input, byte_level, errors, val_frac, test_frac)
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
