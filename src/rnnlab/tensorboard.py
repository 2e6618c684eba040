"""A run's ``metrics.jsonl`` as TensorBoard event files (``rnnlab tensorboard``).

``metrics.jsonl`` stays the source of truth; the export is a view of it, rebuilt whole on every
call. Each record becomes one event at its ``step`` holding a scalar per numeric key::

    train_loss, lr, grad_norm, epoch, nonfinite_skips   ->  train/loss, train/lr, ...
    val_loss, val_bpc, val_wer, ...                      ->  val/loss, val/bpc, val/wer, ...
    chars_per_s (any <unit>_per_s), elapsed_s            ->  speed/chars_per_s, speed/elapsed_s

Strings (``verdict``), booleans, nulls, lists and objects are left out. TensorBoard stores a
scalar as float32. An event's wall time is ``start + elapsed_s``, so TensorBoard's "relative"
axis is the run's training seconds (across resumes); ``start`` defaults to the log's
modification time minus its last ``elapsed_s``, which is when the run would have begun had it
trained without pauses.

The export replaces the previous one as a whole directory::

    RUN/                         the directory holding the export (taken as named)
      .tensorboard.<pid>.<hex>.tmp/events.out.tfevents.<start>.rnnlab   written, fsynced
      tensorboard/  -> renamed to .tensorboard.<pid>.<hex>.old, then removed
      .tensorboard.<pid>.<hex>.tmp  -> renamed to tensorboard/

Every write goes through ``rnnlab.io`` (no link below ``RUN`` is followed); a ``tensorboard``
that is a link, a file, or a directory holding anything but event files is refused, never
replaced. Events are built with tensorboardX's protobuf classes and framed as TFRecords with its
CRC, as its own ``RecordWriter`` does; only the file is opened by us, inside ``RUN``.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import stat
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rnnlab.io import PathLike, UnsafePathError, fsync_dir, open_inside

EXPORT_NAME = "tensorboard"
EVENT_PREFIX = "events.out.tfevents."
INSTALL_HINT = "pip install 'rnnlab[tensorboard]' (or pip install tensorboardX)"


class TensorBoardError(ValueError):
    """No run to export (a missing directory or log), or tensorboardX missing. One line."""


def tag_of(key: str) -> str:
    """The TensorBoard tag of a metrics key: val/..., speed/... or train/..."""
    if key.startswith("val_"):
        return "val/" + key[len("val_") :]
    if key.endswith("_per_s") or key == "elapsed_s":
        return "speed/" + key
    if key.startswith("train_"):
        return "train/" + key[len("train_") :]
    return "train/" + key


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """``{tag: value}`` for every numeric key of a record but ``step`` (NaN and inf kept)."""
    return {
        tag_of(key): float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def export_metrics(
    run_dir: PathLike, out: PathLike | None = None, *, start: float | None = None
) -> Path:
    """Write ``run_dir/metrics.jsonl`` as TensorBoard events into ``out`` (default
    ``run_dir/tensorboard``), replacing a previous export; returns ``out``. ``start`` is the
    wall time of ``elapsed_s == 0`` (default: see the module docstring). Raises TensorBoardError
    (no run directory, no log, no tensorboardX), CheckpointError (a damaged line of the log:
    file and line; a torn last line is dropped with a warning) and UnsafePathError (``out`` is
    a link, a file or a directory that is not an export)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TensorBoardError(f"{run_dir}: no such run directory")
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        raise TensorBoardError(
            f"{log}: no such file (not a run directory, or the run has not logged a step yet)"
        )
    out = Path(out) if out is not None else run_dir / EXPORT_NAME
    if out.name in ("", ".", ".."):
        raise UnsafePathError(f"{out}: expected a directory name to write the export as")
    _require_tensorboardx()

    from rnnlab.training.tools import read_metrics

    records = read_metrics(log, damaged="error")
    if start is None:
        last = max((_elapsed(r) for r in records), default=0.0)
        start = log.stat().st_mtime - last
    _replace_dir(out, f"{EVENT_PREFIX}{int(start)}.rnnlab", _frames(records, start))
    return out


def _elapsed(record: Mapping[str, Any]) -> float:
    value = record.get("elapsed_s")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


def _require_tensorboardx() -> None:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise TensorBoardError(f"rnnlab tensorboard needs tensorboardX: {INSTALL_HINT}") from None


def _frames(records: Iterable[Mapping[str, Any]], start: float) -> Iterable[bytes]:
    """The event file's records: the version event, then one event per metrics record."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c
    from tensorboardX.summary import Summary

    def frame(event: Any) -> bytes:  # TFRecord: length, its masked CRC, data, its masked CRC
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        return b"".join(
            (header, struct.pack("<I", masked_crc32c(header)), data,
             struct.pack("<I", masked_crc32c(data)))
        )  # fmt: skip

    yield frame(event_pb2.Event(wall_time=start, step=0, file_version="brain.Event:2"))
    wall = start
    for record in records:
        if "elapsed_s" in record:  # a record without it keeps the time of the one before
            wall = start + _elapsed(record)
        values = [Summary.Value(tag=t, simple_value=v) for t, v in scalars_of(record).items()]
        if values:
            summary = Summary(value=values)
            yield frame(event_pb2.Event(wall_time=wall, step=record["step"], summary=summary))


def _replace_dir(out: Path, filename: str, frames: Iterable[bytes]) -> None:
    """Write ``out/filename`` from ``frames`` into a temporary sibling of ``out`` and swap it in
    by two renames relative to the parent's descriptor; the previous export is then removed."""
    root, name = out.parent, out.name
    token = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp, old = f".{name}.{token}.tmp", f".{name}.{token}.old"
    root.mkdir(parents=True, exist_ok=True)  # the directory handed over: as the user named it
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check_export(root_fd, name, out)  # refuse before writing anything
        try:
            with open_inside(root, Path(tmp) / filename) as f:
                for chunk in frames:
                    f.write(chunk)
            fsync_dir(root / tmp)
            had_old = _check_export(root_fd, name, out)
            if had_old:
                os.rename(name, old, src_dir_fd=root_fd, dst_dir_fd=root_fd)
            os.rename(tmp, name, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove_export(root_fd, tmp)
            raise
        os.fsync(root_fd)
        if had_old:
            _remove_export(root_fd, old)
    finally:
        os.close(root_fd)


def _check_export(root_fd: int, name: str, shown: Path) -> bool:
    """Whether ``name`` is a previous export (a directory of event files); False when missing.
    A link, a file, or a directory holding anything else is an UnsafePathError."""
    try:
        st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{shown}: is a symbolic link; rnnlab writes the export only inside "
            f"{shown.parent}, never through a link (remove the link or choose another --out)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{shown}: expected a directory, found a file")
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    try:
        for entry in os.listdir(fd):
            mode = os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode
            if not (entry.startswith(EVENT_PREFIX) and stat.S_ISREG(mode)):
                raise UnsafePathError(
                    f"{shown}: holds {entry}, so it is not an export of rnnlab tensorboard; "
                    "not replaced (move it away or choose another --out)"
                )
    finally:
        os.close(fd)
    return True


def _remove_export(root_fd: int, name: str) -> None:
    """Remove directory ``name`` and the files in it, never following a link."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=root_fd)
    try:
        for entry in os.listdir(fd):
            os.unlink(entry, dir_fd=fd)  # a link is removed itself; a directory raises
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=root_fd)
