"""Sampling text from a char-level LM: prime handling, streams and streaming output.

Library code only: no argv, no printing. The CLI streams text through ``on_token``. The search
itself (argmax, temperature, top-k, top-p, beam) is ``rnnlab.decoding``'s, shared with seq2seq
and captioning; this module primes the model and feeds decoding its step protocol.

The model contract is CharLM's: ``logits, state = model(idx, state)`` with idx (B, T) int64 and
logits (B, T, V); state is a tensor (L, B, H) or a tuple ``(h, c)`` of them, batch on dim 1.
``model.initial_state(B, device)`` is used when present (else ``None`` is passed), a method
``step(idx (B,), state) -> (logits (B, V), state)`` for the per-token loop when present, and
``reorder(state, index)`` when present (else dim 1 of the state is gathered).

Decoding runs in two phases::

    prime  p0 p1 ... p{P-1}            one stream (B = 1), fed PRIME_CHUNK tokens per forward,
           └──────── state ───────┐    state carried, only the last logits kept
                                  ▼
    sample x0 x1 ... x{length-1}   B = num_samples streams, one token per step; the state and
                                   the last logits of the prime are copied to every stream
                                   (beam search: the prime's state is the one source)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from rnnlab import decoding
from rnnlab.cells import State
from rnnlab.decoding import DecodingError, Hypothesis
from rnnlab.validation import ConfigError, setting, validate

__all__ = ["DecodingError", "SampleConfig", "decode", "generate", "prime_ids", "run_prime",
           "step_protocol"]  # fmt: skip

MAX_VOCAB = 0x110000 + 256
MAX_TOKENS = 10**8  # generated ids kept in memory over all streams (800 MB of int64 at most)

# Prime tokens per forward pass: memory stays bounded (B x chunk x V logits) for any prime length.
PRIME_CHUNK = 4096
UNKNOWN_POLICIES = ("error", "skip", "replace")

TokenCallback = Callable[[int, Tensor], None]


@dataclass
class SampleConfig:
    """How to decode.

    Args:
        length: tokens to generate after the prime (0 generates nothing).
        temperature: logits are divided by it before softmax; 0 means argmax. Ignored by beam.
        top_k: keep only the k most likely tokens (0 keeps all). Applied after temperature.
        top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
            (after temperature and top-k) sums to >= top_p; always at least one token. 1 keeps all.
        argmax: always take the most likely token (greedy); seed-independent.
        beam: beam width; 0 samples instead. Beam search maximises the summed log-probability and
            ignores temperature, top_k, top_p, argmax and seed. With ``num_samples > 1`` it
            returns the ``num_samples`` best beams, so ``num_samples <= beam``.
        num_samples: independent streams, decoded together as one batch.
        seed: seeds a local torch.Generator (the global RNG is never touched); the same seed gives
            the same text on the same device. None draws a fresh seed.
        unknown: what ``prime_ids`` does with prime characters missing from the vocabulary:
            ``error`` (list them), ``skip`` (drop them) or ``replace`` (map to a replacement id).
        weights: ``bfloat16`` decodes with bfloat16 copies of the recurrent weight matrices
            (``CharLM.step``'s ``weight_dtype``; the prime still runs in float32); ``float32``
            uses the model's own.
    """

    length: int = setting(500, "characters to generate (0: check the run and prime, print nothing)",
                          low=0, high=10**7)  # fmt: skip
    temperature: float = setting(1.0, "divide logits by this before softmax (0: argmax)", low=0,
                                 high=1e6)  # fmt: skip
    top_k: int = setting(
        0, "keep only the k most likely characters (0: all)", low=0, high=MAX_VOCAB
    )
    top_p: float = setting(1.0, "nucleus: smallest set with this total probability (1: all)",
                           low=1e-9, high=1.0)  # fmt: skip
    argmax: bool = setting(False, "always take the most likely character (greedy)")
    beam: int = setting(0, "beam search width (0: sample instead)", low=0, high=1024)
    num_samples: int = setting(1, "independent samples, decoded as one batch", low=1, high=4096)
    seed: int | None = setting(None, "random seed (default: fresh entropy)", low=0, high=2**63 - 1)
    unknown: Literal["error", "skip", "replace"] = setting(
        "error", "prime characters not in the vocabulary: error, skip or replace"
    )
    weights: Literal["float32", "bfloat16"] = setting(
        "float32",
        "recurrent weight matrices: bfloat16 reads half the bytes a character (faster on CPU; "
        "a char-LM on the CPU engine; README gives the loss change)",
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.beam and self.num_samples > self.beam:
            raise ConfigError(
                "num_samples", f"at most beam={self.beam} (beam search returns that many)",
                self.num_samples,
            )  # fmt: skip
        streams = max(self.num_samples, self.beam)
        if streams * self.length > MAX_TOKENS:  # the generated ids are kept: bound their memory
            raise ConfigError(
                "length", f"at most {MAX_TOKENS:,} characters over all {streams} streams",
                self.length,
            )  # fmt: skip

    @property
    def greedy(self) -> bool:
        """True when decoding takes the most likely token (``argmax`` or temperature 0)."""
        return self.argmax or self.temperature == 0


def prime_ids(
    text: str, stoi: Mapping[str, int], unknown: str = "error", replacement: int | None = None
) -> list[int]:
    """Token ids of ``text`` under ``stoi``; characters not in it follow the ``unknown`` policy.

    ``error`` raises ValueError listing each unseen character once, in order of appearance;
    ``skip`` drops them; ``replace`` maps them to ``replacement`` (e.g. the most frequent
    character's id). The result may be empty (``generate`` rejects an empty prime).
    """
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown: expected one of {'|'.join(UNKNOWN_POLICIES)}, got {unknown!r}")
    if unknown == "replace" and replacement is None:
        raise ValueError("replacement: unknown='replace' needs a replacement token id")
    unseen = list(dict.fromkeys(ch for ch in text if ch not in stoi))
    if unseen and unknown == "error":
        listed = ", ".join(repr(ch) for ch in unseen)
        raise ValueError(
            f"prime text has characters not in the vocabulary: {listed}; "
            "use --unknown skip or --unknown replace"
        )
    if unknown == "skip":
        return [stoi[ch] for ch in text if ch in stoi]
    return [stoi.get(ch, replacement) for ch in text]  # type: ignore[misc]


def run_prime(
    model: nn.Module, prime: Sequence[int] | Tensor, *, chunk_size: int = PRIME_CHUNK
) -> tuple[Tensor, State]:
    """Feed the prime as one stream, ``chunk_size`` tokens per forward with the state carried.

    Returns the logits after the last prime token (1, V) and the state (batch 1). Call it under
    ``torch.no_grad()`` and in eval mode, as ``decode`` does.
    """
    return _run_prime(model, _prime_tensor(model, prime), chunk_size)


def _run_prime(model: nn.Module, ids: Tensor, chunk_size: int) -> tuple[Tensor, State]:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")
    device = ids.device
    init = getattr(model, "initial_state", None)
    state = init(1, device) if callable(init) else None
    for start in range(0, ids.shape[1], chunk_size):  # ids: (1, P)
        logits, state = model(ids[:, start : start + chunk_size], state)  # (1, t, V)
    return logits[:, -1], state  # (1, V)


@torch.no_grad()
def decode(
    model: nn.Module,
    prime: Sequence[int] | Tensor,
    config: SampleConfig,
    *,
    on_token: TokenCallback | None = None,
    prime_chunk: int = PRIME_CHUNK,
    score: bool = True,
) -> list[Hypothesis]:
    """``config.num_samples`` continuations of ``config.length`` tokens after ``prime``, as
    ``rnnlab.decoding`` hypotheses (tokens exclude the prime; ``logprob`` is their summed
    log-probability). With ``config.beam``: the ``num_samples`` best beams, best first.

    The prime runs once (one stream); its state and last distribution are copied to every
    stream, and decoding goes on through ``rnnlab.decoding`` over the model's step protocol
    (:func:`step_protocol`). ``on_token(step, ids)`` is called as each token is produced, steps
    0..length-1 in order, with ids a (B,) int64 tensor on the model's device; beam search replays
    its best beams through it once the search has finished. The model runs in eval mode (its
    previous mode is restored) on its own device. ``score=False``: sampled and greedy
    hypotheses carry no log-probability (NaN), which saves a gather and a sum per character.
    """
    ids = _prime_tensor(model, prime)  # (1, P), validated before anything runs
    B, length = config.num_samples, config.length
    if length == 0:
        return [Hypothesis([], 0.0, 0.0, False) for _ in range(B)]
    with _eval_mode(model):
        logits, state = _run_prime(model, ids, prime_chunk)  # (1, V)
        step, reorder = step_protocol(model, config.weights)
        first = torch.log_softmax(logits, dim=-1, dtype=torch.float64)  # (1, V)
        if config.beam:
            (found,) = decoding.beam_search(step, reorder, state, None, first=first,
                                            beam=config.beam, max_length=length,
                                            num_return=B)  # fmt: skip
            if on_token is not None:
                rows = [h.tokens for h in found]
                chosen = torch.tensor(rows, dtype=torch.long, device=logits.device)  # (B, length)
                for t in range(length):
                    on_token(t, chosen[:, t])
            return found
        every = torch.zeros(B, dtype=torch.long, device=logits.device)
        state, first = reorder(state, every), first[every]  # the prime's state in B streams
        common = {"max_length": length, "first": first, "on_token": on_token,
                  "keep_steps": False, "score": score}  # fmt: skip
        if config.greedy:
            return decoding.greedy(step, reorder, state, None, **common)
        generator = torch.Generator(device=logits.device)
        if config.seed is None:
            generator.seed()  # fresh entropy, not the global RNG
        else:
            generator.manual_seed(config.seed)
        # One generator for all streams: they share one prime, and one multinomial call per
        # character keeps 32 streams as cheap as one (per-row generators cost a call per row).
        return decoding.sample(step, reorder, state, None, temperature=config.temperature,
                               top_k=config.top_k, top_p=config.top_p, generator=generator,
                               **common)  # fmt: skip


def generate(
    model: nn.Module,
    prime: Sequence[int] | Tensor,
    config: SampleConfig,
    *,
    on_token: TokenCallback | None = None,
    prime_chunk: int = PRIME_CHUNK,
) -> list[list[int]]:
    """The token ids of :func:`decode`'s hypotheses: one list per stream (prime excluded)."""
    found = decode(model, prime, config, on_token=on_token, prime_chunk=prime_chunk, score=False)
    return [h.tokens for h in found]


# -- helpers ----------------------------------------------------------------------------------


def step_protocol(
    model: nn.Module, weights: str = "float32"
) -> tuple[decoding.StepFn, decoding.ReorderFn]:
    """A language model's ``(step, reorder)`` for ``rnnlab.decoding``: step ``(ids (B,), state)
    -> (log-probabilities (B, V) float64, state)`` over the model's own ``step`` (logits) when it
    has one, else a one-token forward; reorder is the model's ``reorder`` or gathers dim 1 of
    (L, B, H) states. ``weights="bfloat16"`` needs a ``step`` that takes ``weight_dtype``
    (CharLM's)."""
    step = getattr(model, "step", None)
    if weights != "float32":
        if not callable(step) or "weight_dtype" not in inspect.signature(step).parameters:
            raise ConfigError("weights", "float32 for this model (its step has no weight_dtype)",
                              weights)  # fmt: skip
        dtype = getattr(torch, weights)
        # one probe step: a model or device that cannot run them fails here, before any output
        step(torch.zeros(1, dtype=torch.long, device=_device(model)), None, weight_dtype=dtype)
        step = functools.partial(step, weight_dtype=dtype)
    elif not callable(step):

        def step(ids: Tensor, state: State) -> tuple[Tensor, State]:
            logits, state = model(ids[:, None], state)  # (B, 1, V)
            return logits[:, -1], state

    def log_step(ids: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = step(ids, state)  # (B, V)
        # float64: the sampling probabilities are then the logits' own softmax to ~1e-16
        return torch.log_softmax(logits, dim=-1, dtype=torch.float64), state

    reorder = getattr(model, "reorder", None)
    if not callable(reorder):
        reorder = functools.partial(decoding.reorder_rows, dim=1)
    return log_step, reorder


def _device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _prime_tensor(model: nn.Module, prime: Sequence[int] | Tensor) -> Tensor:
    """Validated prime ids as (1, P) int64 on the model's device."""
    ids = torch.as_tensor(prime, dtype=torch.long).to(_device(model))
    if ids.dim() != 1:
        raise ValueError(
            f"prime: expected a 1-D sequence of token ids, got shape {tuple(ids.shape)}"
        )
    if ids.numel() == 0:
        raise ValueError("prime: needs at least one token id (nothing to condition on)")
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        bad = low if low < 0 else high
        limit = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
        raise ValueError(f"prime: token ids must be in {limit}, got {bad}")
    return ids[None]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for a block; every submodule's previous mode is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
