"""A trained run as a library object: load it, evaluate it, sample from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnlab.checkpoint import load_checkpoint, resolve_checkpoint
from rnnlab.data import DataError, StreamBatcher, Vocab, prepare_corpus
from rnnlab.evaluate import EvalResult, evaluate_tokens
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.runtime import resolve_device
from rnnlab.sample import SampleConfig, generate, prime_ids


@dataclass
class Run:
    model: CharLM
    vocab: Vocab
    train_config: dict
    path: Path  # the checkpoint directory it came from
    step: int


def load_run(path: str | Path, which: str = "best", device: str = "cpu") -> Run:
    """Load a run directory (its ``best`` checkpoint, or ``latest``; ``best`` falls back to the
    newest checkpoint when no validation has run yet) or a checkpoint directory.

    Tensors are mapped to ``device``, so a run trained on a GPU loads on a CPU.
    """
    path = Path(path)
    if (
        which == "best"
        and (path / "manifest.json").exists() is False
        and not (path / "best").is_dir()
    ):
        which = "latest"  # no validation has run yet: the newest checkpoint is all there is
    ckpt = load_checkpoint(resolve_checkpoint(path, which=which))
    model = CharLM(CharLMConfig(**ckpt.config["model"]))
    model.load_state_dict(ckpt.model)
    model.to(resolve_device(device)).eval()
    train_config = ckpt.config.get("train", {})
    return Run(model, Vocab.from_json(ckpt.vocab), train_config, ckpt.path, ckpt.step)


def evaluate(
    path: str | Path,
    file: str | Path | None = None,
    split: str = "val",
    which: str = "best",
    device: str = "cpu",
) -> EvalResult:
    """Loss of a run in nats/char (``.bpc`` for bits/char) on a split of its corpus or any file."""
    run = load_run(path, which, device)
    cfg = run.train_config
    if file is not None:
        tokens = run.vocab.encode(_read_text(Path(file), run.vocab))  # error lists unseen chars
        batch = 1
    else:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split: expected train|val|test, got {split!r}")
        corpus = prepare_corpus(
            cfg["input"],
            byte_level=cfg.get("byte_level", False),
            errors=cfg.get("errors", "strict"),
            split=(1 - cfg["val_frac"] - cfg["test_frac"], cfg["val_frac"], cfg["test_frac"]),
        )
        tokens = corpus.split(split)
        batch = min(cfg.get("batch_size", 1), max(1, len(tokens) // 1000))
    if len(tokens) < 2:
        raise DataError(f"{file or split}: needs at least 2 characters to evaluate")
    seq_len = max(1, min(cfg.get("seq_len", 64), (len(tokens) - 1) // batch - 1))
    return evaluate_tokens(run.model, StreamBatcher(tokens, batch, seq_len))


def sample(
    path: str | Path,
    prime: str | None = None,
    config: SampleConfig | None = None,
    which: str = "best",
    device: str = "cpu",
    on_text: Callable[[int, list[str]], None] | None = None,
) -> list[str]:
    """Sample ``config.num_samples`` texts from a run, after ``prime`` (default: a character of
    the vocabulary). ``on_text(step, chars)`` streams each new character of every sample."""
    config = config or SampleConfig()
    run = load_run(path, which, device)
    prime = run.vocab.default_prime() if prime is None or prime == "" else prime
    ids = _prime(run.vocab, prime, config)

    def on_token(step: int, token_ids: torch.Tensor) -> None:
        if on_text is not None:
            on_text(step, [run.vocab.decode([int(i)]) for i in token_ids])

    rows = generate(run.model, ids, config, on_token=on_token)
    return [run.vocab.decode(row) for row in rows]


def _prime(vocab: Vocab, prime: str, config: SampleConfig) -> list[int]:
    if vocab.kind == "bytes":
        return list(prime.encode("utf-8"))
    stoi = {t: i for i, t in enumerate(vocab.tokens)}
    replacement = stoi[vocab.default_prime()]
    return prime_ids(prime, stoi, config.unknown, replacement)


def _read_text(path: Path, vocab: Vocab) -> str:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a text file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    data = path.read_bytes()
    if vocab.kind == "bytes":  # round-trips any bytes through Vocab.encode's UTF-8 view
        return data.decode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte offset {e.start}") from None
