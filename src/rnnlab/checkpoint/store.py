"""Checkpoint directories on disk: layout, atomic save, retention and discovery.

A checkpoint is data, never code (DESIGN.md decision 6). Nothing here unpickles: tensors are read
with safetensors from bytes whose header we check first, everything else is strict JSON.

    run_dir/
      step-40/                 one complete checkpoint per saved step
        config.json            the model/run config, as given
        model.safetensors      model tensors; tied (aliased) tensors stored once
        vocab.json
        trainer.safetensors    optimizer moments, RNG byte tensors, carried hidden state, ...
        trainer.json           the JSON half of the trainer state (see flatten_state)
        manifest.json          format_version, step, sha256 + size of the five files above,
                               tensor aliases; written last, so it marks the directory complete
      best/                    a copy of the best step, replaced atomically
      .tmp-*                   work in progress or leftovers of a killed save; never loaded

A save writes every file into ``run_dir/.tmp-step-N-PID`` (beside the target, not in $TMPDIR, so
the rename stays on one file system), fsyncs each file and the directory, renames it to ``step-N``
and fsyncs ``run_dir``. A crash at any moment leaves either the old set of complete checkpoints or
the new one. One process writes a run directory at a time (rank 0 under DDP).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from rnnlab import strictjson
from rnnlab.checkpoint.state import CheckpointError
from rnnlab.io import fsync_dir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CONFIG, MODEL, VOCAB = "config.json", "model.safetensors", "vocab.json"
TRAINER_TENSORS, TRAINER = "trainer.safetensors", "trainer.json"
_FILES = (CONFIG, MODEL, VOCAB, TRAINER_TENSORS, TRAINER)
_MANIFEST_KEYS = ("format_version", "step", "files", "aliases")
_TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"step-(\d+)")
# A safetensors file starts with an 8-byte little-endian header length, then a JSON header.
# safetensors itself caps the header at 100 MB; we check first so garbage gives our error.
MAX_HEADER_BYTES = 100_000_000
# config/vocab/trainer JSON: a vocabulary of every Unicode code point is about 10 MB.
MAX_JSON_BYTES = 64_000_000


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint directory."""

    path: Path
    step: int
    model: dict[str, Tensor]
    config: dict[str, Any]
    vocab: dict[str, Any]
    trainer_tensors: dict[str, Tensor]
    trainer: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    *,
    model: dict[str, Tensor],
    config: dict[str, Any],
    vocab: dict[str, Any],
    trainer_tensors: dict[str, Tensor] | None = None,
    trainer: dict[str, Any] | None = None,
    keep_last: int | None = 3,
    is_best: bool = False,
) -> Path:
    """Atomically write ``run_dir/step-{step}/`` and return its path.

    ``model`` and ``trainer_tensors`` are name -> tensor dicts (a state_dict; the output of
    :func:`flatten_state`); tensors are detached, moved to CPU and made contiguous, and tensors
    that are the same view of one storage (tied weights) are stored once and come back as one
    object. ``config``, ``vocab`` and ``trainer`` must be strict JSON: str keys (int keys would
    silently turn into str, so they raise; use flatten_state), finite floats; tuples come back
    as lists. A model tensor holding NaN/inf raises CheckpointError before anything is written.
    If ``step-{step}`` exists it is replaced. ``is_best`` also replaces ``run_dir/best/``. After
    the new checkpoint is complete, ``step-*`` directories older than the newest ``keep_last``
    complete ones are deleted (``None`` keeps all; ``best/`` is never deleted).
    """
    if type(step) is not int or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep_last is not None and (type(keep_last) is not int or keep_last < 1):
        raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
    run_dir = Path(run_dir)
    final = run_dir / f"step-{step}"
    for name, t in _check_tensors(model, "model").items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"checkpoint {final}: refusing to save, model tensor {name!r} contains NaN or "
                "inf; the previous checkpoints are untouched"
            )
    trainer = {} if trainer is None else trainer
    model_bytes, model_aliases = _safetensors_bytes(model)
    trainer_bytes, trainer_aliases = _safetensors_bytes(
        _check_tensors(trainer_tensors or {}, "trainer_tensors")
    )
    contents = {
        CONFIG: _json_bytes(config, "config"),
        MODEL: model_bytes,
        VOCAB: _json_bytes(vocab, "vocab"),
        TRAINER_TENSORS: trainer_bytes,
        TRAINER: _json_bytes(trainer, "trainer"),
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in contents.items()
        },
        "aliases": {MODEL: model_aliases, TRAINER_TENSORS: trainer_aliases},
    }
    contents[MANIFEST] = _json_bytes(manifest, "manifest")  # last: the completion marker

    run_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(run_dir)
    tmp = run_dir / f"{_TMP_PREFIX}step-{step}-{os.getpid()}"
    _write_dir(tmp, contents)
    _replace_dir(tmp, final)
    if is_best:
        tmp_best = run_dir / f"{_TMP_PREFIX}best-{os.getpid()}"
        _copy_dir(final, tmp_best)
        _replace_dir(tmp_best, run_dir / "best")
    if keep_last is not None:
        _apply_retention(run_dir, keep_last, final)
    return final


def _check_tensors(tensors: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(tensors, dict):
        raise TypeError(f"{what} must be a dict of str -> Tensor, got {type(tensors).__name__}")
    for k, v in tensors.items():
        if type(k) is not str or not isinstance(v, Tensor):
            raise TypeError(f"{what} must map str -> Tensor; entry {k!r} is {type(v).__name__}")
    return tensors


def _safetensors_bytes(tensors: dict[str, Tensor]) -> tuple[bytes, dict[str, str]]:
    """Serialize tensors, storing identical views of one storage once: (bytes, alias -> name)."""
    unique: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        t = t.detach()
        if t.numel() > 0:  # empty tensors may all report data_ptr 0
            view = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if view in by_view:
                aliases[name] = by_view[view]
                continue
            by_view[view] = name
        c = t.resolve_conj().resolve_neg().to("cpu").contiguous()
        storage = c.untyped_storage()
        whole = c.storage_offset() == 0 and storage.nbytes() == c.numel() * c.element_size()
        if c.numel() > 0 and (not whole or storage.data_ptr() in storages):
            c = c.clone()  # a slice or another view of a stored storage: own its bytes
        storages.add(c.untyped_storage().data_ptr())
        unique[name] = c
    try:
        return safetensors.torch.save(unique), aliases
    except KeyError as e:  # safetensors has no code for this dtype (e.g. torch.complex128)
        raise TypeError(f"safetensors cannot store tensors of dtype {e.args[0]}") from None


def _json_bytes(obj: Any, what: str) -> bytes:
    if not isinstance(obj, dict):
        raise TypeError(f"{what} must be a dict, got {type(obj).__name__}")
    _check_json(obj, [what])
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("ascii")


def _check_json(x: Any, path: list[str]) -> None:
    if x is None or type(x) in (bool, int, str):
        return
    if type(x) is float:
        if not math.isfinite(x):
            raise ValueError(f"{'.'.join(path)} is {x}; JSON has no NaN/inf (use flatten_state)")
    elif isinstance(x, dict):
        for k, v in x.items():
            if type(k) is not str:
                raise TypeError(
                    f"{'.'.join(path)} has key {k!r}: JSON keys must be str (use flatten_state)"
                )
            _check_json(v, [*path, k])
    elif type(x) in (list, tuple):
        for i, v in enumerate(x):
            _check_json(v, [*path, str(i)])
    else:
        raise TypeError(f"{'.'.join(path)} is a {type(x).__name__}, not JSON (use flatten_state)")


def _write_dir(tmp: Path, contents: dict[str, bytes]) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, data in contents.items():  # dict order: manifest.json last
            with open(tmp / name, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_dir(src: Path, tmp: Path) -> None:
    """Copy a checkpoint directory; hard links where possible (files are never rewritten)."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name in (*_FILES, MANIFEST):
            try:
                os.link(src / name, tmp / name)
            except OSError:
                shutil.copyfile(src / name, tmp / name)
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename a complete temp directory to ``final``, replacing an existing one."""
    old = None
    if final.exists():
        # POSIX cannot rename over a non-empty directory: move the old one aside first. A crash
        # in between leaves final missing for a moment; loading then falls back to older steps.
        old = final.with_name(f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name.startswith(_TMP_PREFIX):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _apply_retention(run_dir: Path, keep_last: int, new: Path) -> None:
    steps = _step_dirs(run_dir)
    complete = [p for _, p in steps if (p / MANIFEST).is_file()]
    keep = {new, *complete[-keep_last:]}
    new_step = _step_of(new)
    for n, p in steps:
        # Drop complete ones beyond the newest keep_last, and incomplete ones older than `new`.
        if p not in keep and (p in complete or n < new_step):
            doomed = p.with_name(f"{_TMP_PREFIX}del-{p.name}-{os.getpid()}")
            os.rename(p, doomed)  # atomic: a step dir is either whole or gone
            shutil.rmtree(doomed, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------


def _step_of(path: Path) -> int:
    m = _STEP_DIR.fullmatch(path.name)
    return int(m.group(1)) if m else -1


def _step_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """All ``step-N`` directories, sorted by integer N (never by name or mtime)."""
    if not run_dir.is_dir():
        return []
    found = [(_step_of(p), p) for p in run_dir.iterdir() if p.is_dir()]
    return sorted((n, p) for n, p in found if n >= 0)


def _problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (cheap: manifest and file sizes), or None."""
    try:
        manifest = _read_manifest(path)
        for name, entry in manifest["files"].items():
            size = (path / name).stat().st_size if (path / name).is_file() else None
            if size != entry["size"]:
                return f"checkpoint {path / name}: missing or not the size the manifest records"
    except CheckpointError as e:
        return str(e)
    return None


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Complete ``step-N`` checkpoints in ``run_dir``, sorted by step (oldest first)."""
    return [p for _, p in _step_dirs(Path(run_dir)) if _problem(p) is None]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The complete ``step-N`` checkpoint with the largest N, or None.

    A newer directory without a valid manifest (or with a missing/short file) is skipped with
    a warning. Checksums are verified by :func:`load_checkpoint`, not here.
    """
    for _, p in reversed(_step_dirs(Path(run_dir))):
        problem = _problem(p)
        if problem is None:
            return p
        warnings.warn(f"skipping incomplete or damaged {problem}", stacklevel=2)
    return None


def resolve_checkpoint(path: str | os.PathLike[str], which: str = "latest") -> Path:
    """Turn a checkpoint directory or a run directory into a checkpoint directory.

    A directory holding ``manifest.json`` (or named ``step-N``/``best``) is returned as is; for
    a run directory ``which`` picks ``"latest"`` or ``"best"``.
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    if (path / MANIFEST).exists() or _step_of(path) >= 0 or path.name == "best":
        problem = _problem(path)
        if problem is not None:
            raise CheckpointError(problem)
        return path
    if which == "best":
        best = path / "best"
        if not best.is_dir():
            raise CheckpointError(f"run directory {path}: no best/ checkpoint")
        return resolve_checkpoint(best)
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"run directory {path}: no complete step-N checkpoint found")
    return latest


def parse_json(data: bytes | str, source: str, *, nonfinite: bool = False) -> Any:
    """``rnnlab.strictjson.parse_json`` with its refusals as CheckpointErrors: the one reader of
    every JSON file in a run directory."""
    return strictjson.parse_json(data, source, nonfinite=nonfinite, error=CheckpointError)


def _read_json_bytes(data: bytes, file: Path) -> Any:
    return parse_json(data, f"checkpoint {file}")


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError(
            f"checkpoint {path}: incomplete checkpoint (no {MANIFEST}); the save did not finish"
        )
    m = _read_json_bytes(file.read_bytes(), file)
    if not isinstance(m, dict):
        raise CheckpointError(f"checkpoint {file}: not a JSON object")
    for key in _MANIFEST_KEYS:
        if key not in m:
            raise CheckpointError(f"checkpoint {file}: missing required key {key!r}")
    if m["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {file}: unknown format_version {m['format_version']!r} "
            f"(this rnnlab reads {FORMAT_VERSION}); upgrade rnnlab"
        )
    if type(m["step"]) is not int or m["step"] < 0:
        raise CheckpointError(f"checkpoint {file}: step must be a non-negative int")
    if _step_of(path) >= 0 and _step_of(path) != m["step"]:
        raise CheckpointError(f"checkpoint {file}: records step {m['step']}, not {path.name}")
    files = m["files"]
    if not isinstance(files, dict) or set(files) != set(_FILES):
        raise CheckpointError(f"checkpoint {file}: 'files' must list exactly {', '.join(_FILES)}")
    for name, entry in files.items():
        if not (
            isinstance(entry, dict)
            and type(entry.get("size")) is int
            and isinstance(entry.get("sha256"), str)
        ):
            raise CheckpointError(f"checkpoint {file}: bad entry for {name}")
    aliases = m["aliases"]
    if not (
        isinstance(aliases, dict)
        and set(aliases) <= {MODEL, TRAINER_TENSORS}
        and all(
            isinstance(a, dict) and all(type(v) is str for v in a.values())
            for a in aliases.values()
        )
    ):
        raise CheckpointError(f"checkpoint {file}: malformed 'aliases'")
    return m
