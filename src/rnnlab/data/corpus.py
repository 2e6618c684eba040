"""Corpus: a text file encoded once into a memory-mapped token file, cached by content hash.

``prepare_corpus(path)`` streams the file in binary chunks (never holding the text as one
``str``), so a corpus larger than RAM works:

    pass 0  sha256 of the source bytes                    -> cache key (content + options)
    pass 1  incremental UTF-8 decode, count code points   -> Vocab (+ counts), N tokens
    pass 2  decode again, map to ids, write tokens.bin    -> one flat array, dtype by vocab size

A cache entry is a directory ``<cache>/<key>/``::

    tokens.bin   N token ids, uint8 (V <= 256) / uint16 (V <= 65536) / uint32, native order
    vocab.json   Vocab.to_json()
    meta.json    source path, size, sha256, options, split offsets, dtype, N, CRLF count

built in a temporary sibling directory and renamed into place, so a killed build never leaves a
half-written entry. The splits are contiguous ranges of tokens.bin::

    |<------------ train ------------>|<-- val -->|<-- test -->|
    0                                 a           b            N

The file is read as bytes and decoded with ``codecs.getincrementaldecoder("utf-8")`` (Python's
text mode would turn ``\\r\\n`` into ``\\n``): CRLF, lone CR and NUL reach the model unchanged, and
a multi-byte character split across two chunks decodes correctly.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import itertools
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.data.errors import DataError, InvalidUTF8Error
from rnnlab.data.text import sha256_file
from rnnlab.data.vocab import Vocab, codepoints, describe_chars
from rnnlab.io import fsync_dir, write_atomic

CORPUS_FORMAT = 1
SPLITS = ("train", "val", "test")
ERRORS = ("strict", "replace")
DEFAULT_CHUNK = 1 << 20  # bytes read at a time
PIECE = 1 << 16  # characters (or bytes) processed at a time


def cache_root() -> Path:
    """rnnlab's cache directory: ``$RNNLAB_CACHE``, else ``$XDG_CACHE_HOME/rnnlab``, else
    ``~/.cache/rnnlab``."""
    if os.environ.get("RNNLAB_CACHE"):
        return Path(os.environ["RNNLAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rnnlab"


def check_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it names a readable regular file, else a DataError saying why."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a file; pass a text file")
    if not p.is_file():
        raise DataError(f"{p}: is not a regular file; pass a text file")
    if not os.access(p, os.R_OK):
        raise DataError(f"{p}: permission denied; make the file readable")
    return p


def _iter_bytes(path: Path, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


def iter_text(
    path: str | os.PathLike[str], errors: str = "strict", chunk_size: int = DEFAULT_CHUNK
) -> Iterator[str]:
    """Decoded UTF-8 text of ``path`` in pieces (``chunk_size`` bytes read at a time).

    Invalid UTF-8 with ``errors="strict"`` raises a DataError giving the byte offset of the first
    bad byte; ``errors="replace"`` yields U+FFFD for it instead.
    """
    path = Path(path)
    return _decode(_iter_bytes(path, chunk_size), path, errors)


def _decode(chunks: Iterable[bytes], path: Path, errors: str) -> Iterator[str]:
    if errors not in ERRORS:
        raise DataError(f"errors={errors!r} is not one of {ERRORS}; use strict or replace")
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    pos = 0  # bytes of the file handed to the decoder so far
    for chunk in itertools.chain(chunks, [b""]):
        final = not chunk
        pending = len(decoder.getstate()[0])  # bytes of a split character held back
        try:
            text = decoder.decode(chunk, final=final)
        except UnicodeDecodeError as e:
            # e.object is the held-back bytes followed by this chunk.
            offset = pos - pending + e.start
            raise InvalidUTF8Error(
                f"{path}: invalid UTF-8 at byte offset {offset} ({e.reason}); "
                "use --bytes for a byte-level vocabulary or --errors replace",
                offset,
            ) from None
        pos += len(chunk)
        # Hand out small pieces: per-character numpy temporaries stay a few hundred KB however
        # large chunk_size is (big short-lived arrays make glibc keep tens of MB resident).
        for i in range(0, len(text), PIECE):
            yield text[i : i + PIECE]


def _check_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    fracs = tuple(float(f) for f in split)
    if len(fracs) != 3:
        raise DataError(f"split needs 3 fractions (train, val, test), got {len(fracs)}")
    if any(not math.isfinite(f) or f < 0 for f in fracs):
        raise DataError(f"split fractions must be non-negative, got {fracs}; fix --val-frac")
    if abs(sum(fracs) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {fracs} (sum {sum(fracs):g})")
    return fracs  # type: ignore[return-value]


def split_offsets(n: int, fracs: Sequence[float]) -> dict[str, list[int]]:
    """``{"train": [0, a], "val": [a, b], "test": [b, n]}`` for ``n`` tokens cut by fractions."""
    a = min(n, int(n * fracs[0]))
    b = a if fracs[1] == 0 else n if fracs[2] == 0 else min(n, int(n * (fracs[0] + fracs[1])))
    return {"train": [0, a], "val": [a, b], "test": [b, n]}


def _write_window(path: Path, dtype: np.dtype, start: int, ids: np.ndarray) -> None:
    # A fresh, short-lived mapping per chunk: its pages leave this process when it is dropped,
    # so writing a corpus larger than RAM does not grow the resident set.
    if len(ids):
        window = np.memmap(
            path, dtype=dtype, mode="r+", offset=start * dtype.itemsize, shape=(len(ids),)
        )
        window[:] = ids
        window.flush()
        del window


@dataclass(frozen=True)
class Corpus:
    """An encoded corpus in the cache: ``vocab``, ``meta`` and the token file in ``directory``."""

    directory: Path
    vocab: Vocab
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Corpus:
        """Load a cache entry written by ``prepare_corpus``; a damaged one raises DataError."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{directory}: not a prepared corpus ({e}); prepare it again") from None
        if meta.get("format_version") != CORPUS_FORMAT:
            raise DataError(f"{directory}: unsupported corpus format; prepare it again")
        vocab = Vocab.load(directory / "vocab.json")
        tokens = directory / "tokens.bin"
        size = tokens.stat().st_size if tokens.exists() else -1
        try:
            complete = size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        except (KeyError, TypeError):
            complete = False
        if not complete:
            raise DataError(f"{directory}: tokens.bin is incomplete; prepare the corpus again")
        return cls(directory=directory, vocab=vocab, meta=meta)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def split(self, name: str) -> np.ndarray:
        """Tokens of split ``"train"``, ``"val"`` or ``"test"`` as a fresh read-only memmap.

        Opened anew on every call (nanoGPT#287): drop the array and its pages stop counting
        toward this process's memory. An empty split is an empty (non-mapped) array.
        """
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        start, end = self.meta["splits"][name]
        if end <= start:
            return np.empty(0, dtype=self.dtype)
        return np.memmap(
            self.directory / "tokens.bin",
            dtype=self.dtype,
            mode="r",
            offset=start * self.dtype.itemsize,
            shape=(end - start,),
        )

    def encode_file(
        self,
        path: str | os.PathLike[str],
        *,
        errors: str = "strict",
        chunk_size: int = DEFAULT_CHUNK,
    ) -> np.ndarray:
        """Token ids (vocab dtype) of another file with this vocabulary, e.g. a test set.

        Characters outside the vocabulary raise a DataError listing all of them.
        """
        path = check_file(path)
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty; pass a file with some text")
        if self.vocab.kind == "bytes":
            return np.fromfile(path, dtype=np.uint8)
        pieces, unseen = [], set()
        for text in iter_text(path, errors, chunk_size):
            ids, known = self.vocab.lookup(codepoints(text))
            if not known.all():
                unseen.update(chr(int(c)) for c in np.unique(codepoints(text)[~known]))
            elif not unseen:
                pieces.append(ids.astype(self.dtype))
        if unseen:
            raise DataError(
                f"{path}: {len(unseen)} character(s) not in the training vocabulary: "
                f"{describe_chars(sorted(unseen, key=ord))}; evaluate on text with the same "
                "characters or train on a corpus that contains them"
            )
        return np.concatenate(pieces)


def _scan(path: Path, byte_level: bool, errors: str, chunk_size: int) -> tuple[Vocab, int, int]:
    """Pass 1: (vocab with counts, number of tokens, number of CRLF pairs)."""
    counts = np.zeros(256, dtype=np.int64)
    n = crlf = 0
    last = ""
    if byte_level:
        chunks = (
            c[i : i + PIECE] for c in _iter_bytes(path, chunk_size) for i in range(0, len(c), PIECE)
        )
    else:
        chunks = iter_text(path, errors, chunk_size)
    for chunk in chunks:
        if byte_level:
            values = np.frombuffer(chunk, dtype=np.uint8)
            piece = chunk.decode("latin-1")  # one char per byte, for the CRLF count
        else:
            values, piece = codepoints(chunk), chunk
        binned = np.bincount(values)
        if len(binned) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(binned) - len(counts), np.int64)])
        counts[: len(binned)] += binned
        n += len(values)
        crlf += piece.count("\r\n") + (last == "\r" and piece[0] == "\n")
        last = piece[-1]
    if byte_level:
        return Vocab.byte_level(counts[:256].tolist()), n, crlf
    present = np.flatnonzero(counts)
    vocab = Vocab(tokens=[chr(int(c)) for c in present], counts=counts[present].tolist())
    return vocab, n, crlf


def _encode(path: Path, out: Path, vocab: Vocab, n: int, errors: str, chunk_size: int) -> str:
    """Pass 2: write tokens.bin (``n`` ids); returns the sha256 of the bytes read again."""
    dtype = vocab.dtype
    reserve(out, n * dtype.itemsize)
    h = hashlib.sha256()
    pos = 0
    if vocab.kind == "bytes":
        for chunk in _iter_bytes(path, chunk_size):
            h.update(chunk)
            if pos + len(chunk) > n:
                break
            _write_window(out, dtype, pos, np.frombuffer(chunk, dtype=np.uint8))
            pos += len(chunk)
    else:

        def hashed() -> Iterator[bytes]:
            for chunk in _iter_bytes(path, chunk_size):
                h.update(chunk)
                yield chunk

        for text in _decode(hashed(), path, errors):
            ids, known = vocab.lookup(codepoints(text))
            if not known.all() or pos + len(ids) > n:
                pos = -1
                break
            _write_window(out, dtype, pos, ids.astype(dtype))
            pos += len(ids)
    if pos != n:
        raise DataError(f"{path}: the file changed while it was being read; run again")
    with open(out, "rb+") as f:
        os.fsync(f.fileno())
    return h.hexdigest()


def reserve(path: Path, size: int) -> None:
    """Create ``path`` with ``size`` bytes of disk really allocated, so that writing through a
    memory map later cannot hit a full disk (which kills the process with SIGBUS instead of
    raising); a full disk is a DataError saying how much space is needed, and where."""
    with open(path, "wb") as f:
        try:
            if size:
                os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DataError(
                    f"no space left on {path.parent.parent}: {size:,} bytes needed for the "
                    "token cache; free some space or point RNNLAB_CACHE elsewhere"
                ) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            f.truncate(size)  # a file system without fallocate: sparse, as before


def _remove_stale_builds(cache: Path) -> None:
    """Delete ``.tmp-<key>-<pid>-<nonce>`` build directories whose process is gone."""
    for tmp in cache.glob(".tmp-*"):
        try:
            os.kill(int(tmp.name.split("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, OSError):
            pass  # not ours, or a live process of another user


def _cache_key(sha: str, byte_level: bool, errors: str, fracs: Sequence[float]) -> str:
    options = {
        "format": CORPUS_FORMAT,
        "sha256": sha,
        "bytes": byte_level,
        "errors": "strict" if byte_level else errors,
        "split": [float(f) for f in fracs],
    }
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:32]


def cached_corpus(
    sha256: str,
    *,
    byte_level: bool = False,
    errors: str = "strict",
    split: Sequence[float] = (0.9, 0.05, 0.05),
    cache_dir: str | os.PathLike[str] | None = None,
) -> Corpus | None:
    """The cache entry ``prepare_corpus`` built from a file with this content and these options,
    or None: how a run finds its training text after the file moved or was edited."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "corpora"
    entry = cache / _cache_key(sha256, byte_level, errors, _check_fractions(split))
    if not entry.is_dir():
        return None
    try:
        corpus = Corpus.open(entry)
    except DataError:
        return None
    return corpus if corpus.meta.get("source_sha256") == sha256 else None


def prepare_corpus(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    byte_level: bool = False,
    errors: str = "strict",
    split: Sequence[float] = (0.9, 0.05, 0.05),
    chunk_size: int = DEFAULT_CHUNK,
) -> Corpus:
    """Encode the text file ``path`` into a cached token file and return the Corpus.

    ``cache_dir`` defaults to ``cache_root() / "corpora"``. The entry is keyed by the sha256 of
    the file's bytes and the options, so an edited file is re-encoded and an unchanged one is
    reused without a rebuild. ``byte_level`` gives the 256-byte vocabulary; ``errors="replace"``
    maps invalid UTF-8 to U+FFFD; ``split`` are the train/val/test fractions.
    """
    path = check_file(path)
    if errors not in ERRORS:
        raise DataError(f"errors={errors!r} is not one of {ERRORS}; use strict or replace")
    if chunk_size < 1:
        raise DataError(f"chunk_size must be positive, got {chunk_size}")
    fracs = _check_fractions(split)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: training file is empty; pass a file with some text")
    if byte_level:
        errors = "strict"  # bytes are never decoded
    cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "corpora"

    sha = sha256_file(path, chunk_size)
    key = _cache_key(sha, byte_level, errors, fracs)
    entry = cache / key
    if entry.exists():
        try:
            return Corpus.open(entry)
        except DataError:
            shutil.rmtree(entry, ignore_errors=True)  # damaged by hand: rebuild it

    cache.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(cache)
    tmp = cache / f".tmp-{key}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _build(
            path,
            tmp,
            sha=sha,
            byte_level=byte_level,
            errors=errors,
            fracs=fracs,
            chunk_size=chunk_size,
        )
        try:
            os.rename(tmp, entry)  # atomic: the entry appears complete or not at all
        except OSError:
            if not entry.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built the same entry
        fsync_dir(cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Corpus.open(entry)


def _build(
    path: Path,
    out: Path,
    *,
    sha: str,
    byte_level: bool,
    errors: str,
    fracs: Sequence[float],
    chunk_size: int,
) -> None:
    """Passes 1 and 2 into the directory ``out``: tokens.bin, vocab.json, meta.json, fsynced."""
    vocab, n, crlf = _scan(path, byte_level, errors, chunk_size)
    if _encode(path, out / "tokens.bin", vocab, n, errors, chunk_size) != sha:
        raise DataError(f"{path}: the file changed while it was being read; run again")
    vocab.save(out / "vocab.json")
    meta = {
        "format_version": CORPUS_FORMAT,
        "source": str(path.resolve()),
        "source_size": path.stat().st_size,
        "source_sha256": sha,
        "kind": vocab.kind,
        "errors": errors,
        "split_fractions": list(fracs),
        "splits": split_offsets(n, fracs),
        "dtype": vocab.dtype.name,
        "n_tokens": n,
        "vocab_size": len(vocab),
        "has_crlf": crlf > 0,
        "crlf_count": crlf,
    }
    write_atomic(out / "meta.json", json.dumps(meta, indent=1))


def corpus_info(path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK) -> dict[str, Any]:
    """Facts about a text file for ``rnnlab data-info``, in one streaming pass.

    Keys: ``path``, ``size_bytes``, ``chars``, ``distinct``, ``lines`` (``\\n`` count), ``crlf``,
    ``lone_cr``, ``nul``, ``non_ascii`` (characters above U+007F), ``valid_utf8`` and
    ``first_invalid_byte`` (None, or the offset; the counts then read bad bytes as U+FFFD).
    """
    path = check_file(path)
    info: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
    try:
        stats = _text_stats(iter_text(path, "strict", chunk_size))
        info.update(valid_utf8=True, first_invalid_byte=None)
    except InvalidUTF8Error as e:
        stats = _text_stats(iter_text(path, "replace", chunk_size))
        info.update(valid_utf8=False, first_invalid_byte=e.offset)
    return {**info, **stats}


def _text_stats(pieces: Iterable[str]) -> dict[str, int]:
    seen = np.zeros(128, dtype=bool)
    chars = lines = crlf = cr = nul = non_ascii = 0
    last = ""
    for piece in pieces:
        cps = codepoints(piece)
        if cps.max() >= len(seen):
            seen = np.concatenate([seen, np.zeros(int(cps.max()) + 1 - len(seen), dtype=bool)])
        seen[cps] = True
        chars += len(piece)
        lines += piece.count("\n")
        crlf += piece.count("\r\n") + (last == "\r" and piece[0] == "\n")
        cr += piece.count("\r")
        nul += piece.count("\x00")
        non_ascii += int(np.count_nonzero(cps >= 128))
        last = piece[-1]
    return {
        "chars": chars,
        "distinct": int(seen.sum()),
        "lines": lines,
        "crlf": crlf,
        "lone_cr": cr - crlf,
        "nul": nul,
        "non_ascii": non_ascii,
    }
