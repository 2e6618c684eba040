"""Symbol vocabularies and two-column files: source/target pairs (seq2seq) and text/label rows.

A file is TSV (one tab per line) or CSV (RFC 4180 quoting, by the ``.csv`` suffix). Each row's
two fields are split into symbols by ``char`` (every character) or ``space`` (whitespace-separated
tokens: ARPAbet phonemes, words)::

    pairs.tsv             read_pairs(..., source_tokens="char", target_tokens="space")
    cat<TAB>K AE1 T   ->  Pair(source=["c","a","t"], target=["K","AE1","T"], line=1)

Every problem with a file is a DataError naming the file and the line: a missing or extra
field, an empty field, a field over ``MAX_FIELD_CHARS`` (10,000) characters, invalid UTF-8, an
empty file, and (when encoding with a vocabulary made at training time) a symbol or label that
vocabulary has never seen. Files are read by ``rnnlab.data.text`` (the one line reader).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from rnnlab.data.errors import DataError
from rnnlab.data.text import (
    MAX_FILE_BYTES,
    check_length,
    read_text,
    split_lines,
)
from rnnlab.data.vocab import Vocab

Tokenizer = Literal["char", "space"]
SOURCE_SPECIALS = ("<pad>", "<unk>", "</s>")
TARGET_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")
_CR_HINT = (  # old Mac files end lines with a lone \r, which is data here
    " (a carriage return without a newline: lines end only at \\n or \\r\\n;"
    " save the file with those)"
)


def split_symbols(text: str, how: Tokenizer) -> list[str]:
    """``char``: the characters of ``text``; ``space``: its whitespace-separated tokens."""
    if how == "char":
        return list(text)
    if how == "space":
        return text.split()
    raise ValueError(f"tokens: expected char or space, got {how!r}")


def join_symbols(symbols: Sequence[str], how: Tokenizer) -> str:
    return "".join(symbols) if how == "char" else " ".join(symbols)


@dataclass(frozen=True, eq=False)
class Symbols(Vocab):
    """A ``Vocab`` of kind ``"symbols"``: ``specials`` first (ids 0..n-1), then the symbols seen
    in training in order of first appearance (``Symbols.build``), so a vocabulary is reproducible
    from its data. The name seq2seq and classify have used; new code can say ``Vocab``.

    Raises DataError as ``Vocab`` does, and for any kind but ``"symbols"``.
    """

    _: KW_ONLY
    kind: str = "symbols"

    def __post_init__(self) -> None:
        if self.kind != "symbols":
            raise DataError(f"expected a symbols vocabulary, found kind {self.kind!r}")
        super().__post_init__()


@dataclass(slots=True)
class Pair:
    """One row: source symbols, target symbols (or a one-element label), its 1-based line."""

    source: list[str]
    target: list[str]
    line: int


@dataclass
class PairData:
    """A task's training and validation pairs with the vocabularies built from training:
    seq2seq's source -> target symbols, classify's text -> label. ``record`` says what the data
    was (file, sha256) and is stored with checkpoints."""

    train: list[Pair]
    val: list[Pair]
    source: Symbols
    target: Symbols
    record: dict[str, Any]

    def sizes(self, noun: str) -> str:
        """``1,200 training / 60 validation pairs``."""
        return f"{len(self.train):,} training / {len(self.val):,} validation {noun}"


def read_rows(path: str | os.PathLike[str], *, header: bool = False) -> list[tuple[str, str, int]]:
    """The two fields and line number of every non-blank row of a TSV or CSV file.

    CSV when the name ends in ``.csv`` (fields may be quoted and hold commas, tabs, newlines);
    otherwise TSV: exactly one tab per line, text taken as is. ``header`` skips the first row.
    Read by ``rnnlab.data.text``: UTF-8, a byte-order mark dropped, lines cut at ``\\n`` and
    ``\\r\\n`` only; a field over ``MAX_FIELD_CHARS`` characters is a DataError.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a TSV or CSV file")
    text = read_text(path, max_bytes=MAX_FILE_BYTES)
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _tsv_rows(path, text)
    if header and rows:
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no rows (an empty file); expected lines of two fields")
    return rows


def _tsv_rows(path: Path, text: str) -> list[tuple[str, str, int]]:
    rows = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(
                f"{path}:{number}: expected 2 tab-separated fields, found {len(fields)}"
                + (_CR_HINT if "\r" in line else "")
            )
        rows.append(_row(path, number, fields))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, str, int]]:
    rows = []
    # Lines keep their terminators so a quoted field may span them; line_num counts them.
    reader = csv.reader(split_lines(text, keepends=True), strict=True)
    start = 1
    try:
        for fields in reader:
            number, start = start, reader.line_num + 1
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != 2:
                raise DataError(
                    f"{path}:{number}: expected 2 comma-separated fields, found {len(fields)}"
                )
            rows.append(_row(path, number, fields))
    except csv.Error as e:
        if "new-line character" in str(e):  # a lone \r: not a line end here
            raise DataError(f"{path}:{start}: malformed CSV{_CR_HINT}") from None
        raise DataError(f"{path}:{start}: malformed CSV ({e})") from None
    return rows


def _row(path: Path, number: int, fields: list[str]) -> tuple[str, str, int]:
    where = f"{path}:{number}"
    return (
        check_length(fields[0], where, "field 1"),
        check_length(fields[1], where, "field 2"),
        number,
    )


def read_pairs(
    path: str | os.PathLike[str],
    *,
    source_tokens: Tokenizer = "char",
    target_tokens: Tokenizer = "char",
    header: bool = False,
) -> list[Pair]:
    """Source/target pairs of a TSV/CSV file; an empty source or target is a DataError."""
    pairs = []
    for src, tgt, line in read_rows(path, header=header):
        source, target = split_symbols(src, source_tokens), split_symbols(tgt, target_tokens)
        if not source or not target:
            which = "source" if not source else "target"
            raise DataError(f"{path}:{line}: empty {which} field")
        pairs.append(Pair(source, target, line))
    return pairs


def read_labeled(
    path: str | os.PathLike[str], *, tokens: Tokenizer = "char", header: bool = False
) -> list[Pair]:
    """``text, label`` rows: ``Pair(source=symbols of text, target=[label], line)``. Labels are
    taken with surrounding whitespace stripped; an empty text or label is a DataError."""
    rows = []
    for text, label, line in read_rows(path, header=header):
        symbols, label = split_symbols(text, tokens), label.strip()
        if not symbols or not label:
            which = "text" if not symbols else "label"
            raise DataError(f"{path}:{line}: empty {which} field")
        rows.append(Pair(symbols, [label], line))
    return rows


def check_known(
    pairs: Sequence[Pair],
    source: Symbols,
    target: Symbols | None,
    path: str,
    target_noun: str = "target symbol",
) -> None:
    """DataError naming ``path`` and the first line holding a source symbol (or a target
    symbol/label, ``target_noun``) that the training vocabulary lacks."""
    for p in pairs:
        for vocab, symbols, noun in ((source, p.source, "symbol"), (target, p.target, target_noun)):
            bad = vocab.unseen(symbols) if vocab is not None else []
            if bad:
                listed = ", ".join(repr(s) for s in bad[:10])
                raise DataError(f"{path}:{p.line}: {noun}(s) not seen in training: {listed}")


# -- batches ----------------------------------------------------------------------------------


def length_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, bucket: int = 50
) -> list[list[int]]:
    """Example indices grouped into batches of similar length, in a seeded random order.

    The examples are shuffled, cut into pools of ``bucket * batch_size``, each pool sorted by
    length and cut into batches, and the batches shuffled: padding stays small and every epoch
    (one ``generator`` state) gives one reproducible order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    pool = bucket * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """``length_batches`` of one epoch: a function of (``seed``, ``epoch``) only, so the data
    cursor of a checkpoint is just the batch index and a resumed run walks the same batches."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return length_batches(lengths, batch_size, generator)


def pad_batch(sequences: Sequence[Sequence[int]], pad: int = 0) -> tuple[Tensor, Tensor]:
    """(B, T_max) int64 ids padded with ``pad``, and the lengths (B,)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((len(sequences), int(lengths.max()) if len(sequences) else 0), pad,
                     dtype=torch.long)  # fmt: skip
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths
