"""Decoding shared by every decoder: greedy, sampling (temperature, top-k, top-p) and beam search.

Any model decodes here if it offers the small step protocol::

    logprobs, state = step(tokens, state)   # tokens (B,) int64 -> logprobs (B, V), new state
    state = reorder(state, index)           # index (B',) int64: rows of the batch to keep/repeat

``step`` consumes one token per row and returns the log-probabilities of the next one; the state is
whatever the model carries (a recurrent state, encoder outputs for attention, ...), opaque here.
``reorder`` gathers batch rows: beam search uses it to expand B sources into B*K beams and to
follow the surviving beams; greedy and sampling use it to drop rows that have finished, so a
batch of short and long outputs costs what the long ones cost. :func:`reorder_rows` does it for
tensors (batch on a given dim) and tuples/lists/dicts of them.

Every function returns :class:`Hypothesis` objects: the tokens produced (without the start token
and without the end token), their summed log-probability, the score used for ranking, and whether
the end token was produced (``False``: cut at ``max_length``).

Beam search (as in Sutskever et al. 2014; length normalisation as in Wu et al. 2016, GNMT)::

    B sources --reorder--> B*K rows; per source, K live beams with summed log-probabilities
    each step: K*V candidates per source -> the best 2K; a candidate ending in ``eos`` joins the
    source's finished list (score = logp / lp(length)), the best K others stay live.
    lp(n) = ((5 + n) / 6) ** alpha; alpha = 0 ranks by the plain sum (then beam 1 is greedy).

A source stops once it has K finished hypotheses and no live beam can still beat the best of them
(its summed log-probability can only fall, so ``logp / lp(max_length)`` bounds its future score
for alpha >= 0): the search is exact with respect to this pruning rule, not a heuristic cut.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Hypothesis",
    "StepFn",
    "ReorderFn",
    "beam_search",
    "filter_logprobs",
    "greedy",
    "length_penalty",
    "reorder_rows",
    "sample",
]

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
ReorderFn = Callable[[Any, Tensor], Any]


@dataclass
class Hypothesis:
    """One decoded output: ``tokens`` (start and end token excluded), ``logprob`` (their summed
    log-probability, the end token's included when ``finished``) and ``score`` (what ranked it:
    ``logprob`` for greedy and sampling, normalised by length for beam search)."""

    tokens: list[int]
    logprob: float
    score: float
    finished: bool
    steps: list[float] = field(default_factory=list, repr=False)  # per-token log-probabilities


def reorder_rows(state: Any, index: Tensor, dim: int = 1) -> Any:
    """``state`` with its batch rows gathered by ``index``: tensors are index-selected along
    ``dim`` (1 suits recurrent states (L, B, H)); tuples, lists and dicts are walked; None and
    non-tensors pass through."""
    if isinstance(state, Tensor):
        return state.index_select(dim, index.to(state.device))
    if isinstance(state, tuple):
        return tuple(reorder_rows(s, index, dim) for s in state)
    if isinstance(state, list):
        return [reorder_rows(s, index, dim) for s in state]
    if isinstance(state, dict):
        return {k: reorder_rows(v, index, dim) for k, v in state.items()}
    return state


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ``((5 + length) / 6) ** alpha`` (Wu et al. 2016, eq. 14); 1 for alpha = 0."""
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


def filter_logprobs(logprobs: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """(B, V) log-probabilities with tokens outside the top-k and outside the top-p nucleus set
    to -inf. The nucleus is the smallest set of most likely tokens whose mass reaches ``top_p``;
    the most likely token always survives; ties at the k-th place keep exactly k tokens."""
    V = logprobs.shape[-1]
    if 0 < top_k < V:
        values, index = logprobs.topk(top_k, dim=-1)  # (B, k)
        logprobs = torch.full_like(logprobs, -math.inf).scatter(-1, index, values)
    if top_p < 1.0:
        ordered, order = logprobs.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token in the ranking
        ordered = ordered.masked_fill(before >= top_p, -math.inf)
        logprobs = torch.full_like(logprobs, -math.inf).scatter(-1, order, ordered)
    return logprobs


def _start(start: Tensor | int, batch_size: int | None, device: torch.device | None) -> Tensor:
    if isinstance(start, Tensor):
        if start.dim() != 1:
            raise ValueError(f"start: expected token ids of shape (B,), got {tuple(start.shape)}")
        return start.long()
    if batch_size is None or batch_size < 1:
        raise ValueError("batch_size: needed (>= 1) when start is a single token id")
    return torch.full((batch_size,), int(start), dtype=torch.long, device=device)


def _check_args(max_length: int, eos: int | None) -> None:
    if type(max_length) is not int or max_length < 0:
        raise ValueError(f"max_length: expected an integer >= 0, got {max_length!r}")
    if eos is not None and (type(eos) is not int or eos < 0):
        raise ValueError(f"eos: expected a token id >= 0 or None, got {eos!r}")


def _check_logprobs(logprobs: Tensor, rows: int, t: int) -> None:
    if logprobs.dim() != 2 or logprobs.shape[0] != rows:
        raise ValueError(
            f"step: expected log-probabilities of shape ({rows}, V) at step {t}, "
            f"got {tuple(logprobs.shape)}"
        )
    if bool(torch.isnan(logprobs).any()):
        raise ValueError(f"step: NaN log-probabilities at step {t} (a diverged or damaged model)")


@torch.no_grad()
def _run_rows(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor,
    max_length: int,
    eos: int | None,
    choose: Callable[[Tensor], Tensor],
) -> list[Hypothesis]:
    """One token per row until ``eos`` or ``max_length``; finished rows leave the batch."""
    B = start.shape[0]
    tokens: list[list[int]] = [[] for _ in range(B)]
    steps: list[list[float]] = [[] for _ in range(B)]
    finished = [False] * B
    rows = list(range(B))  # batch position -> original row
    current = start
    for t in range(max_length):
        logprobs, state = step(current, state)  # (b, V)
        _check_logprobs(logprobs, len(rows), t)
        chosen = choose(logprobs)  # (b,)
        picked = logprobs.gather(1, chosen[:, None])[:, 0].tolist()
        keep = []
        for i, (row, token, lp) in enumerate(zip(rows, chosen.tolist(), picked, strict=True)):
            steps[row].append(lp)
            if eos is not None and token == eos:
                finished[row] = True
            else:
                tokens[row].append(token)
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=chosen.device)
            state = reorder(state, index)
            chosen = chosen.index_select(0, index)
            rows = [rows[i] for i in keep]
        current = chosen
    return [
        Hypothesis(tokens[r], sum(steps[r]), sum(steps[r]), finished[r], steps[r]) for r in range(B)
    ]


def greedy(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor | int,
    *,
    max_length: int,
    eos: int | None = None,
    batch_size: int | None = None,
) -> list[Hypothesis]:
    """The most likely token at every step, for each of B rows.

    ``start`` is the first input token: (B,) ids, or one id with ``batch_size``. ``state`` is the
    model's state for those B rows. Decoding a row stops at ``eos`` or after ``max_length`` tokens
    (the end token counts towards ``max_length``, as in a loop of ``max_length`` steps). Ties go
    to the lowest token id (torch's argmax)."""
    _check_args(max_length, eos)
    device = start.device if isinstance(start, Tensor) else None
    ids = _start(start, batch_size, device)
    return _run_rows(step, reorder, state, ids, max_length, eos, lambda lp: lp.argmax(-1))


def sample(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor | int,
    *,
    max_length: int,
    eos: int | None = None,
    batch_size: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[Hypothesis]:
    """Draw each token from the model's distribution: log-probabilities divided by
    ``temperature`` (0: argmax), then ``top_k`` and ``top_p`` filtering. ``generator`` makes the
    draws reproducible (the global RNG is used without one). Returned log-probabilities are the
    model's own (before temperature and filtering)."""
    _check_args(max_length, eos)
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if type(top_k) is not int or top_k < 0:
        raise ValueError(f"top_k: expected an integer >= 0, got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    device = start.device if isinstance(start, Tensor) else None
    ids = _start(start, batch_size, device)

    def choose(logprobs: Tensor) -> Tensor:
        if temperature == 0:
            return logprobs.argmax(-1)
        filtered = filter_logprobs(logprobs.float() / temperature, top_k, top_p)
        probs = filtered.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return _run_rows(step, reorder, state, ids, max_length, eos, choose)


@torch.no_grad()
def beam_search(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor | int,
    *,
    beam: int,
    max_length: int,
    eos: int | None = None,
    batch_size: int | None = None,
    alpha: float = 0.0,
    num_return: int = 1,
) -> list[list[Hypothesis]]:
    """The ``num_return`` best hypotheses per row (best first), by beam search of width ``beam``.

    ``state`` holds B rows (one per source); it is expanded to B*beam rows with ``reorder``.
    ``alpha`` is the length-normalisation strength (0: rank by summed log-probability; with
    alpha = 0 and beam 1 the result is greedy's). Hypotheses cut at ``max_length`` without
    ``eos`` compete with finished ones when no ``eos`` was produced often enough."""
    _check_args(max_length, eos)
    if type(beam) is not int or beam < 1:
        raise ValueError(f"beam: expected an integer >= 1, got {beam!r}")
    if not 1 <= num_return <= beam:
        raise ValueError(f"num_return: expected 1..beam={beam}, got {num_return!r}")
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha: expected a finite number >= 0, got {alpha!r}")
    device = start.device if isinstance(start, Tensor) else None
    first = _start(start, batch_size, device)
    B, K = first.shape[0], beam
    expand = torch.arange(B, device=first.device).repeat_interleave(K)  # (B*K,)
    state = reorder(state, expand)
    current = first.index_select(0, expand)  # (B*K,)
    # Only beam 0 of each source is live at first (the K copies are identical).
    scores = torch.full((B, K), -math.inf, device=first.device, dtype=torch.float64)
    scores[:, 0] = 0.0
    history: list[list[list[float]]] = [[[] for _ in range(K)] for _ in range(B)]
    paths: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]
    done_list: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    bound_lp = length_penalty(max_length, alpha)
    for t in range(max_length):
        logprobs, state = step(current, state)  # (B*K, V)
        _check_logprobs(logprobs, B * K, t)
        V = logprobs.shape[1]
        total = scores[:, :, None] + logprobs.view(B, K, V).double()  # (B, K, V)
        best, flat = total.view(B, K * V).topk(min(2 * K, K * V), dim=-1)  # (B, 2K)
        origin, token = flat // V, flat % V
        new_scores = torch.full((B, K), -math.inf, device=first.device, dtype=torch.float64)
        parent = torch.zeros((B, K), dtype=torch.long, device=first.device)
        next_token = torch.zeros((B, K), dtype=torch.long, device=first.device)
        new_paths, new_history = [], []
        best_l, origin_l, token_l = best.tolist(), origin.tolist(), token.tolist()
        for b in range(B):
            kept_paths, kept_history = [], []
            if not done[b]:
                for j in range(len(best_l[b])):
                    s, o, tok = best_l[b][j], origin_l[b][j], token_l[b][j]
                    if s == -math.inf or len(kept_paths) == K:
                        break
                    lp_tok = s - float(scores[b, o])
                    if eos is not None and tok == eos:
                        length = len(paths[b][o]) + 1
                        done_list[b].append(
                            Hypothesis(
                                list(paths[b][o]),
                                s,
                                s / length_penalty(length, alpha),
                                True,
                                [*history[b][o], lp_tok],
                            )  # fmt: skip
                        )
                        continue
                    slot = len(kept_paths)
                    new_scores[b, slot], parent[b, slot], next_token[b, slot] = s, o, tok
                    kept_paths.append([*paths[b][o], tok])
                    kept_history.append([*history[b][o], lp_tok])
            while len(kept_paths) < K:
                kept_paths.append([])
                kept_history.append([])
            new_paths.append(kept_paths)
            new_history.append(kept_history)
        paths, history, scores = new_paths, new_history, new_scores
        for b in range(B):
            if done[b]:
                continue
            live = scores[b].max().item()
            finished = sorted(done_list[b], key=lambda h: -h.score)
            if live == -math.inf or (
                len(finished) >= K and finished[K - 1].score >= live / bound_lp
            ):
                done[b] = True
        if all(done):
            break
        rows = (torch.arange(B, device=first.device)[:, None] * K + parent).view(-1)
        state = reorder(state, rows)
        current = next_token.view(-1)
    results = []
    for b in range(B):
        pool = list(done_list[b])
        if not done[b]:  # cut at max_length: live beams compete, unfinished
            for k in range(K):
                s = float(scores[b, k])
                if s > -math.inf:
                    length = len(paths[b][k])
                    pool.append(
                        Hypothesis(
                            paths[b][k], s, s / length_penalty(length, alpha), False, history[b][k]
                        )  # fmt: skip
                    )
        pool.sort(key=lambda h: -h.score)
        results.append(pool[:num_return])
    return results
