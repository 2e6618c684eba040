"""Loading a checkpoint directory: verified, cheapest checks first, never unpickled.

Manifest, JSON files (size, sha256), safetensors headers read on their own, a caller's check of
the config against the tensors' shapes, then streamed checksums, then tensors through a memory
map: damaged or hostile files are refused before they cost memory.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from rnnlab.checkpoint.state import CheckpointError
from rnnlab.checkpoint.store import (
    CONFIG,
    MAX_HEADER_BYTES,
    MAX_JSON_BYTES,
    MODEL,
    TRAINER,
    TRAINER_TENSORS,
    VOCAB,
    Checkpoint,
    _read_json_bytes,
    _read_manifest,
)
from rnnlab.data.text import sha256_file

# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


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
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(file)
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
