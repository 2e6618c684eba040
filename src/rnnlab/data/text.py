"""Reading the user's line-based text files, once for every command, and hashing files.

Every input read line by line (pairs and rows files, ``predict --input`` files, stdin) goes
through ``read_lines``, so all of them follow one set of rules:

    bytes --UTF-8--> text --BOM dropped--> split at "\\n" only --"\\r" before it dropped--> lines
                                            (1-based numbers, true in every error)

- Invalid UTF-8 is an ``InvalidUTF8Error`` naming the file, the line and the byte offset.
- A UTF-8 byte-order mark (U+FEFF) at the start is not data; it is dropped once, there only.
- Lines end at ``\\n`` or ``\\r\\n`` and nowhere else. ``str.splitlines`` also breaks at U+0085,
  U+2028, U+2029, form feed, vertical tab, the file/group/record separators and a lone ``\\r``;
  those are legal characters inside a field (a Unicode line separator in a sentence, a form feed
  in text pasted from a document), so splitting there broke valid rows and shifted the line
  number of every later error.

Limits (see ``MAX_FIELD_CHARS``) are checked by ``check_length`` so each reader refuses an
oversized field with its file and line, in one line.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rnnlab.data.errors import DataError, InvalidUTF8Error

MAX_FILE_BYTES = 2**31
"""The largest file read into memory at once (2 GiB): larger is a DataError, not a slow swap."""

MAX_FIELD_CHARS = 10_000
"""The longest field (a pairs/rows field, a ``predict`` input line), in characters.

Why 10,000: memory and time grow linearly with a sequence's length and a batch is padded to its
longest member, so one huge row costs the whole batch. ``seq2seq predict`` of a 1.2-million-
character source used 1.9 GB (about 1.6 KB per character), so 10,000 characters bound one
prediction at about 16 MB. The data these tasks are for sits far below it (CMUdict's longest
word is 28 characters; sentence-level classification rows are a few hundred), while a
10-million-character line, which was accepted, is a mistake (a file without newlines, a binary
file). A longer text is refused with its file and line: split it into several rows.
"""

BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a text file: its text (terminator removed) and its 1-based number."""

    text: str
    number: int


def decode_utf8(data: bytes, name: str) -> str:
    """``data`` as UTF-8 text with a leading byte-order mark dropped.

    Invalid UTF-8 raises ``InvalidUTF8Error`` naming ``name``, the line (counted at ``\\n``, as
    ``split_lines`` counts) and the byte offset of the first bad byte.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InvalidUTF8Error(
            f"{name}:{line}: invalid UTF-8 (byte offset {e.start}); save the file as UTF-8",
            e.start,
        ) from None
    return text[1:] if text.startswith(BOM) else text


def split_lines(text: str, *, keepends: bool = False) -> list[str]:
    """``text`` cut at ``\\n`` and ``\\r\\n`` only; no empty last line for a final newline.

    With ``keepends`` each line keeps its terminator (as a CSV reader needs, so that a quoted
    field may span lines); otherwise the ``\\n`` and one ``\\r`` before it are removed.
    """
    if not text:
        return []
    pieces = text.split("\n")
    last = pieces.pop()  # "" when the text ends with a newline
    if keepends:
        lines = [p + "\n" for p in pieces]
    else:
        lines = [p[:-1] if p.endswith("\r") else p for p in pieces]
    if last:
        lines.append(last)
    return lines


def read_text(source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None,
              max_bytes: int = MAX_FILE_BYTES) -> str:  # fmt: skip
    """The UTF-8 text of a file (a path, or an open binary stream such as stdin's buffer).

    ``name`` is what errors call the file (default: the path; a stream needs it). A missing or
    unreadable file, a directory, anything but a regular file (a device such as /dev/zero, a
    FIFO: they would be read forever or block), more than ``max_bytes`` bytes or invalid UTF-8
    is a DataError.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        try:
            if path.is_dir():
                raise DataError(f"{name}: is a directory, expected a text file")
            if path.exists() and not path.is_file():
                raise DataError(f"{name}: is not a regular file; pass a text file")
            size = path.stat().st_size
            if size > max_bytes:
                raise DataError(f"{name}: {size} bytes, more than the {max_bytes} this reads")
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)  # a file that grows meanwhile is still bounded
            if len(data) > max_bytes:
                raise DataError(f"{name}: more than the {max_bytes} bytes this reads")
        except OSError as e:
            raise DataError(f"{name}: cannot read ({e.strerror})") from None
    else:
        name = name or "<stream>"
        try:
            data = source.read(max_bytes + 1)
        except OSError as e:
            raise DataError(f"{name}: cannot read ({e.strerror})") from None
        if len(data) > max_bytes:
            raise DataError(f"{name}: more than the {max_bytes} bytes this reads")
    return decode_utf8(data, name)


def read_lines(source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None,
               max_bytes: int = MAX_FILE_BYTES) -> list[Line]:  # fmt: skip
    """Every line of a UTF-8 text file with its true 1-based number (see the module docstring).

    Blank lines are kept (callers decide what a blank line means), so ``lines[i].number`` is
    always ``i + 1``.
    """
    text = read_text(source, name=name, max_bytes=max_bytes)
    return [Line(t, i) for i, t in enumerate(split_lines(text), start=1)]


def check_length(text: str, where: str, what: str = "field",
                 limit: int = MAX_FIELD_CHARS) -> str:  # fmt: skip
    """``text`` itself, or a DataError (``where``: file and line) when it is over ``limit``."""
    if len(text) > limit:
        raise DataError(
            f"{where}: {what} of {len(text):,} characters, more than the {limit:,} allowed; "
            "split it into shorter ones"
        )
    return text


def data_sha256(path: str | os.PathLike[str]) -> str:
    """``sha256_file`` of a data file a task trained on, an unreadable one a DataError naming it."""
    try:
        return sha256_file(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk_size`` pieces (memory stays one chunk,
    whatever the file's size). ``OSError`` propagates: each caller names its own failure."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
