"""Checkpoint directories: atomic save, verified load, retention, and exact state flattening.

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

import errno
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "flatten_state",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_header",
    "read_safetensors",
    "resolve_checkpoint",
    "save_checkpoint",
    "unflatten_state",
]

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


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or not in a format rnnlab reads."""


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
# flatten_state / unflatten_state: nested Python state <-> (tensors, JSON tree)
#
# The tree is JSON in which every object is a tagged node with exactly one "$" key, so nothing
# is ambiguous: None, bool, int, str and finite float are JSON scalars; a list is a JSON array;
#   {"$float": "nan" | "inf" | "-inf"}          non-finite float
#   {"$tuple": [...]}                           tuple (random.getstate() needs real tuples)
#   {"$dict": {"k": node, ...}}                 dict whose keys are all str
#   {"$pairs": [[key, node], ...]}              dict with int keys (optimizer state), order kept
#   {"$tensor": "name"}                         torch.Tensor stored as tensors["name"]
#   {"$ndarray": {"tensor": "name", "dtype": "<u4"}}   numpy array, comes back as numpy array
#   {"$numpy": {"dtype": "int64", "value": node}}      numpy scalar, comes back as numpy scalar
# ---------------------------------------------------------------------------------------------


def flatten_state(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """Split nested state into safetensors-able tensors and a JSON-able tree.

    Accepts dict (str or int keys; subclasses such as OrderedDict come back as dict), list,
    tuple, None, bool, int, float (nan/inf included), str, torch.Tensor, numpy arrays and numpy
    scalars, nested arbitrarily: optimizer and scheduler state_dicts, ``torch.get_rng_state()``,
    ``random.getstate()``, ``np.random.get_state()``, ``Generator.bit_generator.state``, carried
    hidden states. ``unflatten_state(*flatten_state(x))`` equals ``x`` with the same types, key
    types, key order, tensor dtypes and shapes (0-dim included) and bit-identical values. Tensors
    come back as plain (non-Parameter) tensors; one tensor object reached twice comes back as one.
    Named tuples, sets, bytes and other types raise TypeError naming the path; so does saving a
    dtype safetensors lacks (complex128).
    """
    tensors: dict[str, Tensor] = {}
    names_by_id: dict[int, str] = {}

    def tensor_name(path: list[str]) -> str:
        base = ".".join(path) or "tensor"
        name, n = base, 1
        while name in tensors:  # e.g. keys 0 and "0" in one dict
            name, n = f"{base}~{n}", n + 1
        return name

    def walk(x: Any, path: list[str]) -> Any:
        if x is None or type(x) in (bool, str, int):
            return x
        if type(x) is float:
            return x if math.isfinite(x) else {"$float": repr(x)}
        if isinstance(x, np.generic):
            if x.dtype.kind not in "biuf" or x.dtype.itemsize > 8:
                raise TypeError(f"state at {_where(path)}: unsupported numpy scalar {x.dtype}")
            return {"$numpy": {"dtype": x.dtype.str, "value": walk(x.item(), path)}}
        if isinstance(x, Tensor):
            if id(x) not in names_by_id:
                names_by_id[id(x)] = tensor_name(path)
                tensors[names_by_id[id(x)]] = x
            return {"$tensor": names_by_id[id(x)]}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biufc":
                raise TypeError(f"state at {_where(path)}: unsupported numpy dtype {x.dtype}")
            name = tensor_name(path)
            native = x.astype(x.dtype.newbyteorder("="), copy=True)  # own, contiguous copy
            tensors[name] = torch.from_numpy(native)
            return {"$ndarray": {"tensor": name, "dtype": x.dtype.str}}
        if isinstance(x, dict):
            if all(type(k) is str for k in x):
                return {"$dict": {k: walk(v, [*path, k]) for k, v in x.items()}}
            for k in x:
                if type(k) not in (str, int):
                    raise TypeError(f"state at {_where(path)}: key {k!r} is not a str or int")
            return {"$pairs": [[k, walk(v, [*path, str(k)])] for k, v in x.items()]}
        if type(x) is list:
            return [walk(v, [*path, str(i)]) for i, v in enumerate(x)]
        if type(x) is tuple:
            return {"$tuple": [walk(v, [*path, str(i)]) for i, v in enumerate(x)]}
        raise TypeError(f"state at {_where(path)}: cannot store {type(x).__name__}")

    tree = walk(obj, [])
    return tensors, tree


def unflatten_state(tensors: dict[str, Tensor], tree: Any) -> Any:
    """Rebuild what :func:`flatten_state` split; raises CheckpointError on a malformed tree."""

    def tensor(name: Any, path: list[str]) -> Tensor:
        if type(name) is not str or name not in tensors:
            raise CheckpointError(f"state at {_where(path)}: no tensor named {name!r}")
        return tensors[name]

    def walk(x: Any, path: list[str]) -> Any:
        if x is None or type(x) in (bool, str, int, float):
            return x
        if type(x) is list:
            return [walk(v, [*path, str(i)]) for i, v in enumerate(x)]
        if type(x) is not dict or len(x) != 1:
            raise CheckpointError(f"state at {_where(path)}: malformed node {str(x)[:80]}")
        ((tag, v),) = x.items()
        if tag == "$float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag == "$tuple" and type(v) is list:
            return tuple(walk(e, [*path, str(i)]) for i, e in enumerate(v))
        if tag == "$dict" and type(v) is dict:
            return {k: walk(e, [*path, k]) for k, e in v.items()}
        if tag == "$pairs" and type(v) is list:
            if not all(type(p) is list and len(p) == 2 and type(p[0]) in (str, int) for p in v):
                raise CheckpointError(f"state at {_where(path)}: malformed $pairs")
            return {k: walk(e, [*path, str(k)]) for k, e in v}
        if tag == "$tensor":
            return tensor(v, path)  # the same object each time: shared tensors stay shared
        if tag == "$ndarray" and type(v) is dict and v.keys() == {"tensor", "dtype"}:
            t = tensor(v["tensor"], path).cpu()
            return t.numpy().astype(_np_dtype(v["dtype"], path), copy=True)
        if tag == "$numpy" and type(v) is dict and v.keys() == {"dtype", "value"}:
            return _np_dtype(v["dtype"], path).type(walk(v["value"], path))
        raise CheckpointError(f"state at {_where(path)}: unknown node {tag!r}")

    return walk(tree, [])


def _where(path: list[str]) -> str:
    return repr(".".join(path)) if path else "the top level"


def _np_dtype(s: Any, path: list[str]) -> np.dtype:
    try:
        dtype = np.dtype(s) if type(s) is str else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biufc":
        raise CheckpointError(f"state at {_where(path)}: bad numpy dtype {s!r}")
    return dtype


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


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory; NTFS renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; nothing more to do there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


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
        _fsync_dir(tmp)
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
        _fsync_dir(tmp)
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
    _fsync_dir(final.parent)
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


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_json_bytes(data: bytes, file: Path) -> Any:
    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"checkpoint {file}: not valid JSON ({e})") from None


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


def read_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, reading only its first ``8 + n`` bytes, with the
    framing checked: header length within the file and the limit, every tensor's byte range
    inside the body, and the body exactly as long as the tensors (so a file that is mostly
    garbage is refused before anything else of it is read)."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"checkpoint {file}: truncated ({len(head)} bytes); not safetensors"
                )
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"checkpoint {file}: header length {n} exceeds the {MAX_HEADER_BYTES} byte "
                    "limit; not a safetensors file"
                )
            if 8 + n > size:
                raise CheckpointError(
                    f"checkpoint {file}: header length {n} exceeds the file size {size}; "
                    "truncated or not a safetensors file"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"checkpoint {file}: cannot read ({e.strerror})") from None
    header = _read_json_bytes(raw, file)
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {file}: safetensors header is not a JSON object")
    body, end = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise CheckpointError(f"checkpoint {file}: tensor {name!r} lies outside the file")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"checkpoint {file}: tensor {name!r} has a malformed shape")
        if not isinstance(info.get("dtype"), str):
            raise CheckpointError(f"checkpoint {file}: tensor {name!r} has no dtype")
        end = max(end, offsets[1])
    if end != body:
        raise CheckpointError(
            f"checkpoint {file}: {body - end} bytes beyond the last tensor; not a file rnnlab wrote"
        )
    return header


def _check_header(data: bytes, file: Path) -> None:
    """Validate in-memory safetensors framing before the parser sees it."""
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {file}: truncated ({len(data)} bytes); not safetensors")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"checkpoint {file}: header length {n} exceeds the {MAX_HEADER_BYTES} byte limit; "
            "not a safetensors file"
        )
    if 8 + n > len(data):
        raise CheckpointError(
            f"checkpoint {file}: header length {n} exceeds the file size {len(data)}; "
            "truncated or not a safetensors file"
        )
    header = _read_json_bytes(data[8 : 8 + n], file)
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {file}: safetensors header is not a JSON object")
    body = len(data) - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= body
        ):
            raise CheckpointError(f"checkpoint {file}: tensor {name!r} lies outside the file")


def _parse_safetensors(data: bytes, file: Path) -> dict[str, Tensor]:
    _check_header(data, file)
    try:
        return safetensors.torch.load(data)
    except Exception as e:  # the parser's own checks (dtype, shape vs. byte count, overlaps)
        raise CheckpointError(f"checkpoint {file}: invalid safetensors file ({e})") from None


def read_safetensors(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Read one safetensors file safely (header checked first; never unpickles)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read ({e.strerror})") from None
    return {k: v.to(map_location) for k, v in _parse_safetensors(data, path).items()}


def _sha256_file(file: Path) -> str:
    """Streamed: memory stays at one buffer whatever the file's size."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_file(file: Path, entry: dict[str, Any], limit: int | None = None) -> None:
    """Regular file, size as the manifest says (and within ``limit``)."""
    if not file.is_file() or file.is_symlink() and not file.resolve().is_file():
        raise CheckpointError(f"checkpoint {file}: missing or not a regular file")
    size = file.stat().st_size
    if size != entry["size"]:
        raise CheckpointError(
            f"checkpoint {file}: size {size} != {entry['size']} in the manifest; "
            "the file is truncated or corrupted, resume from an earlier step"
        )
    if limit is not None and size > limit:
        raise CheckpointError(f"checkpoint {file}: {size} bytes, over the {limit} byte limit")


def _verify_sha(file: Path, entry: dict[str, Any], data: bytes | None = None) -> None:
    digest = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(file)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"checkpoint {file}: checksum mismatch; the file is corrupted, "
            "resume from an earlier step"
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    required_config_keys: Collection[str] | None = None,
    validate: Callable[[dict[str, Any], dict[str, dict[str, Any]]], None] | None = None,
) -> Checkpoint:
    """Load and verify a checkpoint directory (use :func:`resolve_checkpoint` for run dirs).

    Order, cheapest first, so damaged or hostile files are refused before they cost memory:
    the manifest; each JSON file (size, sha256, at most MAX_JSON_BYTES, strict JSON objects);
    each safetensors header (framing, offsets, body length; see :func:`read_header`); then
    ``validate(json_parts, headers)`` (file name -> parsed JSON / header, aliases under
    ``"__aliases__"``), where a caller checks the config against the tensors' shapes and dtypes
    before anything is built; then each tensor file's sha256, streamed; then the tensors, read
    through a memory map. With ``required_config_keys``, a config.json missing one raises and
    extra keys are kept with a warning. Every problem is a CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    manifest = _read_manifest(path)
    files = manifest["files"]
    json_parts: dict[str, Any] = {}
    for name in (CONFIG, VOCAB, TRAINER):
        file = path / name
        _check_file(file, files[name], MAX_JSON_BYTES)
        try:
            data = file.read_bytes()
        except OSError as e:
            raise CheckpointError(f"checkpoint {file}: cannot read ({e.strerror})") from None
        _verify_sha(file, files[name], data)
        json_parts[name] = _read_json_bytes(data, file)
        if not isinstance(json_parts[name], dict):
            raise CheckpointError(f"checkpoint {file}: not a JSON object")
    headers: dict[str, dict[str, Any]] = {}
    for name in (MODEL, TRAINER_TENSORS):
        _check_file(path / name, files[name])
        headers[name] = read_header(path / name)
        for alias, target in manifest["aliases"].get(name, {}).items():
            if target not in headers[name] or target == "__metadata__" or alias in headers[name]:
                raise CheckpointError(f"checkpoint {path / name}: bad alias {alias!r}")
        headers[name]["__aliases__"] = dict(manifest["aliases"].get(name, {}))
    config = json_parts[CONFIG]
    if required_config_keys is not None:
        missing = [k for k in required_config_keys if k not in config]
        if missing:
            raise CheckpointError(
                f"checkpoint {path / CONFIG}: missing required key(s) {', '.join(missing)}"
            )
        extra = [k for k in config if k not in set(required_config_keys)]
        if extra:
            warnings.warn(
                f"checkpoint {path / CONFIG}: unknown key(s) {', '.join(extra)} kept",
                stacklevel=2,
            )
    if validate is not None:
        validate(json_parts, headers)
    tensors = {}
    for name in (MODEL, TRAINER_TENSORS):
        file = path / name
        _verify_sha(file, files[name])
        try:
            loaded = safetensors.torch.load_file(file)  # a memory map, not a read of the file
        except Exception as e:  # the parser's own checks (dtype, shape vs. byte count, overlaps)
            raise CheckpointError(f"checkpoint {file}: invalid safetensors file ({e})") from None
        moved = {k: v.to(map_location) for k, v in loaded.items()}
        for alias, target in manifest["aliases"].get(name, {}).items():
            moved[alias] = moved[target]  # the same object: tied weights stay tied
        tensors[name] = moved
    return Checkpoint(
        path=path,
        step=manifest["step"],
        model=tensors[MODEL],
        config=config,
        vocab=json_parts[VOCAB],
        trainer_tensors=tensors[TRAINER_TENSORS],
        trainer=json_parts[TRAINER],
    )
