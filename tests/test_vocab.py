"""Tests for rnnlab.data.vocab: round trips, unknown characters, dtype choice, vocab.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rnnlab.data import DataError, Vocab

TRICKY = [
    "line one\r\nline two\r\n",  # CRLF must survive
    "old mac\rlines\r",  # lone CR
    "nul\x00inside\x00",  # NUL
    "emoji 😀🎉 and 👩‍👩‍👧 family",  # astral plane + ZWJ sequence
    "中文字符，日本語のテキスト",  # CJK
    "\ufeffBOM, tab\t, U+2028\u2028, é composed vs e\u0301 decomposed",
]


@pytest.mark.parametrize("text", TRICKY)
def test_text_round_trip(text: str) -> None:
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.decode(torch.from_numpy(ids)) == text
    assert vocab.decode(ids.tolist()) == text


@pytest.mark.parametrize("text", TRICKY)
def test_byte_round_trip(text: str) -> None:
    vocab = Vocab.byte_level()
    ids = vocab.encode(text)
    assert len(vocab) == 256
    assert ids.tolist() == list(text.encode("utf-8"))
    assert vocab.decode(ids) == text


def test_tokens_sorted_one_code_point_each() -> None:
    vocab = Vocab.from_text("zay😀a\r\n中")
    assert vocab.tokens == sorted(set("zay😀a\r\n中"), key=ord)
    assert all(len(t) == 1 for t in vocab.tokens)
    # Token ids are ranks of code points: sorting ids sorts characters.
    assert vocab.encode("\n\r").tolist() == [0, 1]


def test_counts_and_default_prime() -> None:
    vocab = Vocab.from_text("abbccc")
    assert vocab.counts == [1, 2, 3]
    assert vocab.default_prime() == "c"
    # A vocabulary without a space (char-rnn#44): the prime is still in the vocabulary.
    names = Vocab(tokens=["a", "n", "x"])
    assert names.default_prime() == "a" and names.default_prime() in names
    assert " " not in names


def test_byte_default_prime_is_ascii() -> None:
    counts = [0] * 256
    counts[0xC3], counts[ord("e")] = 100, 5  # most frequent byte overall is not ASCII
    assert Vocab.byte_level(counts).default_prime() == "e"
    assert Vocab.byte_level().default_prime() == "\n"


@pytest.mark.parametrize(
    ("size", "dtype"),
    [
        (65, np.uint8),
        (256, np.uint8),
        (257, np.uint16),
        (300, np.uint16),
        (65536, np.uint16),
        (70000, np.uint32),
    ],
)
def test_dtype_selection(size: int, dtype: type) -> None:
    # Valid, non-surrogate code points from U+0021 upward.
    cps = [c for c in range(0x21, 0x21 + size + 2048) if not 0xD800 <= c <= 0xDFFF][:size]
    vocab = Vocab(tokens=[chr(c) for c in cps])
    assert len(vocab) == size and vocab.dtype == np.dtype(dtype)
    text = "".join(chr(c) for c in cps[::-7])
    assert vocab.decode(vocab.encode(text)) == text
    assert vocab.encode(text).max() < np.iinfo(dtype).max + 1


def test_unknown_characters_error_lists_them() -> None:
    vocab = Vocab.from_text("hello world")
    assert vocab.unseen("héllo☃ h") == ["é", "☃"]
    with pytest.raises(DataError) as err:
        vocab.encode("héllo☃")
    msg = str(err.value)
    assert "é" in msg and "☃" in msg and "\n" not in msg
    assert "--unknown" in msg


def test_unknown_skip_and_replace() -> None:
    vocab = Vocab.from_text("hello world")  # 'l' is the most frequent character
    assert vocab.decode(vocab.encode("héllo☃", unknown="skip")) == "hllo"
    assert vocab.decode(vocab.encode("héllo☃", unknown="replace")) == "hlllol"
    no_counts = Vocab(tokens=vocab.tokens)
    assert no_counts.decode(no_counts.encode("h☃", unknown="replace")) == "h" + vocab.tokens[0]
    with pytest.raises(DataError):
        vocab.encode("h", unknown="ignore")


def test_unseen_newline_is_shown_escaped_on_one_line() -> None:
    vocab = Vocab.from_text("abc")
    with pytest.raises(DataError) as err:
        vocab.encode("a\nb\r")
    assert "\n" not in str(err.value) and "'\\n'" in str(err.value)


def test_decode_rejects_out_of_range() -> None:
    vocab = Vocab.from_text("abc")
    with pytest.raises(DataError, match="outside the vocabulary"):
        vocab.decode([0, 3])
    with pytest.raises(DataError):
        vocab.decode([-1])
    assert vocab.decode([]) == ""


def test_byte_decode_replaces_invalid_utf8() -> None:
    vocab = Vocab.byte_level()
    assert vocab.decode([ord("a"), 0xFF, ord("b")]) == "a\ufffdb"
    assert vocab.decode(np.array([0xE4, 0xB8], dtype=np.uint8)) == "\ufffd"


def test_invalid_vocabularies() -> None:
    with pytest.raises(DataError):
        Vocab(tokens=["b", "a"])
    with pytest.raises(DataError):
        Vocab(tokens=["a", "a"])
    with pytest.raises(DataError):
        Vocab(tokens=["ab"])
    with pytest.raises(DataError):
        Vocab(tokens=[])
    with pytest.raises(DataError):
        Vocab(tokens=["a"], kind="words")
    with pytest.raises(DataError):
        Vocab(tokens=["a", "b"], counts=[1])
    with pytest.raises(DataError):
        Vocab.from_text("")


def test_json_round_trip(tmp_path) -> None:
    vocab = Vocab.from_text("héllo\r\n\x00😀")
    data = vocab.to_json()
    assert data["format_version"] == 1 and data["kind"] == "text"
    assert data["tokens"] == vocab.tokens and data["counts"] == vocab.counts
    again = Vocab.from_json(json.loads(json.dumps(data)))
    assert again == vocab and again.counts == vocab.counts
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.counts == vocab.counts
    assert list(tmp_path.iterdir()) == [tmp_path / "vocab.json"]  # no temp file left
    assert "counts" not in Vocab(tokens=["a"]).to_json()
    byte = Vocab.byte_level()
    assert Vocab.from_json(byte.to_json()) == byte


def test_load_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        Vocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="damaged"):
        Vocab.load(tmp_path / "bad.json")
    (tmp_path / "v2.json").write_text(json.dumps({"format_version": 2, "kind": "text"}))
    with pytest.raises(DataError, match="format_version"):
        Vocab.load(tmp_path / "v2.json")


def test_equality_ignores_counts() -> None:
    assert Vocab.from_text("ab") == Vocab(tokens=["a", "b"])
    assert Vocab.from_text("ab") != Vocab.from_text("abc")


def test_diff() -> None:
    old = Vocab.from_text("abc\n")
    assert old.diff(Vocab.from_text("cab\n")) == ""
    msg = old.diff(Vocab.from_text("abdé\n"))
    assert "2 character(s) added: 'd' (U+0064), 'é' (U+00E9)" in msg
    assert "1 character(s) removed: 'c' (U+0063)" in msg
    assert "\n" not in msg
    assert "kind" in old.diff(Vocab.byte_level())


# -- vocab.json as written by today's runs --------------------------------------------------------
# Literal documents in each format rnnlab writes (char-LM text and bytes, seq2seq, classify,
# captioning), so that a change of vocabulary class keeps old run directories loading.

CHAR_LM_TEXT = '{"format_version": 1, "kind": "text", "tokens": ["\\n", " ", "a", "b", "\\u00e9"], "counts": [2, 3, 7, 1, 1]}'  # noqa: E501
SEQ2SEQ = """{"source": {"tokens": ["<pad>", "<unk>", "</s>", "c", "a", "t"], "num_specials": 3},
 "target": {"tokens": ["<pad>", "<unk>", "<s>", "</s>", "K", "AE1", "T"], "num_specials": 4}}"""
CLASSIFY = """{"text": {"tokens": ["<pad>", "<unk>", "(", ")", "a"], "num_specials": 2},
 "labels": {"tokens": ["open", "closed"], "num_specials": 0}}"""
CAPTION = '{"kind": "words", "words": ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "square"]}'


def test_a_char_lm_vocab_json_of_today_loads_and_round_trips() -> None:
    data = json.loads(CHAR_LM_TEXT)
    vocab = Vocab.from_json(data)
    assert vocab.kind == "text" and len(vocab) == 5
    assert vocab.encode("ab é\n").tolist() == [2, 3, 1, 4, 0]
    assert vocab.decode([4, 2]) == "éa" and vocab.default_prime() == "a"
    assert vocab.to_json() == data
    bytes_doc = {"format_version": 1, "kind": "bytes", "tokens": [chr(i) for i in range(256)]}
    byte = Vocab.from_json(json.loads(json.dumps(bytes_doc)))
    assert byte.kind == "bytes" and byte.encode("é").tolist() == [0xC3, 0xA9]
    assert byte.to_json() == bytes_doc


def test_seq2seq_and_classify_vocab_json_of_today_load_and_round_trip() -> None:
    from rnnlab.data.pairs import Symbols

    for text in (SEQ2SEQ, CLASSIFY):
        data = json.loads(text)
        for part in data.values():
            symbols = Symbols.from_json(part)
            assert symbols.to_json() == part
    seq2seq = json.loads(SEQ2SEQ)
    source = Symbols.from_json(seq2seq["source"])
    target = Symbols.from_json(seq2seq["target"])
    assert source.encode(["c", "a", "t"]) == [3, 4, 5] and source.num_specials == 3
    assert source.encode(["c", "z"], unknown="replace") == [3, 1]
    assert target.decode([2, 4, 5, 6, 3]) == ["K", "AE1", "T"]  # specials dropped
    labels = Symbols.from_json(json.loads(CLASSIFY)["labels"])
    assert labels.id("closed") == 1 and len(labels) == 2


def test_a_caption_vocab_json_of_today_loads_and_round_trips() -> None:
    from rnnlab.data.captions import CaptionVocab

    data = json.loads(CAPTION)
    vocab = CaptionVocab.from_json(data)
    assert vocab.encode(["a", "blue", "square"]) == [4, 3, 6]  # unseen word -> <unk>
    assert vocab.decode([1, 4, 3, 6, 2, 5]) == ["a", "<unk>", "square"]  # stops at <end>
    assert vocab.to_json() == data
