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
    with pytest.raises(DataError, match="kind"):  # was kind="words", a kind since format 2
        Vocab(tokens=["a"], kind="chars")
    with pytest.raises(DataError):
        Vocab(tokens=["a", "b"], counts=[1])
    with pytest.raises(DataError):
        Vocab.from_text("")


def test_json_round_trip(tmp_path) -> None:
    vocab = Vocab.from_text("héllo\r\n\x00😀")
    data = vocab.to_json()
    assert data["format_version"] == 2 and data["kind"] == "text" and data["num_specials"] == 0
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
    (tmp_path / "v3.json").write_text(json.dumps({"format_version": 3, "kind": "text"}))
    with pytest.raises(DataError, match="format_version"):
        Vocab.load(tmp_path / "v3.json")
    (tmp_path / "v2.json").write_text(json.dumps({"format_version": 2, "kind": "text"}))
    with pytest.raises(DataError, match="v2.json: .*lacks 'tokens'"):
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


def _v2(kind: str, tokens: list[str], num_specials: int = 0, **extra: object) -> dict:
    """The format-2 document a vocabulary read from an older file is written back as."""
    doc = {"format_version": 2, "kind": kind, "tokens": tokens, "num_specials": num_specials}
    return {**doc, **extra}


# Each old document loads, behaves as it did, is written back as format 2 with the same tokens,
# specials and counts (pinned literally), and that loads back equal. Writing format 2 is what
# merging the classes asks; before it, these tests also pinned to_json() == the old document.


def test_a_char_lm_vocab_json_of_today_loads_and_round_trips() -> None:
    data = json.loads(CHAR_LM_TEXT)
    vocab = Vocab.from_json(data)
    assert vocab.kind == "text" and len(vocab) == 5
    assert vocab.encode("ab é\n").tolist() == [2, 3, 1, 4, 0]
    assert vocab.decode([4, 2]) == "éa" and vocab.default_prime() == "a"
    assert vocab.to_json() == _v2("text", data["tokens"], counts=data["counts"])
    assert Vocab.from_json(vocab.to_json()) == vocab
    assert Vocab.from_json(vocab.to_json()).counts == data["counts"]
    bytes_doc = {"format_version": 1, "kind": "bytes", "tokens": [chr(i) for i in range(256)]}
    byte = Vocab.from_json(json.loads(json.dumps(bytes_doc)))
    assert byte.kind == "bytes" and byte.encode("é").tolist() == [0xC3, 0xA9]
    assert byte.to_json() == _v2("bytes", bytes_doc["tokens"])
    assert Vocab.from_json(json.loads(json.dumps(byte.to_json()))) == byte


def test_seq2seq_and_classify_vocab_json_of_today_load_and_round_trip() -> None:
    from rnnlab.data.pairs import Symbols

    for text in (SEQ2SEQ, CLASSIFY):
        data = json.loads(text)
        for part in data.values():
            for cls in (Symbols, Vocab):
                symbols = cls.from_json(part)
                assert symbols.kind == "symbols" and isinstance(symbols, cls)
                assert symbols.to_json() == _v2("symbols", part["tokens"], part["num_specials"])
                assert Symbols.from_json(symbols.to_json()) == symbols
    seq2seq = json.loads(SEQ2SEQ)
    source = Symbols.from_json(seq2seq["source"])
    target = Symbols.from_json(seq2seq["target"])
    assert source.encode(["c", "a", "t"]) == [3, 4, 5] and source.num_specials == 3
    assert source.encode(["c", "z"], unknown="replace") == [3, 1]
    assert target.decode([2, 4, 5, 6, 3]) == ["K", "AE1", "T"]  # specials dropped
    labels = Symbols.from_json(json.loads(CLASSIFY)["labels"])
    assert labels.id("closed") == 1 and len(labels) == 2
    assert (source.pad_id, source.unk_id, source.start_id, source.end_id) == (0, 1, None, 2)
    assert (target.pad_id, target.unk_id, target.start_id, target.end_id) == (0, 1, 2, 3)
    assert labels.unk_id is None and labels.pad_id is None


def test_a_caption_vocab_json_of_today_loads_and_round_trips() -> None:
    from rnnlab.data.captions import CaptionVocab

    data = json.loads(CAPTION)
    vocab = CaptionVocab.from_json(data)
    assert vocab.encode(["a", "blue", "square"]) == [4, 3, 6]  # unseen word -> <unk>
    assert vocab.decode([1, 4, 3, 6, 2, 5]) == ["a", "<unk>", "square"]  # stops at <end>
    assert vocab.to_json() == _v2("words", data["words"], 4)
    assert CaptionVocab.from_json(vocab.to_json()) == vocab
    plain = Vocab.from_json(data)  # the one class reads it too, and decodes the same way
    assert plain == vocab and plain.num_specials == 4 and type(plain) is Vocab
    assert plain.decode([1, 4, 3, 6, 2, 5]) == ["a", "<unk>", "square"]
    assert plain.encode(["a", "blue"], unknown="replace") == [4, 3]


def test_old_documents_with_damage_are_refused() -> None:
    from rnnlab.data.captions import CaptionVocab
    from rnnlab.data.pairs import Symbols

    bad = [
        ({"tokens": ["a", 1], "num_specials": 0}, "list of strings"),
        ({"tokens": ["a", "b"], "num_specials": 3}, "num_specials"),
        ({"tokens": ["a", "a"], "num_specials": 0}, "occurs twice"),
        ({"tokens": ["a", ""], "num_specials": 0}, "non-empty"),
        ({"kind": "words", "words": ["<pad>", "<start>"]}, "num_specials"),
        ({"format_version": 1, "kind": "symbols", "tokens": ["ab"]}, "text or bytes"),
        ({"format_version": 2, "kind": "text", "tokens": ["a"], "counts": ["1"]}, "counts"),
        ({"tokens": ["a"]}, "format_version"),
        (["a", "b"], "must be an object"),
    ]
    for doc, match in bad:
        with pytest.raises(DataError, match=f"runs/x/vocab.json: .*{match}"):
            Vocab.from_json(doc, "runs/x/vocab.json")
    # The old names refuse a vocabulary of another kind, naming the file.
    with pytest.raises(DataError, match="v.json: expected a symbols vocabulary"):
        Symbols.from_json(json.loads(CHAR_LM_TEXT), "v.json")
    with pytest.raises(DataError, match="v.json: expected a caption word vocabulary"):
        CaptionVocab.from_json(json.loads(SEQ2SEQ)["target"], "v.json")
    words = {"kind": "words", "words": ["<pad>", "<unk>", "<start>", "<end>", "a"]}
    with pytest.raises(DataError, match="expected .* first"):
        CaptionVocab.from_json(words)
    assert Vocab.from_json(words).num_specials == 4  # the one class only counts them


# -- one vocabulary type: every kind --------------------------------------------------------------


@pytest.mark.parametrize(
    "vocab",
    [
        Vocab.from_text("héllo\r\n😀"),
        Vocab.byte_level(list(range(256))),
        Vocab.build([["c", "a", "t"], ["a", "c", "t"]], ("<pad>", "<unk>", "</s>")),
        Vocab.build(
            [["a", "red", "square"], ["a", "dot"]],
            ("<pad>", "<start>", "<end>", "<unk>"),
            kind="words",
            order="frequency",
        ),  # fmt: skip
    ],
    ids=["text", "bytes", "symbols", "words"],
)
def test_every_kind_round_trips_through_vocab_json(vocab: Vocab, tmp_path) -> None:
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.counts == vocab.counts and loaded.kind == vocab.kind
    assert loaded.num_specials == vocab.num_specials and type(loaded) is Vocab
    doc = json.loads((tmp_path / "vocab.json").read_text())
    assert doc["format_version"] == 2 and set(doc) == {
        "format_version", "kind", "tokens", "num_specials", "counts"}  # fmt: skip
    if vocab.kind in ("text", "bytes"):
        text = "héllo\r\n"
        assert loaded.decode(loaded.encode(text)) == text
    else:
        seq = vocab.tokens[vocab.num_specials :]
        assert loaded.decode(loaded.encode(seq)) == seq
        assert loaded.encode(seq) == list(range(vocab.num_specials, len(vocab)))


def test_build_orders_counts_and_min_count() -> None:
    seqs = [["b", "a", "b"], ["c", "a", "b"], ["d"]]
    first = Vocab.build(seqs, ("<pad>",))
    assert first.tokens == ["<pad>", "b", "a", "c", "d"] and first.kind == "symbols"
    assert first.counts == [0, 3, 2, 1, 1] and first.num_specials == 1
    freq = Vocab.build(seqs, ("<pad>",), kind="words", order="frequency")
    assert freq.tokens == ["<pad>", "b", "a", "c", "d"]  # ties (c, d) alphabetical
    assert Vocab.build(seqs, order="frequency", min_count=2).tokens == ["b", "a"]
    assert Vocab.build([["<pad>", "x"]], ("<pad>",)).tokens == ["<pad>", "x"]  # specials once
    assert Vocab.build(iter(seqs)).tokens == ["b", "a", "c", "d"]  # one pass over a generator
    for bad in ({"kind": "text"}, {"order": "alphabetical"}, {"min_count": 0}):
        with pytest.raises(ValueError):
            Vocab.build(seqs, **bad)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="empty"):
        Vocab.build([[]])


def test_symbol_encode_policies_and_where() -> None:
    vocab = Vocab.build([["x", "y", "y"]], ("<pad>", "<unk>"))
    with pytest.raises(DataError, match=r"^pairs.tsv:3: symbol\(s\) not seen in training: 'z'"):
        vocab.encode(["x", "z", "z"], where="pairs.tsv:3")
    assert vocab.encode(["x", "z"], unknown="skip") == [2]
    assert vocab.encode(["x", "z"], unknown="replace") == [2, 1]
    no_unk = Vocab.build([["x", "y", "y"]])  # no <unk>: the most frequent token replaces
    assert no_unk.encode(["q"], unknown="replace") == [1]
    assert Vocab(["x", "y"], kind="symbols").encode(["q"], unknown="replace") == [0]
    words = Vocab.build([["hi"]], ("<unk>",), kind="words")
    with pytest.raises(DataError, match=r"word\(s\) not seen"):
        words.encode(["yo"])
    with pytest.raises(TypeError, match="list of tokens"):
        vocab.encode("xy")
    with pytest.raises(TypeError, match="encodes a str"):
        Vocab.from_text("xy").encode(["x", "y"])
    with pytest.raises(DataError, match="^a.txt: 1 character"):
        Vocab.from_text("xy").encode("xz", where="a.txt")


def test_symbol_decode_options_and_range() -> None:
    specials = ("<pad>", "<s>", "</s>", "<unk>")
    vocab = Vocab.build([["a", "b"]], specials)
    ids = [1, 4, 3, 2, 5, 0]
    assert vocab.decode(ids) == ["a", "b"]  # symbols: every special dropped
    assert vocab.decode(ids, until_end=True) == ["a"]
    assert vocab.decode(ids, keep_unk=True) == ["a", "<unk>", "b"]
    words = Vocab(list(vocab.tokens), 4, kind="words")
    assert words.decode(ids) == ["a", "<unk>"]  # words: a sentence
    assert words.decode(ids, until_end=False, keep_unk=False) == ["a", "b"]
    assert words.decode(torch.tensor(ids)) == words.decode(np.array(ids)) == ["a", "<unk>"]
    assert vocab.decode([]) == []
    with pytest.raises(DataError, match="outside the vocabulary"):
        vocab.decode([6])
    with pytest.raises(DataError, match="outside the vocabulary"):
        vocab.decode([-1])  # was dropped as a special by Symbols.decode


def test_specials_ids_membership_and_equality() -> None:
    from rnnlab.data.captions import CaptionVocab
    from rnnlab.data.pairs import Symbols

    words = CaptionVocab.build([["a", "b", "a"]])
    assert (words.pad_id, words.start_id, words.end_id, words.unk_id) == (0, 1, 2, 3)
    plain = Vocab(words.tokens, 4, kind="words")
    assert plain == words and hash(plain) == hash(words)  # equal across the old names
    assert plain != Vocab(words.tokens, 3, kind="words") != Vocab(words.tokens, 4, kind="symbols")
    assert "a" in words and "z" not in words and words.id("a") == 4
    with pytest.raises(KeyError):
        words.id("z")
    text = Vocab.from_text("ab")
    assert text.id("b") == 1 and text.pad_id is None and text.num_specials == 0
    with pytest.raises(KeyError):
        text.id("c")
    assert Symbols(["<pad>", "x"], 1) == Vocab(["<pad>", "x"], 1, kind="symbols")
    with pytest.raises(DataError, match="symbols"):
        Symbols(["a"], kind="words")
    with pytest.raises(DataError, match="no special tokens"):
        Vocab(["a", "b"], 1)
    with pytest.raises(DataError, match="num_specials"):
        Vocab(["a"], True, kind="symbols")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        words.default_prime()
    with pytest.raises(TypeError):
        Vocab.byte_level().lookup(np.array([65], dtype=np.uint32))


def test_lookup_is_public_for_the_corpus() -> None:
    vocab = Vocab.from_text("ac")
    ids, known = vocab.lookup(np.array([ord("a"), ord("b"), ord("c"), 0x1F600], dtype=np.uint32))
    assert ids.tolist() == [0, -1, 1, -1] and known.tolist() == [True, False, True, False]


def test_diff_of_symbols() -> None:
    old = Vocab.build([["AH", "K"]], ("<pad>",))
    assert old.diff(Vocab.build([["AH", "K"]], ("<pad>",))) == ""
    msg = old.diff(Vocab.build([["AH", "T"]], ("<pad>",)))
    assert "1 token(s) added: 'T'" in msg and "1 token(s) removed: 'K'" in msg
    assert "another order" in old.diff(Vocab.build([["K", "AH"]], ("<pad>",)))
