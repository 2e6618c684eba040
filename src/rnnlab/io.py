"""Durable writes, written once: a file replaced atomically, a directory's entries fsynced, and
every write into a directory rnnlab was handed kept inside that directory.

``write_atomic`` writes a temporary file beside the target (same file system, so the rename is
atomic; never $TMPDIR), fsyncs it, renames it over the target and fsyncs the directory: after a
crash the path holds the old content or the new, never a mix. Checkpoint directories use the same
two steps for whole directories (``rnnlab.checkpoint.store``).

``write_inside(root, relative, data)`` / ``open_inside`` / ``mkdir_inside`` do the same for a
path under a directory that was handed to rnnlab (a run directory, ``--out``, the corpus cache),
which may come from someone else. ``root`` itself is taken as named (the user chose it, links
and all); below it, every component is opened relative to its parent's descriptor with
``O_NOFOLLOW``, so a symlink anywhere under ``root`` (``RUN/analysis -> /etc``, a planted
``cells.json -> ~/.bashrc``) is refused with UnsafePathError instead of written through, and
``..`` or an absolute name is refused before anything is opened::

    root/                 as handed (may itself be a link)
      analysis/           opened with O_NOFOLLOW | O_DIRECTORY (created if missing)
        .cells.json.*.tmp O_CREAT | O_EXCL | O_NOFOLLOW, written and fsynced
        cells.json        <- renameat(tmp, name): replaces a file, never follows a link

Descriptors, not path strings, carry the walk, so swapping a component for a link between a
check and the write does not redirect it. The target is replaced, not rewritten in place, so a
hard link to a file outside ``root`` keeps its content too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PathLike = str | os.PathLike[str]


class UnsafePathError(ValueError):
    """A write would leave the directory rnnlab was handed: through a symbolic link, ``..`` or an
    absolute name. One line: the path and why."""


def fsync_dir(path: PathLike) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    if os.name != "posix":  # Windows cannot open a directory; NTFS renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync_dir_fd(fd)
    finally:
        os.close(fd)


def _fsync_dir_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; nothing more to do there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise


def write_atomic(path: PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) durably and atomically; a
    symbolic link at ``path`` is refused (``write_inside`` with the parent as root)."""
    path = Path(path)
    write_inside(path.parent, path.name, data)


def write_inside(root: PathLike, relative: PathLike, data: bytes | str) -> Path:
    """Replace ``root/relative`` with ``data`` (str as UTF-8) atomically and durably, creating
    missing directories; returns the path written. Raises UnsafePathError when ``relative`` is
    absolute, holds ``..``, or names a symbolic link (or a non-directory) at any component below
    ``root``; the file is opened without following links and renamed into place."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with open_inside(root, relative) as f:
        f.write(raw)
    return Path(root) / relative


def split_root(path: PathLike, root: PathLike | None = None) -> tuple[Path, Path]:
    """``(root, relative)`` for writing ``path`` under ``root`` (default: ``path``'s own
    directory), for writers that take a path and the directory it must stay in. A ``path`` not
    under ``root`` (compared as written, before links are looked at) is an UnsafePathError."""
    path = Path(path)
    if root is None:
        return path.parent, Path(path.name)
    try:
        return Path(root), path.relative_to(root)
    except ValueError:
        raise UnsafePathError(f"{path}: not inside the output directory {root}") from None


def mkdir_inside(root: PathLike, relative: PathLike) -> Path:
    """Create ``root/relative`` (and missing parents below ``root``) with the checks of
    ``write_inside``; an existing directory is fine, a link or a file in the way is not."""
    os.close(_open_dir(Path(root), _parts(relative, allow_empty=True)))
    return Path(root) / relative


@contextlib.contextmanager
def open_inside(root: PathLike, relative: PathLike) -> Iterator[BinaryIO]:
    """A binary file (read/write/seek, for writers such as h5py and matplotlib) that becomes
    ``root/relative`` when the block ends without an exception: written to a temporary name in
    the same directory, fsynced, renamed over the target. On an exception the target is left as
    it was. The checks are those of ``write_inside``."""
    root = Path(root)
    parts = _parts(relative)
    dir_fd = _open_dir(root, parts[:-1])
    name, shown = parts[-1], root.joinpath(*parts)
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        _check_target(name, dir_fd, shown, root)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags | getattr(os, "O_CLOEXEC", 0), 0o666, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w+b") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            _check_target(name, dir_fd, shown, root)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        _fsync_dir_fd(dir_fd)
    finally:
        os.close(dir_fd)


def _parts(relative: PathLike, allow_empty: bool = False) -> tuple[str, ...]:
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        raise UnsafePathError(f"{relative}: expected a name relative to the output directory")
    parts = rel.parts  # pathlib drops "." and empty components
    if ".." in parts:
        raise UnsafePathError(f"{relative}: '..' would leave the output directory")
    if not parts and not allow_empty:
        raise UnsafePathError(f"{relative!r}: expected a file name")
    return parts


def _link_error(path: Path, root: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{path}: is a symbolic link; rnnlab writes only inside {root}, never through a link "
        "(remove the link or choose another output directory)"
    )


def _open_dir(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of ``root/parts...``, each component below ``root`` created if missing and
    opened with O_NOFOLLOW relative to its parent."""
    root.mkdir(parents=True, exist_ok=True)  # the handed directory itself: as the user named it
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    where = root
    try:
        for name in parts:
            where = where / name
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=fd)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise _link_error(where, root)
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(f"{where}: expected a directory, found a file")
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:  # swapped for a link since the stat (ELOOP, ENOTDIR)
                raise _link_error(where, root) from e
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_target(name: str, dir_fd: int, shown: Path, root: Path) -> None:
    """The target may be missing or a regular file; a link or a directory is refused."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(shown, root)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{shown}: expected a file, found a directory or a device")
