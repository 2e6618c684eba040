"""``rnnlab.data.text``: the one line reader (BOM, line ends, true line numbers, invalid UTF-8,
limits) as every reader of line-based input files sees it, and ``sha256_file``."""

from __future__ import annotations

import hashlib
import io

import pytest

from rnnlab.cli import main
from rnnlab.cli.seq2seq_cmd import read_lines as read_predict_input
from rnnlab.data.errors import DataError, InvalidUTF8Error
from rnnlab.data.pairs import read_labeled, read_pairs, read_rows
from rnnlab.data.text import (
    MAX_FIELD_CHARS,
    Line,
    read_lines,
    read_text,
    sha256_file,
    split_lines,
)

# Characters str.splitlines() breaks at although they are data inside a field.
IN_FIELD = ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\x1d", "\x1e"]


def test_split_lines_cuts_only_at_newline_and_crlf():
    text = "a\u2028b\nc\x85d\r\ne\x0cf\rg\nlast"
    assert split_lines(text) == ["a\u2028b", "c\x85d", "e\x0cf\rg", "last"]
    assert split_lines(text, keepends=True) == ["a\u2028b\n", "c\x85d\r\n", "e\x0cf\rg\n", "last"]
    assert split_lines("") == [] and split_lines("x\n") == ["x"] and split_lines("\n\n") == ["", ""]
    assert "".join(split_lines(text, keepends=True)) == text


def test_read_lines_drops_one_bom_and_numbers_every_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffone\r\n\n\ufeffthree\u2028still three\n".encode())
    assert read_lines(path) == [
        Line("one", 1),
        Line("", 2),
        Line("\ufeffthree\u2028still three", 3),
    ]
    stream = io.BytesIO("\ufeffx\ny".encode())
    assert read_lines(stream, name="<stdin>") == [Line("x", 1), Line("y", 2)]


def test_invalid_utf8_names_file_line_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\n\xe2\x80\xa8sep\nb\xffad\n")
    with pytest.raises(
        InvalidUTF8Error, match=r"bad\.txt:3: invalid UTF-8 \(byte offset 11\)"
    ) as e:
        read_lines(path)
    assert e.value.offset == 11
    with pytest.raises(DataError, match=r"<stdin>:1: invalid UTF-8"):
        read_lines(io.BytesIO(b"\xff"), name="<stdin>")


def test_unreadable_and_oversized_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.txt: cannot read"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)
    (tmp_path / "big.txt").write_text("x" * 11)
    with pytest.raises(DataError, match=r"big\.txt: 11 bytes, more than the 10"):
        read_text(tmp_path / "big.txt", max_bytes=10)
    with pytest.raises(DataError, match=r"<stdin>: more than the 10 bytes"):
        read_text(io.BytesIO(b"x" * 11), name="<stdin>", max_bytes=10)


@pytest.mark.parametrize("char", IN_FIELD)
def test_tsv_field_keeps_line_separators_and_later_lines_keep_their_numbers(tmp_path, char):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"a{char}b\tx\ncd\ty\nef\tz\tq\n", encoding="utf-8", newline="")
    with pytest.raises(DataError, match=r"pairs\.tsv:3: expected 2 tab-separated fields, found 3"):
        read_rows(path)
    path.write_text(f"a{char}b\tx\ncd\ty\n", encoding="utf-8", newline="")
    pairs = read_pairs(path)
    assert [(p.source, p.target, p.line) for p in pairs] == [
        (["a", char, "b"], ["x"], 1),
        (["c", "d"], ["y"], 2),
    ]


@pytest.mark.parametrize("char", IN_FIELD)
def test_csv_field_keeps_line_separators_and_later_lines_keep_their_numbers(tmp_path, char):
    path = tmp_path / "rows.csv"
    path.write_text(f'a{char}b,pos\n"c\nd",neg\ne,\n', encoding="utf-8", newline="")
    with pytest.raises(DataError, match=r"rows\.csv:4: empty label"):
        read_labeled(path)
    path.write_text(f'a{char}b,pos\n"c\nd",neg\n', encoding="utf-8", newline="")
    rows = read_labeled(path)
    assert [(r.source, r.target, r.line) for r in rows] == [
        (["a", char, "b"], ["pos"], 1),
        (["c", "\n", "d"], ["neg"], 2),
    ]


@pytest.mark.parametrize("suffix,sep", [(".tsv", "\t"), (".csv", ",")])
def test_bom_is_dropped_once_from_pairs_and_rows(tmp_path, suffix, sep):
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(f"\ufeffab{sep}x\r\nc{sep}y\r\n".encode())
    assert read_rows(path) == [("ab", "x", 1), ("c", "y", 2)]


@pytest.mark.parametrize("suffix,sep", [(".tsv", "\t"), (".csv", ",")])
def test_a_file_with_lone_carriage_returns_says_so(tmp_path, suffix, sep):
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(f"ab{sep}x\ncd{sep}y\ref{sep}z\r".encode())
    with pytest.raises(DataError, match=rf"rows\{suffix}:2: .*carriage return without a newline"):
        read_rows(path)


@pytest.mark.parametrize("suffix,sep", [(".tsv", "\t"), (".csv", ",")])
def test_a_field_over_the_limit_is_refused_with_file_and_line(tmp_path, suffix, sep):
    path = tmp_path / f"rows{suffix}"
    at_limit = "a" * MAX_FIELD_CHARS
    path.write_text(f"ab{sep}x\n{at_limit}{sep}{at_limit}\n")
    assert read_rows(path)[1] == (at_limit, at_limit, 2)
    path.write_text(f"ab{sep}x\ncd{sep}y\n{at_limit}{sep}b{at_limit}\n")
    with pytest.raises(DataError, match=rf"rows\{suffix}:3: field 2 of 10,001 characters, more "
                       r"than the 10,000 allowed"):  # fmt: skip
        read_pairs(path)


def test_a_ten_million_character_line_is_refused(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("ab\tba\n" + "a" * 10_000_000 + "\tb\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:2: field 1 of 10,000,000 characters") as e:
        read_pairs(path)
    assert "\n" not in str(e.value)


def test_predict_input_lines(tmp_path, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffabc\r\n\n d\u2028e \nf\x0cg\n".encode())
    assert read_predict_input(str(path)) == [
        ("abc", f"{path}:1"),
        ("d\u2028e", f"{path}:3"),
        ("f\x0cg", f"{path}:4"),
    ]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\ufeffx\ny\n".encode())))
    assert read_predict_input("-") == [("x", "<stdin>:1"), ("y", "<stdin>:2")]
    path.write_text("ok\n" + "a" * (MAX_FIELD_CHARS + 1) + "\n")
    with pytest.raises(DataError, match=rf"in\.txt:2: line of {MAX_FIELD_CHARS + 1:,} characters"):
        read_predict_input(str(path))


def test_bom_in_predict_input_is_not_a_symbol(tmp_path, capsys):
    """Before the shared reader a BOM was an unseen symbol of line 1 (or, with ``--unknown
    replace``, an ``<unk>`` that changed line 1's answer)."""
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ["abc", "cab", "bca", "acb"] * 4))
    run_dir = tmp_path / "run"
    code = main(["seq2seq", "train", "--pairs", str(train), "--out-dir", str(run_dir),
                 "--max-steps", "3", "--eval-every", "3", "--val-frac", "0.2", "--hidden-size",
                 "8", "--embedding-size", "4", "--num-layers", "1", "--batch-size", "4",
                 "--eval-size", "0", "--threads", "1", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["seq2seq", "predict", str(run_dir), "abc", "cab"]) == 0
    expected = capsys.readouterr().out
    given = tmp_path / "in.txt"
    given.write_bytes("\ufeffabc\r\ncab\r\n".encode())
    for extra in ([], ["--unknown", "replace"]):
        code = main(["seq2seq", "predict", str(run_dir), "--input", str(given), *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out == expected


def test_bom_in_classify_predict_input_is_not_a_symbol(tmp_path, capsys):
    rows = tmp_path / "rows.tsv"
    texts = [f"{a}{b}{c}{d}" for a in "ab" for b in "ab" for c in "ab" for d in "ab"]
    rows.write_text("".join(f"{t}\t{t[0]}\n" for t in texts))
    run_dir = tmp_path / "run"
    code = main(["classify", "train", str(rows), "--out-dir", str(run_dir), "--max-steps", "3",
                 "--eval-every", "3", "--hidden-size", "4", "--threads", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["classify", "predict", str(run_dir), "ab", "ba"]) == 0
    expected = capsys.readouterr().out
    given = tmp_path / "in.txt"
    given.write_bytes("\ufeffab\nba\n".encode())
    for extra in ([], ["--unknown", "replace"]):
        code = main(["classify", "predict", str(run_dir), "--input", str(given), *extra])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert out == expected


def test_sha256_file_matches_hashlib_for_any_chunk_size(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    for chunk_size in (1, 7, 1 << 20):
        assert sha256_file(path, chunk_size) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
    with pytest.raises(OSError):
        sha256_file(tmp_path / "missing")
