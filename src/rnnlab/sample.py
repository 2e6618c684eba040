"""Decoding for char-level LMs: sampling (temperature, top-k, top-p, argmax) and beam search.

Library code only: no argv, no printing. The CLI streams text through ``on_token``.

The model contract is CharLM's: ``logits, state = model(idx, state)`` with idx (B, T) int64 and
logits (B, T, V); state is a tensor (L, B, H) or a tuple ``(h, c)`` of them, batch on dim 1.
``model.initial_state(B, device)`` is used when present (else ``None`` is passed), and a method
``step(idx (B,), state) -> (logits (B, V), state)`` is used for the per-token loop when present.

Decoding runs in two phases::

    prime  p0 p1 ... p{P-1}            one stream (B = 1), fed PRIME_CHUNK tokens per forward,
           └──────── state ───────┐    state carried, only the last logits kept
                                  ▼
    sample x0 x1 ... x{length-1}   B = num_samples streams, one token per forward; the state
                                   after the prime is copied to every stream
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from rnnlab.cells import State
from rnnlab.validation import ConfigError, setting, validate

MAX_VOCAB = 0x110000 + 256
MAX_TOKENS = 10**8  # generated ids kept in memory over all streams (800 MB of int64 at most)

# Prime tokens per forward pass: memory stays bounded (B x chunk x V logits) for any prime length.
PRIME_CHUNK = 4096
UNKNOWN_POLICIES = ("error", "skip", "replace")

TokenCallback = Callable[[int, Tensor], None]


class DecodingError(ValueError):
    """Decoding cannot go on: the model produced non-finite logits (diverged or damaged)."""


def _check_finite(logits: Tensor, step: int) -> None:
    # One reduction in float64 (no float32 logits can overflow it): NaN or inf anywhere makes the
    # sum non-finite. The check runs once per generated character, so it is kept to one op.
    if not math.isfinite(logits.sum(dtype=torch.float64).item()):
        raise DecodingError(
            f"the model produced non-finite logits (NaN/inf) at character {step}: its weights "
            "are diverged or damaged; sample an earlier checkpoint or retrain with a lower --lr"
        )


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


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (B, V)."""
    V = logits.shape[-1]
    if 0 < top_k < V:
        values, index = logits.topk(top_k, dim=-1)  # (B, k): exactly k survive, even on ties
        logits = torch.full_like(logits, -math.inf).scatter(-1, index, values)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Mass strictly above each token: a token is dropped once the tokens before it reach p,
        # so the most likely token always survives.
        above = torch.cat([probs.new_zeros(probs.shape[0], 1), probs.cumsum(-1)[:, :-1]], dim=-1)
        sorted_logits = sorted_logits.masked_fill(above >= top_p, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    return logits


def run_prime(
    model: nn.Module, prime: Sequence[int] | Tensor, *, chunk_size: int = PRIME_CHUNK
) -> tuple[Tensor, State]:
    """Feed the prime as one stream, ``chunk_size`` tokens per forward with the state carried.

    Returns the logits after the last prime token (1, V) and the state (batch 1). Call it under
    ``torch.no_grad()`` and in eval mode, as ``generate`` and ``beam_search`` do.
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
def generate(
    model: nn.Module,
    prime: Sequence[int] | Tensor,
    config: SampleConfig,
    *,
    on_token: TokenCallback | None = None,
    prime_chunk: int = PRIME_CHUNK,
) -> list[list[int]]:
    """Decode ``config.length`` tokens after ``prime`` for ``config.num_samples`` streams.

    Returns one list of generated ids (prime excluded) per stream. ``on_token(step, ids)`` is
    called as each token is produced, steps 0..length-1 in order, with ids a (B,) int64 tensor on
    the model's device. With ``config.beam`` the result is the ``num_samples`` best beams, best
    first, and ``on_token`` replays them once the search has finished.

    The model runs in eval mode (its previous mode is restored) on its own device.
    """
    if config.length == 0:
        _prime_tensor(model, prime)  # validated all the same
        return [[] for _ in range(config.num_samples)]
    if config.beam:
        beams = beam_search(model, prime, config.beam, config.length, prime_chunk=prime_chunk,
                            weights=config.weights)  # fmt: skip
        out = [tokens for tokens, _ in beams[: config.num_samples]]
        if on_token is not None and config.length:
            chosen = torch.tensor(out, dtype=torch.long, device=_device(model))  # (B, length)
            for t in range(config.length):
                on_token(t, chosen[:, t])
        return out
    B = config.num_samples
    ids = _prime_tensor(model, prime)  # (1, P), validated before anything runs
    if config.length == 0:
        return [[] for _ in range(B)]
    with _eval_mode(model):
        logits, state = _run_prime(model, ids, prime_chunk)  # (1, V)
        device = logits.device
        generator = torch.Generator(device=device)
        if config.seed is None:
            generator.seed()  # fresh entropy, not the global RNG
        else:
            generator.manual_seed(config.seed)
        every = torch.zeros(B, dtype=torch.long, device=device)
        logits, state = logits[every], _select(state, every)  # copy the prime to B streams
        step = _step_function(model, config.weights)
        out = torch.empty(B, config.length, dtype=torch.long, device=device)
        for t in range(config.length):
            _check_finite(logits, t)
            token = _choose(logits, config, generator)  # (B,)
            out[:, t] = token
            if on_token is not None:
                on_token(t, token)
            if t + 1 < config.length:
                logits, state = step(token, state)  # (B, V)
    return out.tolist()


@torch.no_grad()
def beam_search(
    model: nn.Module,
    prime: Sequence[int] | Tensor,
    beam_width: int,
    length: int,
    *,
    prime_chunk: int = PRIME_CHUNK,
    weights: str = "float32",
) -> list[tuple[list[int], float]]:
    """The ``beam_width`` best continuations of ``length`` tokens, as (ids, score), best first.
    ``weights``: as ``SampleConfig.weights``.

    The score is the summed log-softmax of the generated tokens (prime excluded): the search
    looks for the sequence most likely under the model itself, so no temperature, top-k or
    top-p is applied. Each beam carries its own state: after every step the state is reordered
    along its batch dim to follow the surviving beams. Fewer than ``beam_width`` beams come back
    when fewer sequences exist (V**length).
    """
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width: expected an integer >= 1, got {beam_width!r}")
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length: expected an integer >= 0, got {length!r}")
    ids = _prime_tensor(model, prime)  # (1, P)
    if length == 0:
        return [([], 0.0)]
    with _eval_mode(model):
        logits, state = _run_prime(model, ids, prime_chunk)  # (1, V)
        V = logits.shape[-1]
        step = _step_function(model, weights)
        scores = logits.new_zeros(1, dtype=torch.float32)  # (K,) summed log-probs of the live beams
        tokens = torch.empty(1, 0, dtype=torch.long, device=logits.device)  # (K, t)
        for t in range(length):
            _check_finite(logits, t)
            candidates = scores[:, None] + logits.float().log_softmax(dim=-1)  # (K, V)
            scores, flat = candidates.flatten().topk(min(beam_width, candidates.numel()))
            parent, token = flat // V, flat % V  # (K',)
            tokens = torch.cat([tokens[parent], token[:, None]], dim=1)  # (K', t + 1)
            if t + 1 < length:
                logits, state = step(token, _select(state, parent))  # (K', V)
    return list(zip(tokens.tolist(), scores.tolist(), strict=True))


# -- helpers ----------------------------------------------------------------------------------


def _choose(logits: Tensor, config: SampleConfig, generator: torch.Generator) -> Tensor:
    """One token per stream from logits (B, V) -> (B,)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    if config.temperature == 1 and not config.top_k and config.top_p == 1:
        # softmax subtracts the row's max itself: the same distribution in one op
        probs = torch.softmax(logits, dim=-1, dtype=torch.float64)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    # Shift so the best logit is 0 before dividing, in float64: at any temperature > 0 the best
    # token keeps weight exp(0) = 1 and the others underflow to exactly 0 at worst, never NaN
    # (dividing first overflows to inf at temperature 1e-40 and softmax gives NaN).
    logits = logits.double()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / config.temperature
    logits = filter_logits(logits, config.top_k, config.top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _step_function(
    model: nn.Module, weights: str = "float32"
) -> Callable[[Tensor, State], tuple[Tensor, State]]:
    """``(ids (B,), state) -> (logits (B, V), state)``: the model's ``step`` when it has one;
    ``weights="bfloat16"`` needs a ``step`` that takes ``weight_dtype`` (CharLM's)."""
    step = getattr(model, "step", None)
    if weights != "float32":
        if not callable(step) or "weight_dtype" not in inspect.signature(step).parameters:
            raise ConfigError("weights", "float32 for this model (its step has no weight_dtype)",
                              weights)  # fmt: skip
        dtype = getattr(torch, weights)
        # one probe step: a model or device that cannot run them fails here, before any output
        step(torch.zeros(1, dtype=torch.long, device=_device(model)), None, weight_dtype=dtype)
        return functools.partial(step, weight_dtype=dtype)
    if callable(step):
        return step

    def forward_one(ids: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = model(ids[:, None], state)  # (B, 1, V)
        return logits[:, -1], state

    return forward_one


def _select(state: State, index: Tensor) -> State:
    """Streams ``index`` of a state whose tensors are (L, B, H): batch on dim 1."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
    return state.index_select(1, index)


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
