"""Tests for rnnlab.data.tbptt: the B-stream layout against a naive construction, edge sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.data import DataError, StreamBatcher, Vocab, prepare_corpus


def naive_batches(tokens: list[int], batch_size: int, seq_len: int) -> list[tuple[list, list]]:
    """The layout spelled out with Python lists: B streams of N // B tokens, T-sized chunks."""
    length = len(tokens) // batch_size
    streams = [tokens[b * length : (b + 1) * length] for b in range(batch_size)]
    batches, k = [], 0
    while (k + 1) * seq_len + 1 <= length:
        x = [s[k * seq_len : (k + 1) * seq_len] for s in streams]
        y = [s[k * seq_len + 1 : (k + 1) * seq_len + 1] for s in streams]
        batches.append((x, y))
        k += 1
    return batches


@pytest.mark.parametrize(
    ("n", "batch_size", "seq_len"), [(1000, 4, 7), (1001, 3, 10), (97, 1, 5), (64, 8, 1)]
)
def test_matches_naive_layout(n: int, batch_size: int, seq_len: int) -> None:
    tokens = np.random.default_rng(n).integers(0, 50, n).astype(np.uint8)
    batcher = StreamBatcher(tokens, batch_size, seq_len)
    expected = naive_batches(tokens.tolist(), batch_size, seq_len)
    assert batcher.num_batches == len(batcher) == len(expected)
    for k, (x, y) in enumerate(batcher):
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape == (batch_size, seq_len)
        assert x.is_contiguous() and y.is_contiguous()
        assert x.tolist() == expected[k][0] and y.tolist() == expected[k][1]


def test_docstring_diagram() -> None:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = Vocab.from_text(letters)
    batcher = StreamBatcher(vocab.encode(letters), batch_size=3, seq_len=2)
    assert batcher.stream_len == 8 and batcher.num_batches == 3

    def rows(t: torch.Tensor) -> list[str]:
        return [vocab.decode(r) for r in t]

    x0, y0 = batcher.get(0)
    assert rows(x0) == ["ab", "ij", "qr"] and rows(y0) == ["bc", "jk", "rs"]
    x1, y1 = batcher.get(1)
    assert rows(x1) == ["cd", "kl", "st"] and rows(y1) == ["de", "lm", "tu"]
    x2, y2 = batcher.get(2)
    assert rows(x2) == ["ef", "mn", "uv"] and rows(y2) == ["fg", "no", "vw"]


def test_y_is_x_shifted_and_streams_continue() -> None:
    tokens = np.arange(5000, dtype=np.int64) % 251
    batcher = StreamBatcher(tokens, 5, 16)
    prev = None
    for x, y in batcher:
        assert torch.equal(x[:, 1:], y[:, :-1])
        if prev is not None:  # row b of batch k+1 continues row b of batch k
            assert torch.equal(x[:, 0], prev[:, -1])
        prev = y


def test_too_short_names_both_numbers() -> None:
    with pytest.raises(DataError) as err:
        StreamBatcher(np.zeros(10 * 51 - 1, dtype=np.uint8), batch_size=10, seq_len=50)
    msg = str(err.value)
    assert "509" in msg and "510" in msg and "\n" not in msg
    assert "--batch-size" in msg and "--seq-len" in msg and "--val-frac" in msg
    with pytest.raises(DataError, match="the val split has 3 tokens.*larger --val-frac"):
        StreamBatcher(np.zeros(3, dtype=np.uint8), 2, 2, name="val")
    with pytest.raises(DataError, match="has 0 tokens"):
        StreamBatcher(np.zeros(0, dtype=np.uint8), 1, 1)


def test_exact_minimum_gives_one_batch() -> None:
    tokens = np.arange(4 * 9, dtype=np.uint16)
    batcher = StreamBatcher(tokens, batch_size=4, seq_len=8)
    assert batcher.num_batches == 1
    x, y = batcher.get(0)
    assert x[0].tolist() == list(range(8)) and y[-1].tolist() == list(range(28, 36))


def test_bad_arguments() -> None:
    tokens = np.arange(100)
    for bad in (0, -1, 2.5):
        with pytest.raises(DataError):
            StreamBatcher(tokens, bad, 4)
        with pytest.raises(DataError):
            StreamBatcher(tokens, 4, bad)
    with pytest.raises(DataError, match="1-D"):
        StreamBatcher(tokens.reshape(10, 10), 2, 2)
    with pytest.raises(DataError, match="1-D"):
        StreamBatcher(np.zeros(100, dtype=np.float32), 2, 2)
    with pytest.raises(IndexError):
        StreamBatcher(tokens, 2, 4).get(12)


def test_cursor_wraps_into_next_epoch() -> None:
    batcher = StreamBatcher(np.arange(100), 2, 6)  # L = 50, 8 batches
    seen = [batcher.next_batch()[0][0, 0].item() for _ in range(10)]
    assert seen == [0, 6, 12, 18, 24, 30, 36, 42, 0, 6]
    assert batcher.state_dict() == {"cursor": 2, "epoch": 1}
    other = StreamBatcher(np.arange(100), 2, 6)
    other.load_state_dict(batcher.state_dict())
    assert torch.equal(other.next_batch()[0], batcher.next_batch()[0])
    assert [x[0, 0].item() for x, _ in batcher.iterate(6)] == [36, 42]
    with pytest.raises(DataError, match="cursor"):
        other.load_state_dict({"cursor": 8, "epoch": 0})


def test_memmap_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rnnlab.data.tbptt.IN_MEMORY_BYTES", 1000)  # this test's file is larger
    tokens = (np.arange(20_000) % 300).astype(np.uint16)
    tokens.tofile(tmp_path / "tokens.bin")
    mapped = np.memmap(tmp_path / "tokens.bin", dtype=np.uint16, mode="r", offset=2 * 123)
    in_memory = tokens[123:]
    for source in (mapped, mapped[:9000]):  # a fresh memmap (re-opened per batch) and a slice
        batcher = StreamBatcher(source, 7, 33)
        reference = StreamBatcher(np.array(in_memory[: len(source)]), 7, 33)
        assert batcher.num_batches == reference.num_batches
        for k in (0, 1, batcher.num_batches - 1):
            for got, want in zip(batcher.get(k), reference.get(k), strict=True):
                assert torch.equal(got, want)
    assert StreamBatcher(mapped, 7, 33)._reopen and not StreamBatcher(mapped[:9000], 7, 33)._reopen
    monkeypatch.setattr("rnnlab.data.tbptt.IN_MEMORY_BYTES", 2**20)  # small: read once
    small = StreamBatcher(mapped, 7, 33)
    assert not small._reopen and not isinstance(small.tokens, np.memmap)
    assert torch.equal(small.get(3)[0], StreamBatcher(np.array(in_memory), 7, 33).get(3)[0])


def test_with_prepared_corpus(tmp_path: Path, cache_env: Path) -> None:
    text = "".join(f"line {i}: ünïcödé 中文 😀\r\n" for i in range(300))
    (tmp_path / "in.txt").write_bytes(text.encode("utf-8"))
    corpus = prepare_corpus(tmp_path / "in.txt", split=(0.9, 0.1, 0.0))
    train = corpus.split("train")
    batcher = StreamBatcher(train, 4, 32)
    x, y = batcher.get(2)
    stream = batcher.stream_len
    assert corpus.vocab.decode(x[1]) == text[stream + 64 : stream + 96]
    assert corpus.vocab.decode(y[1]) == text[stream + 65 : stream + 97]
    StreamBatcher(corpus.split("val"), 4, 32, name="val")
