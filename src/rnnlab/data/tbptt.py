"""StreamBatcher: the truncated-BPTT batch layout (B parallel streams walked in seq_len chunks).

The token stream of N tokens is cut into B contiguous streams of L = N // B tokens each (the
N mod B leftover tokens at the end are dropped), as in pytorch/examples word_language_model's
``batchify``. With N = 26 ("a".."z"), B = 3 (so L = 8) and T = seq_len = 2::

    stream 0 | a b | c d | e f | g h      batch k:  x = streams[:, kT     : kT + T]
    stream 1 | i j | k l | m n | o p                y = streams[:, kT + 1 : kT + T + 1]
    stream 2 | q r | s t | u v | w x
               k=0   k=1   k=2            ("y z" dropped: N mod B = 2)

    batch 0:  x = [[a b]      y = [[b c]        batch 1:  x = [[c d]      y = [[d e]
                   [i j]           [j k]                       [k l]           [l m]
                   [q r]]          [r s]]                      [s t]]          [t u]]

Row b of batch k + 1 continues row b of batch k, so the hidden state of stream b at the end of
batch k is the right initial state for batch k + 1: the training loop carries it (detached)
across batches and backpropagates through T steps only. The target y needs one token beyond x,
so batch k exists only where ``(k + 1) * T + 1 <= L``, i.e. ``num_batches = (L - 1) // T``
(3 here; "g h" would need a target after "h", and word_language_model's shorter last batch is
dropped to keep every batch (B, T)).

Each batch reads only its B slices of T + 1 tokens, so ``tokens`` may be a memmap of a corpus
larger than RAM. A memmap opened straight from a file (``Corpus.split``) larger than 64 MiB is
re-opened for every batch so pages read earlier do not stay resident in this process
(nanoGPT#287); a smaller one is read into memory once.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from rnnlab.data.errors import DataError

# Token arrays up to this size are copied into memory; larger memmaps are re-opened per batch.
IN_MEMORY_BYTES = 64 * 2**20


class StreamBatcher:
    """Truncated-BPTT batches of a 1-D token array: ``get(k) -> (x, y)``, both int64 (B, T).

    ``cursor`` is the next batch index for ``next_batch()``; with ``epoch`` it is the data
    position a checkpoint saves (``state_dict``). ``name`` ("train", "val", ...) only words the
    error raised when the tokens are too few for one batch.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *, name: str = "train"):
        if not isinstance(batch_size, int | np.integer) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(seq_len, int | np.integer) or seq_len < 1:
            raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")
        if getattr(tokens, "ndim", None) != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise DataError("tokens must be a 1-D integer array")
        n, need = len(tokens), batch_size * (seq_len + 1)
        if n < need:
            fix = (
                "a smaller --batch-size, --seq-len or --val-frac"
                if name == "train"
                else "a smaller --batch-size or --seq-len, or a larger --val-frac"
            )
            raise DataError(
                f"the {name} split has {n} tokens, but batch_size {batch_size} x (seq_len "
                f"{seq_len} + 1) = {need} tokens are required; use {fix}, or a longer text"
            )
        self.tokens = tokens
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.name = name
        self.stream_len = n // self.batch_size  # L
        self.num_batches = (self.stream_len - 1) // self.seq_len
        self.cursor = 0
        self.epoch = 0
        # Read offsets of the T + 1 tokens behind batch 0, one row per stream: (B, T + 1).
        self._index = (
            np.arange(self.batch_size, dtype=np.int64)[:, None] * self.stream_len
            + np.arange(self.seq_len + 1, dtype=np.int64)[None, :]
        )
        # A memmap made directly from a file (not a slice of one) can be re-opened per batch; one
        # that fits IN_MEMORY_BYTES is read once instead (a re-open costs ~0.15 ms a batch).
        self._reopen = isinstance(tokens, np.memmap) and isinstance(tokens.base, mmap.mmap)
        if self._reopen and tokens.nbytes <= IN_MEMORY_BYTES:
            self.tokens, self._reopen = np.array(tokens), False

    def __len__(self) -> int:
        return self.num_batches

    def _source(self) -> np.ndarray:
        if not self._reopen:
            return self.tokens
        t = self.tokens
        return np.memmap(t.filename, dtype=t.dtype, mode="r", offset=t.offset, shape=t.shape)

    def get(self, k: int) -> tuple[Tensor, Tensor]:
        """Batch ``k`` of the epoch: x (B, T) and its targets y (B, T), y shifted by one token."""
        if not 0 <= k < self.num_batches:
            raise IndexError(f"batch {k} out of range for {self.num_batches} batches")
        rows = np.asarray(self._source()[self._index + k * self.seq_len], dtype=np.int64)
        rows = torch.from_numpy(rows)  # (B, T + 1)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def iterate(self, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches ``start`` ... ``num_batches - 1`` of an epoch; ``cursor`` is left alone."""
        for k in range(start, self.num_batches):
            yield self.get(k)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate(0)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """The batch at ``cursor``, then advance it; after the last batch, wrap to a new epoch.

        When ``cursor == 0`` before the call the streams restart from their beginnings: the
        caller should reset the carried hidden state.
        """
        x, y = self.get(self.cursor)
        self.cursor += 1
        if self.cursor == self.num_batches:
            self.cursor, self.epoch = 0, self.epoch + 1
        return x, y

    def state_dict(self) -> dict[str, int]:
        """The data position: ``{"cursor", "epoch"}`` (plain ints, for trainer.json)."""
        return {"cursor": self.cursor, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        cursor = int(state["cursor"])
        if not 0 <= cursor < self.num_batches:
            raise DataError(
                f"saved data cursor {cursor} does not fit {self.num_batches} batches per epoch; "
                "resume with the same data, --batch-size and --seq-len"
            )
        self.cursor, self.epoch = cursor, int(state["epoch"])
