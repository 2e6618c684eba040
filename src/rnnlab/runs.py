"""A trained run as a library object: load it (any task's), evaluate it, sample from it.

Loading goes through ``rnnlab.loading`` (the one checked loader) with every task's ``RunKind``,
so a command given a run of a task it does not support says what the run is. Evaluation on a
split uses the run's own vocabulary and the corpus it trained on, found by content hash, never a
re-read of a file that may have been edited since.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from rnnlab.data import DataError, Vocab
from rnnlab.data.corpus import check_file
from rnnlab.evaluate import EvalResult, evaluate_all
from rnnlab.loading import LoadedRun, load_run_of
from rnnlab.runtime import resolve_device
from rnnlab.sample import SampleConfig, generate, prime_ids
from rnnlab.tasks import caption, char_lm, classify, dialog, seq2seq, vqa
from rnnlab.tasks.char_lm import training_corpus

MAX_EVAL_BYTES = 1 << 30  # an evaluation file is read whole: refuse anything absurd


KINDS = (char_lm.KIND, seq2seq.KIND, classify.KIND, caption.KIND, vqa.KIND, dialog.KIND)
Run = LoadedRun  # a loaded run of any task


def load_run(
    path: str | Path,
    which: str = "best",
    device: str = "cpu",
    *,
    tasks: Sequence[str] = ("char_lm",),
    command: str = "",
) -> LoadedRun:
    """Load a run directory (its ``best`` checkpoint, or ``latest``; ``best`` falls back to the
    newest checkpoint when no validation has run yet) or a checkpoint directory, checked
    (``rnnlab.loading``). Tensors are mapped to ``device``, so a GPU run loads on a CPU. A run of
    a task not in ``tasks`` is a CheckpointError naming its task and what ``command`` supports."""
    return load_run_of(KINDS, path, which, resolve_device(device), supported=tasks,
                       command=command)  # fmt: skip


def evaluate(
    path: str | Path,
    file: str | Path | None = None,
    split: str = "val",
    which: str = "best",
    device: str = "cpu",
    *,
    input: str | Path | None = None,
) -> EvalResult:
    """Loss of a run in nats/char (``.bpc`` for bits/char) on a split of the corpus it trained
    on (``input`` locates a moved training file) or on any ``file``, with the run's vocabulary."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split: expected train|val|test, got {split!r}")
    run = load_run(path, which, device)
    batch_size, seq_len = 1, 64
    if run.train_config is not None:
        batch_size, seq_len = run.train_config.batch_size, run.train_config.seq_len
    if file is not None:
        tokens = encode_file(run.vocab, Path(file))
        batch = 1
    else:
        if run.train_config is None:
            raise DataError(f"{run.path}: no training config; evaluate on a FILE instead")
        corpus = training_corpus(run.train_config, run.corpus, input)
        if corpus.vocab.tokens != run.vocab.tokens:
            raise DataError(f"{run.path}: the corpus found does not match the run's vocabulary")
        tokens = corpus.split(split)
        batch = min(batch_size, max(1, len(tokens) // 1000))
    if len(tokens) < 2:
        raise DataError(f"{file or split}: needs at least 2 characters to evaluate")
    return evaluate_all(run.model, tokens, batch, seq_len)  # every character scored


def sample(
    path: str | Path,
    prime: str | bytes | None = None,
    config: SampleConfig | None = None,
    which: str = "best",
    device: str = "cpu",
    on_text: Callable[[int, list[str]], None] | None = None,
) -> list[str]:
    """Sample ``config.num_samples`` texts from a run, after ``prime`` (default: a character of
    the vocabulary). ``on_text(step, chars)`` streams each new character of every sample."""
    run = load_run(path, which, device)

    def on_token(step: int, ids: torch.Tensor) -> None:
        if on_text is not None:
            on_text(step, [run.vocab.decode([int(i)]) for i in ids])

    rows = sample_ids(run, prime, config or SampleConfig(), on_token=on_token)
    return [run.vocab.decode(row) for row in rows]


def sample_ids(
    run: Run,
    prime: str | bytes | None,
    config: SampleConfig,
    on_token: Callable[[int, torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """Token ids sampled from a loaded run (streamed through ``on_token(step, ids (B,))``):
    byte-level output must be decoded as a stream, not character by character."""
    if prime is None or len(prime) == 0:
        prime = run.vocab.default_prime()
    return generate(run.model, prime_tokens(run.vocab, prime, config.unknown), config,
                    on_token=on_token)  # fmt: skip


def prime_tokens(vocab: Vocab, prime: str | bytes, unknown: str = "error") -> list[int]:
    """Token ids of a prime: raw bytes (or UTF-8) for a byte-level vocabulary; characters,
    unseen ones following ``unknown``, for a text vocabulary."""
    if vocab.kind == "bytes":
        return list(prime if isinstance(prime, bytes) else prime.encode("utf-8", "surrogateescape"))
    if isinstance(prime, bytes):
        prime = prime.decode("utf-8")
    stoi = {t: i for i, t in enumerate(vocab.tokens)}
    return prime_ids(prime, stoi, unknown, stoi[vocab.default_prime()])


def encode_file(vocab: Vocab, path: Path) -> np.ndarray:
    """A whole text file as token ids of ``vocab``; a regular file of bounded size only (not
    /dev/zero, not a FIFO, which would read forever or block)."""
    path = check_file(path)
    size = path.stat().st_size
    if size > MAX_EVAL_BYTES:
        raise DataError(f"{path}: {size:,} bytes; evaluate files up to {MAX_EVAL_BYTES:,} bytes")
    data = path.read_bytes()
    if vocab.kind == "bytes":
        return np.frombuffer(data, dtype=np.uint8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte offset {e.start}") from None
    unseen = vocab.unseen(text)
    if unseen:
        shown = ", ".join(repr(c) for c in unseen[:20])
        raise DataError(
            f"{path}: {len(unseen)} character(s) not in the run's vocabulary: {shown}; "
            "evaluate on text made of the training characters"
        )
    return vocab.encode(text)
