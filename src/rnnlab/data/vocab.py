"""Vocab: the one vocabulary type (characters, bytes, symbols, words), tokens <-> ids, vocab.json.

Four kinds:

* ``"text"``: one token per Unicode code point seen in the corpus, sorted by code point, so a
  token id is the rank of its code point (the char-LM);
* ``"bytes"``: the 256 byte values (``--bytes``); text is encoded as UTF-8 and decoded back with
  ``errors="replace"``. ``tokens[i]`` is ``chr(i)`` (the byte's Latin-1 reading) so that every
  token is still a one-character string for display;
* ``"symbols"``: any non-empty strings (graphemes, phonemes, labels), specials first and the rest
  in the order first seen in training (seq2seq, classify);
* ``"words"``: the words of sentences, specials first and the rest by frequency (captioning).
  Decoding reads a sentence: it stops at the end token and keeps ``<unk>``.

Specials are the first ``num_specials`` tokens (ids ``0..num_specials-1``; text and bytes have
none); ``pad_id``, ``unk_id``, ``start_id`` and ``end_id`` find them by name. Text and bytes encode
a ``str`` into a numpy array: characters are handled as arrays of code points (UTF-32) mapped
through a dense lookup table, never one Python call per character, so encoding a large chunk
costs a few numpy passes. Symbols and words encode a list of tokens into a ``list[int]``.

``vocab.json`` is written as format 2::

    {"format_version": 2, "kind": "symbols", "tokens": ["<pad>", "<unk>", "a"],
     "num_specials": 2, "counts": [0, 0, 7]}              (counts only when known)

and the three forms written before it are read too, so older run directories still load::

    {"format_version": 1, "kind": "text" | "bytes", "tokens": [...], "counts": [...]}  char-LM
    {"tokens": [...], "num_specials": n}                        seq2seq and classify (Symbols)
    {"kind": "words", "words": [...]}          captioning (CaptionVocab), its 4 specials first
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rnnlab.data.errors import DataError
from rnnlab.io import write_atomic

FORMAT_VERSION = 2
KINDS = ("text", "bytes", "symbols", "words")
CHAR_KINDS = ("text", "bytes")
UNKNOWN_POLICIES = ("error", "skip", "replace")
ORDERS = ("first_seen", "frequency")
# Special tokens are found by name; the pairs and the captioner spell start and end differently.
SPECIAL_NAMES = {
    "pad": ("<pad>",),
    "unk": ("<unk>",),
    "start": ("<s>", "<start>"),
    "end": ("</s>", "<end>"),
}
_CAPTION_SPECIALS_V0 = 4  # {"kind": "words", "words"} began with <pad> <start> <end> <unk>
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


@dataclass(frozen=True, eq=False)
class Vocab:
    """Tokens and their ids: ``tokens[i]`` is the token of id ``i``; the first ``num_specials``
    are special tokens.

    ``counts[i]`` (optional) is how often token ``i`` occurred in the data it was built from; it
    picks the replacement for an unknown token (when there is no ``<unk>``) and the default prime.
    Equality compares kind, tokens and num_specials only, whatever the subclass.

    Raises DataError for an unknown kind, no tokens, a duplicate token, specials in a text or
    bytes vocabulary, a ``num_specials`` outside ``0..len(tokens)``, counts that are not one
    non-negative integer per token, and (text and bytes) the checks on characters below.
    """

    tokens: list[str]
    num_specials: int = 0
    _: KW_ONLY
    kind: str = "text"
    counts: list[int] | None = field(default=None, repr=False)
    # Lookups: a dict for symbols and words; code points and a dense table for text and bytes.
    _index: dict[str, int] = field(init=False, repr=False, default_factory=dict)
    _codes: np.ndarray = field(init=False, repr=False, default=None)  # type: ignore[assignment]
    _lut: np.ndarray = field(init=False, repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown vocabulary kind {self.kind!r}; expected one of {KINDS}")
        tokens = list(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if not tokens:
            raise DataError("the vocabulary is empty; build it from non-empty data")
        n = self.num_specials
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(tokens):
            raise DataError(f"num_specials: expected an integer in 0..{len(tokens)}, got {n!r}")
        if self.kind in CHAR_KINDS:
            if n:
                raise DataError(f"a {self.kind} vocabulary has no special tokens, got {n}")
            self._index_chars(tokens)
        else:
            if any(not isinstance(t, str) or not t for t in tokens):
                raise DataError("every vocabulary token must be a non-empty string")
            index = {t: i for i, t in enumerate(tokens)}
            if len(index) != len(tokens):
                twice = next(t for t, c in Counter(tokens).items() if c > 1)
                raise DataError(f"vocabulary: the token {twice!r} occurs twice")
            object.__setattr__(self, "_index", index)
        if self.counts is not None:
            counts = [int(c) for c in self.counts]
            if len(counts) != len(tokens) or any(c < 0 for c in counts):
                raise DataError("vocabulary counts must be one non-negative integer per token")
            object.__setattr__(self, "counts", counts)

    def _index_chars(self, tokens: list[str]) -> None:
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
        object.__setattr__(self, "_codes", codes)
        # Dense code point -> id table (-1 = unknown): one gather per character when encoding.
        # At most 0x110000 int32 entries (4.4 MB), typically a few hundred bytes.
        lut = np.full(int(codes.max()) + 1, -1, dtype=np.int32)
        lut[codes] = np.arange(len(codes), dtype=np.int32)
        object.__setattr__(self, "_lut", lut)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> Vocab:
        """A text vocabulary from ``{character: count}``; tokens sorted by code point.

        Raises DataError as the constructor does (no characters, a token that is not one
        character, a lone surrogate, a negative count)."""
        chars = sorted(counts, key=ord)
        return cls(tokens=chars, kind="text", counts=[int(counts[c]) for c in chars])

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """A text vocabulary holding every character of ``text``, with counts.

        Raises DataError for an empty text or one holding a lone surrogate."""
        if not text:
            raise DataError("cannot build a vocabulary from empty text; pass some text")
        return cls.from_counts(Counter(text))

    @classmethod
    def byte_level(cls, counts: Sequence[int] | None = None) -> Vocab:
        """The 256-token byte vocabulary (``--bytes``); ``counts`` optional, one per byte value.

        Raises DataError when ``counts`` is not 256 non-negative integers."""
        return cls(tokens=_BYTE_TOKENS, kind="bytes", counts=counts)

    @classmethod
    def build(
        cls,
        seqs: Iterable[Sequence[str]],
        specials: Sequence[str] = (),
        *,
        kind: str = "symbols",
        order: Literal["first_seen", "frequency"] = "first_seen",
        min_count: int = 1,
    ) -> Vocab:
        """A symbols or words vocabulary: ``specials`` first, then every other token of ``seqs``
        seen at least ``min_count`` times, in the order first seen or most frequent first (ties
        alphabetical); counts are those in ``seqs``. A reproducible function of its data.

        Raises ValueError for a text or bytes ``kind`` (use ``from_text`` or ``byte_level``), an
        unknown ``order`` or a ``min_count`` below 1; DataError for no tokens or a repeated
        special."""
        if kind in CHAR_KINDS:
            raise ValueError(f"kind: build makes symbols or words, not {kind!r}; use from_text")
        if order not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
        if min_count < 1:
            raise ValueError(f"min_count: expected an integer >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for seq in seqs:  # a Counter keeps first-seen order
            counts.update(seq)
        rest = [t for t, c in counts.items() if c >= min_count and t not in specials]
        if order == "frequency":
            rest.sort(key=lambda t: (-counts[t], t))
        tokens = [*specials, *rest]
        return cls(tokens, len(specials), kind=kind, counts=[counts[t] for t in tokens])

    # -- basic properties --------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (self.kind, self.num_specials, self.tokens) == (
            other.kind,
            other.num_specials,
            other.tokens,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.num_specials, tuple(self.tokens)))

    def __contains__(self, token: object) -> bool:
        if self.kind not in CHAR_KINDS:
            return token in self._index
        if not isinstance(token, str) or len(token) != 1:
            return False
        if self.kind == "bytes":
            return True  # any character encodes to bytes
        c = ord(token)
        return c < len(self._lut) and bool(self._lut[c] >= 0)

    def id(self, token: str) -> int:
        """The id of ``token``. Raises KeyError when it is not in the vocabulary."""
        if self.kind not in CHAR_KINDS:
            return self._index[token]
        c = ord(token) if isinstance(token, str) and len(token) == 1 else len(self._lut)
        if c >= len(self._lut) or self._lut[c] < 0:
            raise KeyError(token)
        return int(self._lut[c])

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every token id: uint8, uint16 or uint32."""
        n = len(self)
        if n <= 1 << 8:
            return np.dtype(np.uint8)
        if n <= 1 << 16:
            return np.dtype(np.uint16)
        return np.dtype(np.uint32)

    def _special(self, name: str) -> int | None:
        names = SPECIAL_NAMES[name]
        return next((i for i in range(self.num_specials) if self.tokens[i] in names), None)

    @property
    def pad_id(self) -> int | None:
        """Id of the special ``<pad>``, None when there is none."""
        return self._special("pad")

    @property
    def unk_id(self) -> int | None:
        """Id of the special ``<unk>``, None when there is none."""
        return self._special("unk")

    @property
    def start_id(self) -> int | None:
        """Id of the special ``<s>`` or ``<start>``, None when there is none."""
        return self._special("start")

    @property
    def end_id(self) -> int | None:
        """Id of the special ``</s>`` or ``<end>``, None when there is none."""
        return self._special("end")

    def _most_frequent_id(self, ids: np.ndarray | None = None) -> int | None:
        if self.counts is None:
            return None
        counts = np.asarray(self.counts, dtype=np.int64)
        if ids is not None:
            return int(ids[np.argmax(counts[ids])]) if len(ids) and counts[ids].max() > 0 else None
        return int(np.argmax(counts)) if counts.max() > 0 else None

    def _replacement_id(self) -> int:
        """What ``unknown="replace"`` maps to: ``<unk>``, else the most frequent token, else 0."""
        if self.unk_id is not None:
            return self.unk_id
        best = self._most_frequent_id()
        return best if best is not None else 0

    def default_prime(self) -> str:
        """A character that is surely in the vocabulary: the most frequent one, else the first.

        For a byte vocabulary the prime is text that gets UTF-8 encoded, so it is the most
        frequent ASCII byte (or ``"\\n"``). Raises TypeError for symbols and words.
        """
        self._require_chars("default_prime")
        if self.kind == "bytes":
            best = self._most_frequent_id(np.arange(128))
            return chr(best) if best is not None else "\n"
        best = self._most_frequent_id()
        return self.tokens[best if best is not None else 0]

    def _require_chars(self, what: str) -> None:
        if self.kind not in CHAR_KINDS:
            raise TypeError(f"{what}: a text or bytes vocabulary only, this one is {self.kind}")

    # -- encode ------------------------------------------------------------------------------

    def unseen(self, seq: str | Iterable[str]) -> list[str]:
        """What ``seq`` holds that the vocabulary lacks: for text, the distinct characters by
        code point (bytes lack none); for symbols and words, the tokens in order, once each."""
        if self.kind not in CHAR_KINDS:
            return list(dict.fromkeys(t for t in seq if t not in self._index))
        if self.kind == "bytes" or not seq:
            return []
        cps = np.unique(codepoints(seq))  # type: ignore[arg-type]
        return [chr(int(c)) for c in cps[~self.lookup(cps)[1]]]

    def lookup(self, cps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, known bool), each shaped like ``cps``, for an array of code points; ids
        are -1 where not known. The corpus encodes large files through this, chunk by chunk.

        Raises TypeError unless the vocabulary is of kind text."""
        if self.kind != "text":
            raise TypeError(f"lookup: a text vocabulary only, this one is {self.kind}")
        lut = self._lut
        ids = lut[np.minimum(cps, len(lut) - 1)]
        ids[cps >= len(lut)] = -1
        return ids, ids >= 0

    def encode(
        self, seq: str | Sequence[str], unknown: str = "error", where: str = ""
    ) -> np.ndarray | list[int]:
        """Token ids of ``seq``: a ``str`` to an int64 array (len,) for text and bytes, a sequence
        of tokens to a ``list[int]`` for symbols and words.

        ``unknown`` says what to do with what is not in the vocabulary: ``"error"`` raises a
        DataError listing it (prefixed by ``where``, e.g. a file and line), ``"skip"`` drops it,
        ``"replace"`` maps it to ``<unk>``, else the most frequent token, else id 0. Raises
        DataError for another ``unknown`` and for text that cannot be UTF-8 (bytes); TypeError
        for a ``str`` given to symbols or words (split it first) or a list given to text.
        """
        if unknown not in UNKNOWN_POLICIES:
            raise DataError(f"unknown={unknown!r} is not one of {UNKNOWN_POLICIES}")
        prefix = f"{where}: " if where else ""
        if self.kind in CHAR_KINDS:
            if not isinstance(seq, str):
                raise TypeError(f"seq: a {self.kind} vocabulary encodes a str, got {type(seq)}")
            return self._encode_text(seq, unknown, prefix)
        if isinstance(seq, str):
            raise TypeError(f"seq: a {self.kind} vocabulary encodes a list of tokens, not a str")
        missing = self.unseen(seq) if unknown == "error" else []
        if missing:
            noun = "word" if self.kind == "words" else "symbol"
            listed = ", ".join(repr(s) for s in missing[:10])
            raise DataError(
                f"{prefix}{noun}(s) not seen in training: {listed}"
                " (use --unknown replace to map them to <unk>)"
            )
        index = self._index
        if unknown == "skip":
            return [index[t] for t in seq if t in index]
        replacement = self._replacement_id()
        return [index.get(t, replacement) for t in seq]

    def _encode_text(self, text: str, unknown: str, prefix: str) -> np.ndarray:
        if self.kind == "bytes":
            try:
                data = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as e:
                raise DataError(f"{prefix}text cannot be encoded as UTF-8: {e.reason}") from None
            return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        cps = codepoints(text)
        ids, known = self.lookup(cps)
        ids = ids.astype(np.int64)
        if known.all():
            return ids
        if unknown == "error":
            missing = [chr(int(c)) for c in np.unique(cps[~known])]
            raise DataError(
                f"{prefix}{len(missing)} character(s) not in the vocabulary: "
                f"{describe_chars(missing)}; remove them or use --unknown skip / --unknown replace"
            )
        if unknown == "skip":
            return ids[known]
        ids[~known] = self._replacement_id()
        return ids

    # -- decode ------------------------------------------------------------------------------

    def _ids(self, ids: Any) -> np.ndarray:
        """A 1-D integer array of ``ids`` (list, numpy array or torch tensor), range-checked."""
        if hasattr(ids, "detach"):  # a torch tensor, possibly on an accelerator
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids).reshape(-1)
        if arr.size == 0:
            return arr.astype(np.int64)
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"token ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= len(self):
            bad = lo if lo < 0 else hi
            raise DataError(f"token id {bad} is outside the vocabulary of size {len(self)}")
        return arr

    def decode(
        self, ids: Any, *, until_end: bool | None = None, keep_unk: bool | None = None
    ) -> str | list[str]:
        """What a 1-D sequence of ids (list, numpy array or torch tensor) reads.

        Text and bytes give a ``str`` (bytes: invalid UTF-8 replaced by U+FFFD). Symbols and
        words give a ``list[str]`` with the special tokens dropped, stopping at the first end
        token when ``until_end`` and keeping ``<unk>`` when ``keep_unk``; both default to True
        for words (a sentence) and False for symbols. Raises DataError for ids that are not
        integers or lie outside the vocabulary.
        """
        arr = self._ids(ids)
        if self.kind == "bytes":
            return arr.astype(np.uint8).tobytes().decode("utf-8", "replace")
        if self.kind == "text":
            return self._codes[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
        sentence = self.kind == "words"
        end = self.end_id if (sentence if until_end is None else until_end) else None
        unk = self.unk_id if (sentence if keep_unk is None else keep_unk) else None
        out = []
        for i in arr.tolist():
            if i == end:
                break
            if i >= self.num_specials or i == unk:
                out.append(self.tokens[i])
        return out

    def to_bytes(self, ids: Any) -> bytes:
        """The bytes of a sequence of token ids: the raw bytes of a byte-level vocabulary (any
        bytes, UTF-8 or not, come back intact), UTF-8 for a text vocabulary. Raises DataError as
        ``decode`` does and TypeError for symbols and words."""
        self._require_chars("to_bytes")
        if self.kind == "bytes":
            return self._ids(ids).astype(np.uint8).tobytes()
        return self.decode(ids).encode("utf-8")  # type: ignore[union-attr]

    # -- comparison --------------------------------------------------------------------------

    def diff(self, other: Vocab) -> str:
        """How ``other`` differs from this vocabulary ("" when identical), in one line.

        "added" are tokens of ``other`` missing here, "removed" the reverse; used to refuse
        resuming a checkpoint (``self``) on data with a different vocabulary (``other``).
        """
        if self.kind != other.kind:
            return (
                f"vocabulary kind differs: {self.kind} ({len(self)} tokens) "
                f"vs {other.kind} ({len(other)} tokens)"
            )
        if self == other:
            return ""
        mine, theirs = set(self.tokens), set(other.tokens)
        added = [t for t in other.tokens if t not in mine]
        removed = [t for t in self.tokens if t not in theirs]
        chars = self.kind in CHAR_KINDS
        noun = "character(s)" if chars else "token(s)"
        parts = []
        for what, found in (("added", added), ("removed", removed)):
            if found:
                shown = describe_chars(found) if chars else _listing(found)
                parts.append(f"{len(found)} {noun} {what}: {shown}")
        if not parts:
            parts.append("the same tokens in another order or with other specials")
        return f"vocabulary differs ({len(self)} -> {len(other)} tokens): " + "; ".join(parts)

    # -- vocab.json --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """``{"format_version": 2, "kind", "tokens", "num_specials", "counts"?}`` (counts only
        when known)."""
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "tokens": list(self.tokens),
            "num_specials": self.num_specials,
        }
        if self.counts is not None:
            out["counts"] = list(self.counts)
        return out

    @classmethod
    def from_json(cls, data: Any, source: str = "") -> Vocab:
        """Inverse of ``to_json``; also reads the three older forms (module docstring).

        Raises DataError, its message prefixed by ``source`` (a file name) when given, for a
        document that is not a vocabulary, an unsupported ``format_version``, fields of the
        wrong type, and everything the constructor refuses (for a subclass, another kind too).
        """
        try:
            tokens, num_specials, kind, counts = _read_json(data)
            return cls(tokens, num_specials, kind=kind, counts=counts)
        except DataError as e:
            raise DataError(f"{source}: {e}" if source else str(e)) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``vocab.json`` atomically and durably (``rnnlab.io.write_atomic``); raises
        OSError when it cannot be written."""
        write_atomic(path, json.dumps(self.to_json(), ensure_ascii=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        """Read a ``vocab.json`` (any format ``from_json`` reads). Raises DataError naming the
        file when it is missing, unreadable, not JSON or not a vocabulary."""
        path = Path(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found; check the path") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read vocabulary ({e}); the file is damaged") from None
        return cls.from_json(data, str(path))


def _listing(tokens: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(t) for t in tokens[:limit])
    return shown + (f", ... and {len(tokens) - limit} more" if len(tokens) > limit else "")


def _read_json(data: Any) -> tuple[Any, Any, Any, Any]:
    """(tokens, num_specials, kind, counts) of a vocab.json document in any of its four forms;
    the constructor checks the values. Raises DataError for a document in none of them."""
    if not isinstance(data, Mapping):
        raise DataError("vocabulary JSON must be an object; the file is not a vocab.json")
    version = data.get("format_version")
    if version is None and data.get("kind") == "words" and "words" in data:
        tokens, num_specials, kind = data["words"], _CAPTION_SPECIALS_V0, "words"
    elif version is None and "num_specials" in data and "kind" not in data:
        tokens, num_specials, kind = data.get("tokens"), data["num_specials"], "symbols"
    elif version in (1, FORMAT_VERSION):
        if "tokens" not in data or "kind" not in data:
            raise DataError("vocabulary JSON lacks 'tokens' or 'kind'; the file is damaged")
        tokens, kind = data["tokens"], data["kind"]
        num_specials = data.get("num_specials") if version == FORMAT_VERSION else 0
        if version == 1 and kind not in CHAR_KINDS:
            raise DataError(f"vocabulary format_version 1 holds text or bytes, not {kind!r}")
    else:
        raise DataError(
            f"unsupported vocabulary format_version {version!r} (expected 1 or "
            f"{FORMAT_VERSION}); rebuild the vocabulary with this version of rnnlab"
        )
    if not isinstance(tokens, list) or not all(type(t) is str for t in tokens):
        raise DataError("vocabulary tokens: expected a list of strings")
    counts = data.get("counts")
    if counts is not None and not (
        isinstance(counts, list) and all(type(c) is int for c in counts)
    ):
        raise DataError("vocabulary counts: expected a list of integers")
    return tokens, num_specials, kind, counts
