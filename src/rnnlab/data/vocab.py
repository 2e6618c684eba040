"""Vocab: the character (or byte) vocabulary, text <-> token ids, and its ``vocab.json`` form.

Two kinds:

* ``"text"``: one token per Unicode code point seen in the corpus, sorted by code point, so a
  token id is the rank of its code point;
* ``"bytes"``: the 256 byte values (``--bytes``); text is encoded as UTF-8 and decoded back with
  ``errors="replace"``. ``tokens[i]`` is ``chr(i)`` (the byte's Latin-1 reading) so that every
  token is still a one-character string for display.

Characters are handled as arrays of code points (UTF-32) and mapped through a dense lookup table,
never one Python call per character, so encoding a large chunk costs a few numpy passes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.data.errors import DataError
from rnnlab.io import write_atomic

FORMAT_VERSION = 1
KINDS = ("text", "bytes")
UNKNOWN_POLICIES = ("error", "skip", "replace")
_BYTE_TOKENS = [chr(i) for i in range(256)]


def describe_chars(chars: Iterable[str], limit: int = 20) -> str:
    """``'é' (U+00E9), '\\n' (U+000A)``: a one-line listing of characters, at most ``limit``."""
    chars = list(chars)
    shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in chars[:limit])
    if len(chars) > limit:
        shown += f", ... and {len(chars) - limit} more"
    return shown


def codepoints(text: str) -> np.ndarray:
    """The code points of ``text`` as a uint32 array (lone surrogates pass through unchanged)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


@dataclass(frozen=True)
class Vocab:
    """A character vocabulary: ``tokens[i]`` is the one-character string of token id ``i``.

    ``counts[i]`` (optional) is how often token ``i`` occurs in the corpus it was built from; it
    picks the replacement character and the default prime. Equality compares kind and tokens only.
    """

    tokens: list[str]
    kind: str = "text"
    counts: list[int] | None = field(default=None, compare=False)
    _codes: np.ndarray = field(init=False, repr=False, compare=False)
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown vocabulary kind {self.kind!r}; expected one of {KINDS}")
        tokens = list(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if not tokens:
            raise DataError("the vocabulary is empty; build it from a non-empty text")
        if any(not isinstance(t, str) or len(t) != 1 for t in tokens):
            raise DataError("every vocabulary token must be a string of exactly one character")
        codes = np.array([ord(t) for t in tokens], dtype=np.uint32)
        if self.kind == "text" and np.any((codes >= 0xD800) & (codes <= 0xDFFF)):
            raise DataError("vocabulary tokens must be Unicode characters, not lone surrogates")
        if self.kind == "bytes":
            if tokens != _BYTE_TOKENS:
                raise DataError("a byte-level vocabulary must hold the 256 byte values in order")
        elif np.any(codes[1:] <= codes[:-1]):
            raise DataError("vocabulary tokens must be distinct and sorted by code point")
        if self.counts is not None:
            counts = [int(c) for c in self.counts]
            if len(counts) != len(tokens) or any(c < 0 for c in counts):
                raise DataError("vocabulary counts must be one non-negative integer per token")
            object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "_codes", codes)
        # Dense code point -> id table (-1 = unknown): one gather per character when encoding.
        # At most 0x110000 int32 entries (4.4 MB), typically a few hundred bytes.
        lut = np.full(int(codes.max()) + 1, -1, dtype=np.int32)
        lut[codes] = np.arange(len(codes), dtype=np.int32)
        object.__setattr__(self, "_lut", lut)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> Vocab:
        """A text vocabulary from ``{character: count}``; tokens sorted by code point."""
        chars = sorted(counts, key=ord)
        return cls(tokens=chars, kind="text", counts=[int(counts[c]) for c in chars])

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """A text vocabulary holding every character of ``text``, with counts."""
        if not text:
            raise DataError("cannot build a vocabulary from empty text; pass some text")
        return cls.from_counts(Counter(text))

    @classmethod
    def byte_level(cls, counts: Sequence[int] | None = None) -> Vocab:
        """The 256-token byte vocabulary (``--bytes``); ``counts`` optional, one per byte value."""
        return cls(tokens=_BYTE_TOKENS, kind="bytes", counts=counts)

    # -- basic properties --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, ch: object) -> bool:
        if not isinstance(ch, str) or len(ch) != 1:
            return False
        if self.kind == "bytes":
            return True  # any character encodes to bytes
        c = ord(ch)
        return c < len(self._lut) and bool(self._lut[c] >= 0)

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every token id: uint8, uint16 or uint32."""
        n = len(self)
        if n <= 1 << 8:
            return np.dtype(np.uint8)
        if n <= 1 << 16:
            return np.dtype(np.uint16)
        return np.dtype(np.uint32)

    def _most_frequent_id(self, ids: np.ndarray | None = None) -> int | None:
        if self.counts is None:
            return None
        counts = np.asarray(self.counts, dtype=np.int64)
        if ids is not None:
            return int(ids[np.argmax(counts[ids])]) if len(ids) and counts[ids].max() > 0 else None
        return int(np.argmax(counts)) if counts.max() > 0 else None

    def default_prime(self) -> str:
        """A character that is surely in the vocabulary: the most frequent one, else the first.

        For a byte vocabulary the prime is text that gets UTF-8 encoded, so it is the most
        frequent ASCII byte (or ``"\\n"``).
        """
        if self.kind == "bytes":
            best = self._most_frequent_id(np.arange(128))
            return chr(best) if best is not None else "\n"
        best = self._most_frequent_id()
        return self.tokens[best if best is not None else 0]

    # -- encode / decode ---------------------------------------------------------------------

    def unseen(self, text: str) -> list[str]:
        """Distinct characters of ``text`` that are not in the vocabulary, by code point."""
        if self.kind == "bytes" or not text:
            return []
        cps = np.unique(codepoints(text))
        missing = cps[~self._known(cps)[1]]
        return [chr(int(c)) for c in missing]

    def _known(self, cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, known bool) for code points ``cps``; ids are -1 where not known."""
        lut = self._lut
        ids = lut[np.minimum(cps, len(lut) - 1)]
        ids[cps >= len(lut)] = -1
        return ids, ids >= 0

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Token ids (int64, shape (len,)) of ``text``.

        ``unknown`` says what to do with characters outside the vocabulary: ``"error"`` raises a
        DataError listing them, ``"skip"`` drops them, ``"replace"`` substitutes the most frequent
        character (or ``tokens[0]`` when counts are unknown).
        """
        if unknown not in UNKNOWN_POLICIES:
            raise DataError(f"unknown={unknown!r} is not one of {UNKNOWN_POLICIES}")
        if self.kind == "bytes":
            try:
                data = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as e:
                raise DataError(f"text cannot be encoded as UTF-8: {e.reason}") from None
            return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        cps = codepoints(text)
        ids, known = self._known(cps)
        ids = ids.astype(np.int64)
        if known.all():
            return ids
        if unknown == "error":
            missing = [chr(int(c)) for c in np.unique(cps[~known])]
            raise DataError(
                f"{len(missing)} character(s) not in the vocabulary: {describe_chars(missing)}; "
                "remove them or use --unknown skip / --unknown replace"
            )
        if unknown == "skip":
            return ids[known]
        best = self._most_frequent_id()
        ids[~known] = best if best is not None else 0
        return ids

    def decode(self, ids: Any) -> str:
        """The text of a 1-D sequence of token ids (list, numpy array or torch tensor)."""
        if hasattr(ids, "detach"):  # a torch tensor, possibly on an accelerator
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids).reshape(-1)
        if arr.size == 0:
            return ""
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"token ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= len(self):
            bad = lo if lo < 0 else hi
            raise DataError(f"token id {bad} is outside the vocabulary of size {len(self)}")
        if self.kind == "bytes":
            return arr.astype(np.uint8).tobytes().decode("utf-8", "replace")
        return self._codes[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_bytes(self, ids: Any) -> bytes:
        """The bytes of a sequence of token ids: the raw bytes of a byte-level vocabulary (any
        bytes, UTF-8 or not, come back intact), UTF-8 for a text vocabulary."""
        if self.kind == "bytes":
            arr = np.asarray(ids.detach().cpu().numpy() if hasattr(ids, "detach") else ids)
            self.decode(arr)  # range checks
            return arr.reshape(-1).astype(np.uint8).tobytes()
        return self.decode(ids).encode("utf-8")

    # -- comparison --------------------------------------------------------------------------

    def diff(self, other: Vocab) -> str:
        """How ``other`` differs from this vocabulary ("" when identical), in one line.

        "added" are characters of ``other`` missing here, "removed" the reverse; used to refuse
        resuming a checkpoint (``self``) on data with a different vocabulary (``other``).
        """
        if self.kind != other.kind:
            return (
                f"vocabulary kind differs: {self.kind} ({len(self)} tokens) "
                f"vs {other.kind} ({len(other)} tokens)"
            )
        mine, theirs = set(self.tokens), set(other.tokens)
        added, removed = sorted(theirs - mine, key=ord), sorted(mine - theirs, key=ord)
        if not added and not removed:
            return ""
        parts = []
        if added:
            parts.append(f"{len(added)} character(s) added: {describe_chars(added)}")
        if removed:
            parts.append(f"{len(removed)} character(s) removed: {describe_chars(removed)}")
        return f"vocabulary differs ({len(self)} -> {len(other)} tokens): " + "; ".join(parts)

    # -- vocab.json --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """``{"format_version": 1, "kind", "tokens", "counts"?}`` (counts only when known)."""
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "tokens": list(self.tokens),
        }
        if self.counts is not None:
            out["counts"] = list(self.counts)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vocab:
        """Inverse of ``to_json``; a malformed document raises DataError."""
        if not isinstance(data, Mapping):
            raise DataError("vocabulary JSON must be an object; the file is not a vocab.json")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"unsupported vocabulary format_version {version!r} (expected "
                f"{FORMAT_VERSION}); rebuild the vocabulary with this version of rnnlab"
            )
        if "tokens" not in data or "kind" not in data:
            raise DataError("vocabulary JSON lacks 'tokens' or 'kind'; the file is damaged")
        return cls(tokens=data["tokens"], kind=data["kind"], counts=data.get("counts"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``vocab.json`` atomically and durably (``rnnlab.io.write_atomic``)."""
        write_atomic(path, json.dumps(self.to_json(), ensure_ascii=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        """Read a ``vocab.json`` written by ``save``."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found; check the path") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read vocabulary ({e}); the file is damaged") from None
        return cls.from_json(data)
