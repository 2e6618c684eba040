"""Tests for rnnlab.data.corpus: streaming encode, bad inputs, the cache, corpus_info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnlab.data import Corpus, DataError, InvalidUTF8Error, Vocab, corpus_info, prepare_corpus
from rnnlab.data import corpus as corpus_mod
from rnnlab.data.corpus import iter_text

MIXED = "Hello, wörld!\r\nemoji 😀🎉👩‍👩‍👧\rCJK 中文字符 日本語\x00end\n" * 7


pytestmark = pytest.mark.usefixtures("cache_env")  # tests/conftest.py


def write(tmp_path: Path, data: bytes | str, name: str = "input.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def all_tokens(corpus: Corpus) -> np.ndarray:
    return np.concatenate([corpus.split(s) for s in ("train", "val", "test")])


def test_round_trip_keeps_crlf_cr_nul(tmp_path: Path, cache_env: Path) -> None:
    corpus = prepare_corpus(write(tmp_path, MIXED))
    assert corpus.directory.parent == cache_env / "corpora"
    assert corpus.vocab.decode(all_tokens(corpus)) == MIXED
    assert corpus.n_tokens == len(MIXED)
    assert corpus.meta["has_crlf"] and corpus.meta["crlf_count"] == 7
    assert corpus.vocab == Vocab.from_text(MIXED)
    assert corpus.vocab.counts == Vocab.from_text(MIXED).counts
    assert sorted(p.name for p in corpus.directory.iterdir()) == [
        "meta.json",
        "tokens.bin",
        "vocab.json",
    ]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7])
def test_small_chunks_equal_whole_file(tmp_path: Path, chunk_size: int) -> None:
    # Multi-byte characters straddle chunk boundaries (selectel/pyte#48).
    path = write(tmp_path, MIXED)
    assert "".join(iter_text(path, chunk_size=chunk_size)) == MIXED
    whole = prepare_corpus(path, tmp_path / "a", chunk_size=1 << 20)
    small = prepare_corpus(path, tmp_path / "b", chunk_size=chunk_size)
    assert small.vocab == whole.vocab and small.vocab.counts == whole.vocab.counts
    np.testing.assert_array_equal(all_tokens(small), all_tokens(whole))
    np.testing.assert_array_equal(all_tokens(small), Vocab.from_text(MIXED).encode(MIXED))
    assert small.meta["crlf_count"] == whole.meta["crlf_count"] == 7


@pytest.mark.parametrize(("distinct", "dtype"), [(65, "uint8"), (300, "uint16"), (70000, "uint32")])
def test_token_file_dtype(tmp_path: Path, distinct: int, dtype: str) -> None:
    cps = [c for c in range(0x21, 0x21 + distinct + 2048) if not 0xD800 <= c <= 0xDFFF][:distinct]
    text = "".join(map(chr, cps)) + "".join(map(chr, cps[::-3]))
    corpus = prepare_corpus(write(tmp_path, text), chunk_size=4096)
    assert len(corpus.vocab) == distinct
    assert corpus.meta["dtype"] == dtype and corpus.split("train").dtype == np.dtype(dtype)
    assert (corpus.directory / "tokens.bin").stat().st_size == len(text) * np.dtype(dtype).itemsize
    assert corpus.vocab.decode(all_tokens(corpus)) == text


def test_empty_file_writes_nothing(tmp_path: Path, cache_env: Path) -> None:
    with pytest.raises(DataError, match="training file is empty"):
        prepare_corpus(write(tmp_path, b""))
    assert not cache_env.exists()


def test_invalid_utf8_names_byte_offset(tmp_path: Path) -> None:
    with pytest.raises(InvalidUTF8Error) as err:
        prepare_corpus(write(tmp_path, b"abc\xff"))
    msg = str(err.value)
    assert err.value.offset == 3 and "offset 3" in msg
    assert "--bytes" in msg and "--errors replace" in msg and "\n" not in msg


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1 << 20])
@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"0123456789" + "é".encode()[:1] + b"x", 10),  # lead byte, bad continuation, mid-file
        ("aé中".encode() + "😀".encode()[:3], 6),  # truncated at end of file
        (b"\x80abc", 0),
        ("中文".encode() * 5 + b"\xc0\xaf", 30),  # overlong encoding
    ],
)
def test_invalid_utf8_offset_across_chunks(
    tmp_path: Path, data: bytes, offset: int, chunk_size: int
) -> None:
    with pytest.raises(InvalidUTF8Error) as err:
        prepare_corpus(write(tmp_path, data), chunk_size=chunk_size)
    assert err.value.offset == offset
    with pytest.raises(UnicodeDecodeError) as ref:
        data.decode("utf-8")
    assert ref.value.start == offset


def test_errors_replace(tmp_path: Path) -> None:
    data = b"abc\xff def \xe4\xb8"
    corpus = prepare_corpus(write(tmp_path, data), errors="replace", chunk_size=5)
    assert "\ufffd" in corpus.vocab.tokens
    assert corpus.vocab.decode(all_tokens(corpus)) == data.decode("utf-8", "replace")
    with pytest.raises(DataError, match="errors"):
        prepare_corpus(write(tmp_path, data), errors="ignore")


def test_byte_level_binary_file(tmp_path: Path) -> None:
    data = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)) + b"\x00\xff"
    corpus = prepare_corpus(write(tmp_path, data), byte_level=True, chunk_size=999)
    assert len(corpus.vocab) == 256 and corpus.vocab.kind == "bytes"
    assert corpus.meta["dtype"] == "uint8"
    assert all_tokens(corpus).tobytes() == data
    assert sum(corpus.vocab.counts) == len(data)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        prepare_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        prepare_corpus(tmp_path)
    with pytest.raises(DataError, match="is a directory"):
        corpus_info(tmp_path)


@pytest.mark.parametrize("split", [(0.9, 0.2, 0.0), (1.1, -0.1, 0.0), (0.5, 0.5), (0.9, 0.1, 0.1)])
def test_bad_split_fractions(tmp_path: Path, split: tuple) -> None:
    with pytest.raises(DataError, match="split"):
        prepare_corpus(write(tmp_path, "hello"), split=split)


def test_splits_are_contiguous_ranges(tmp_path: Path) -> None:
    text = "".join(chr(0x61 + i % 26) for i in range(1000))
    corpus = prepare_corpus(write(tmp_path, text), split=(0.8, 0.15, 0.05))
    sizes = [len(corpus.split(s)) for s in ("train", "val", "test")]
    assert sizes == [800, 150, 50]
    assert corpus.vocab.decode(corpus.split("val")) == text[800:950]
    nanogpt = prepare_corpus(corpus.meta["source"], split=(0.9, 0.1, 0.0))
    assert len(nanogpt.split("test")) == 0 and len(nanogpt.split("val")) == 100
    with pytest.raises(DataError, match="unknown split"):
        corpus.split("dev")


def test_split_is_fresh_read_only_memmap(tmp_path: Path) -> None:
    corpus = prepare_corpus(write(tmp_path, MIXED))
    a, b = corpus.split("train"), corpus.split("train")
    assert isinstance(a, np.memmap) and a is not b
    with pytest.raises(ValueError):
        a[0] = 1


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MIXED)
    first = prepare_corpus(path)
    mtime = (first.directory / "tokens.bin").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache entry was rebuilt")

    monkeypatch.setattr(corpus_mod, "_scan", no_rebuild)
    second = prepare_corpus(path)
    assert second.directory == first.directory
    assert (second.directory / "tokens.bin").stat().st_mtime_ns == mtime
    # Other options are other entries.
    monkeypatch.undo()
    assert prepare_corpus(path, byte_level=True).directory != first.directory
    assert prepare_corpus(path, split=(0.5, 0.5, 0.0)).directory != first.directory


def test_cache_rebuilt_when_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "first version\n")
    old = prepare_corpus(path)
    path.write_text("second version, edited in place\n")
    new = prepare_corpus(path)
    assert new.directory != old.directory
    assert new.vocab.decode(all_tokens(new)) == "second version, edited in place\n"
    assert new.meta["source_size"] == path.stat().st_size


def test_killed_build_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MIXED)
    cache = tmp_path / "c"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus_mod, "_encode", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(path, cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    # A temp dir of a process that died mid-build (SIGKILL skips cleanup) is swept away.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = cache / f".tmp-deadbeef-{int(dead.stdout)}-0000"
    stale.mkdir()
    (stale / "tokens.bin").write_bytes(b"\0" * 10)
    corpus = prepare_corpus(path, cache)
    assert [p.name for p in cache.iterdir()] == [corpus.directory.name]


def test_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    path = write(tmp_path, MIXED)
    corpus = prepare_corpus(path)
    with open(corpus.directory / "tokens.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match="incomplete"):
        Corpus.open(corpus.directory)
    again = prepare_corpus(path)
    assert again.vocab.decode(all_tokens(again)) == MIXED


def test_corpus_open_and_meta(tmp_path: Path) -> None:
    path = write(tmp_path, MIXED)
    corpus = prepare_corpus(path)
    meta = json.loads((corpus.directory / "meta.json").read_text())
    assert meta["source"] == str(path.resolve())
    assert meta["source_size"] == len(MIXED.encode())
    assert meta["n_tokens"] == len(MIXED) and meta["vocab_size"] == len(corpus.vocab)
    assert len(meta["source_sha256"]) == 64
    reopened = Corpus.open(corpus.directory)
    assert reopened.vocab == corpus.vocab and reopened.meta == corpus.meta


def test_encode_file_with_training_vocab(tmp_path: Path) -> None:
    corpus = prepare_corpus(write(tmp_path, MIXED))
    other = write(tmp_path, "Hello 😀\r\n中", "eval.txt")
    ids = corpus.encode_file(other, chunk_size=3)
    assert corpus.vocab.decode(ids) == "Hello 😀\r\n中"
    bad = write(tmp_path, "Hello ☃ zzz é", "bad.txt")
    with pytest.raises(DataError) as err:
        corpus.encode_file(bad, chunk_size=4)
    assert "☃" in str(err.value) and "é" in str(err.value) and "'z'" in str(err.value)


def test_corpus_info(tmp_path: Path) -> None:
    info = corpus_info(write(tmp_path, "ab\r\ncd\re\x00é中\n"))
    assert info["size_bytes"] == len("ab\r\ncd\re\x00é中\n".encode())
    assert info["chars"] == 12 and info["distinct"] == 10
    assert (info["crlf"], info["lone_cr"], info["nul"], info["non_ascii"]) == (1, 1, 1, 2)
    assert info["lines"] == 2 and info["valid_utf8"] and info["first_invalid_byte"] is None
    crlf_split = corpus_info(write(tmp_path, "a\r\nb" * 3), chunk_size=2)
    assert crlf_split["crlf"] == 3 and crlf_split["lone_cr"] == 0
    bad = corpus_info(write(tmp_path, b"abc\xffd"))
    assert not bad["valid_utf8"] and bad["first_invalid_byte"] == 3 and bad["chars"] == 5
    assert corpus_info(write(tmp_path, b""))["chars"] == 0


RSS_SCRIPT = """
import json, sys
import rnnlab.data as data
import rnnlab.data.tbptt as tbptt

tbptt.IN_MEMORY_BYTES = 0  # the memmap path (splits under 64 MiB are read into memory by design)

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

base = status("VmRSS:")
try:  # reset the high-water mark to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
corpus = data.prepare_corpus(sys.argv[1])
batches = data.StreamBatcher(corpus.split("train"), 32, 128)
for k in range(batches.num_batches):  # read the whole split through the memmap
    batches.get(k)
print(json.dumps({"growth": status("VmHWM:") - base, "n": corpus.n_tokens}))
"""


def peak_rss_growth(path: Path, cache: Path) -> int:
    env = {**os.environ, "RNNLAB_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(path)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)["growth"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    # ~19 MB with emoji, so a naive read() would hold a 64 MB UCS-4 str before encoding it.
    rng = np.random.default_rng(0)
    alphabet = np.array([ord(c) for c in "abcdefghij klmnop\nqrstuvwxyzé中😀.,"], dtype="<u4")
    text = alphabet[rng.integers(0, len(alphabet), 16_000_000)].tobytes().decode("utf-32-le")
    big, small = write(tmp_path, text, "big.txt"), write(tmp_path, text[:4_000_000], "small.txt")
    del text
    growth_big = peak_rss_growth(big, tmp_path / "c1")
    growth_small = peak_rss_growth(small, tmp_path / "c2")
    size, extra = big.stat().st_size, big.stat().st_size - small.stat().st_size
    mb = f"{growth_small / 1e6:.1f} MB -> {growth_big / 1e6:.1f} MB for {size / 1e6:.1f} MB"
    assert growth_big < size, f"peak RSS grew far too much: {mb}"  # far below 2x the file
    # A whole-file read would add >= 1x the extra bytes (4x as a UCS-4 str); allow noise.
    assert growth_big - growth_small < 0.5 * extra, f"peak RSS scales with the file: {mb}"


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_entry(tmp_path, monkeypatch):
    """The token file's space is reserved before it is written through a memory map (a mapped
    write past a full disk is a SIGBUS, not an exception)."""
    import errno

    calls = []

    def full(fd, offset, length):
        calls.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(corpus_mod.os, "posix_fallocate", full)
    path = tmp_path / "in.txt"
    path.write_text("hello world\n" * 1000, encoding="utf-8")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=f"no space left on {cache}: 12,000 bytes needed"):
        prepare_corpus(path, cache)
    assert calls == [12000]
    assert [p.name for p in cache.iterdir()] == []
