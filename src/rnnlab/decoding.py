"""Decoding shared by every decoder: greedy, sampling (temperature, top-k, top-p) and beam search.

Any model decodes here if it offers the small step protocol::

    logprobs, state = step(tokens, state)   # tokens (B,) int64 -> logprobs (B, V), new state
    state = reorder(state, index)           # index (B',) int64: rows of the batch to keep/repeat

``step`` consumes one token per row and returns the log-probabilities of the next one; the state is
whatever the model carries (a recurrent state, encoder outputs for attention, ...), opaque here.
``reorder`` gathers batch rows: beam search uses it to expand B sources into B*K beams and to
follow the surviving beams; greedy and sampling use it to drop rows that have finished, so a
batch of short and long outputs costs what the long ones cost. :func:`reorder_rows` does it for
tensors (batch on a given dim) and tuples/lists/dicts of them. A caller that already holds the
first distribution (a char-LM after its prime) passes it as ``first`` (B, V): the first step is
then not run.

Every function returns :class:`Hypothesis` objects: the tokens produced (without the start token
and without the end token), their summed log-probability, the score used for ranking, and whether
the end token was produced (``False``: cut at the row's ``max_length``).

A row's result is a function of that row alone, never of the batch it was decoded in:
``max_length`` may be given per row (a row that reaches its own limit is finished), and sampling
draws either from one generator for the whole batch (streams of one prime, as ``rnnlab sample``
does) or from one generator per row; :func:`source_generators` derives those from a seed and
the source itself, so a source samples the same text alone or in any batch.

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

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DecodingError",
    "Hypothesis",
    "StepFn",
    "ReorderFn",
    "beam_search",
    "choose_tokens",
    "filter_logprobs",
    "greedy",
    "length_penalty",
    "reorder_rows",
    "sample",
    "source_generators",
]

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
ReorderFn = Callable[[Any, Tensor], Any]
TokenFn = Callable[[int, Tensor], None]
MaxLength = int | Sequence[int] | Tensor


class DecodingError(ValueError):
    """Decoding cannot go on: the model produced non-finite logits (diverged or damaged)."""


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
    """(B, V) log-probabilities (or logits) with tokens outside the top-k and outside the top-p
    nucleus set to -inf. The nucleus is the smallest set of most likely tokens whose mass reaches
    ``top_p``; the most likely token always survives; ties at the k-th place keep exactly k."""
    V = logprobs.shape[-1]
    if 0 < top_k < V:
        values, index = logprobs.topk(top_k, dim=-1)  # (B, k)
        logprobs = torch.full_like(logprobs, -math.inf).scatter(-1, index, values)
    if top_p < 1.0:
        ordered, order = logprobs.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(dim=-1)
        # Mass strictly before each token in the ranking: a token is dropped once the tokens
        # before it reach p, so the most likely token always survives.
        before = torch.cat([probs.new_zeros(probs.shape[0], 1), probs.cumsum(-1)[:, :-1]], -1)
        ordered = ordered.masked_fill(before >= top_p, -math.inf)
        logprobs = torch.full_like(logprobs, -math.inf).scatter(-1, order, ordered)
    return logprobs


def _probabilities(logprobs: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """(B, V) float64 probabilities after temperature (> 0), top-k and top-p."""
    if temperature == 1 and not top_k and top_p == 1:
        # softmax subtracts the row's max itself: the same distribution in one op
        return torch.softmax(logprobs, dim=-1, dtype=torch.float64)
    # Shift so the best token is 0 before dividing, in float64: at any temperature > 0 the best
    # token keeps weight exp(0) = 1 and the others underflow to exactly 0 at worst, never NaN
    # (dividing first overflows to inf at temperature 1e-40 and softmax gives NaN).
    x = logprobs.double()
    x = (x - x.amax(dim=-1, keepdim=True)) / temperature
    return filter_logprobs(x, top_k, top_p).softmax(dim=-1)


def choose_tokens(
    logprobs: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row of ``logprobs`` (B, V) (logits do as well) -> (B,) int64: the argmax
    at temperature 0, else a draw from softmax(logprobs / temperature) after top-k and top-p.
    All rows draw from ``generator`` (the global RNG without one)."""
    if temperature == 0:
        return logprobs.argmax(dim=-1)
    probs = _probabilities(logprobs, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _draw_per_row(probs: Tensor, generators: Sequence[torch.Generator], rows: Tensor) -> Tensor:
    """Row i of ``probs`` (b, V) draws with ``generators[rows[i]]``: one float64 uniform each,
    inverted through the row's cumulative distribution -> (b,)."""
    u = torch.stack([torch.rand((), dtype=torch.float64, generator=generators[r])
                     for r in rows.tolist()]).to(probs.device)  # fmt: skip
    cdf = probs.cumsum(dim=-1)  # (b, V)
    total = cdf[:, -1]
    # u < 1, but u * total may round up to total: keep it strictly below, so the first token
    # whose cumulative mass exceeds it always has a positive probability.
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x[:, None], right=True)[:, 0]


def source_seed(seed: int, source: Tensor) -> int:
    """A 63-bit seed from ``seed`` and one source's contents: blake2b over the seed (8 bytes,
    little-endian), the source's dtype, shape and bytes (C order). The same source gives the same
    seed in any batch, on any device."""
    data = source.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(int(seed).to_bytes(8, "little"), digest_size=8)
    digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def source_generators(seed: int, sources: Sequence[Tensor]) -> list[torch.Generator]:
    """One CPU generator per source, seeded by :func:`source_seed`: sampling with these makes
    each row's output a function of ``seed`` and its own source only. Pass a source without its
    padding (``source[i, :length]``), so that the batch's padded length does not enter."""
    if type(seed) is not int or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    return [torch.Generator().manual_seed(source_seed(seed, s)) for s in sources]


# -- the per-row loop (greedy, sampling) ------------------------------------------------------


def _start(start: Tensor | int | None, batch_size: int | None, device: torch.device | None,
           first: Tensor | None) -> Tensor:  # fmt: skip
    if first is not None:
        if first.dim() != 2:
            raise ValueError(f"first: expected log-probabilities (B, V), got {tuple(first.shape)}")
        if start is None:  # never fed to step: the first step is not run
            return torch.zeros(first.shape[0], dtype=torch.long, device=first.device)
    if isinstance(start, Tensor):
        if start.dim() != 1:
            raise ValueError(f"start: expected token ids of shape (B,), got {tuple(start.shape)}")
        if first is not None and first.shape[0] != start.shape[0]:
            raise ValueError(f"first: expected {start.shape[0]} rows, got {first.shape[0]}")
        return start.long()
    if start is None:
        raise ValueError("start: needed (token ids) unless first log-probabilities are given")
    if first is not None:
        batch_size = first.shape[0]
    if batch_size is None or batch_size < 1:
        raise ValueError("batch_size: needed (>= 1) when start is a single token id")
    return torch.full((batch_size,), int(start), dtype=torch.long, device=device)


def _limits(max_length: MaxLength, B: int) -> list[int]:
    """Per-row limits from one ``max_length`` or a sequence/tensor of B of them."""
    if isinstance(max_length, Tensor):
        max_length = max_length.tolist()
    if isinstance(max_length, int) and not isinstance(max_length, bool):
        limits = [max_length] * B
    elif isinstance(max_length, Sequence) and len(max_length) == B:
        limits = list(max_length)
    else:
        raise ValueError(f"max_length: expected an integer or {B} of them, got {max_length!r}")
    for n in limits:
        if type(n) is not int or n < 0:
            raise ValueError(f"max_length: expected integers >= 0, got {n!r}")
    return limits


def _check_eos(eos: int | None) -> None:
    if eos is not None and (type(eos) is not int or eos < 0):
        raise ValueError(f"eos: expected a token id >= 0 or None, got {eos!r}")


def _check_logprobs(logprobs: Tensor, rows: int, t: int) -> None:
    if logprobs.dim() != 2 or logprobs.shape[0] != rows:
        raise ValueError(
            f"step: expected log-probabilities of shape ({rows}, V) at step {t}, "
            f"got {tuple(logprobs.shape)}"
        )
    # One float64 reduction and one sync per step: NaN anywhere makes the sum NaN, +inf makes it
    # +inf (or NaN next to a legitimate -inf); -inf alone (an impossible token) passes.
    if not logprobs.sum(dtype=torch.float64).item() < math.inf:
        raise DecodingError(
            f"step: the model produced non-finite logits (NaN/inf) at step {t}: its weights are "
            "diverged or damaged; decode an earlier checkpoint or retrain with a lower --lr"
        )


@torch.no_grad()
def _run_rows(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor,
    first: Tensor | None,
    limits: list[int],
    eos: int | None,
    choose: Callable[[Tensor, Tensor], Tensor],
    on_token: TokenFn | None,
    keep_steps: bool,
    score: bool = True,
) -> list[Hypothesis]:
    """One token per row until ``eos`` or the row's own limit; finished rows leave the batch.
    Without ``score`` the chosen tokens' log-probabilities are not gathered or summed (a
    hypothesis's ``logprob`` and ``score`` are NaN): a sampler that only wants text saves that
    work at every step.

    Tokens are kept on the device in one (B, T) tensor and read back once at the end, so a batch
    that never drops a row (no ``eos``, one limit: a char-LM's streams) costs per step only the
    model's step, the choice and a column write."""
    B, device = start.shape[0], start.device
    T = max(limits, default=0)
    out = torch.zeros(B, T, dtype=torch.long, device=device)  # (B, T)
    logps = torch.zeros(B, T, dtype=torch.float64, device=device) if keep_steps else None
    total = torch.zeros(B, dtype=torch.float64, device=device)  # (B,) summed log-probabilities
    lengths, finished = list(limits), [False] * B
    rows = torch.arange(B, device=device)  # batch position -> original row
    everyone = True  # rows is still arange(B)
    if min(limits, default=0) == 0:  # rows with nothing to decode never enter
        keep = torch.tensor([n > 0 for n in limits], device=device).nonzero()[:, 0]
        rows, everyone = keep, False
        state, start = reorder(state, keep), start.index_select(0, keep)
        first = None if first is None else first.index_select(0, keep.to(first.device))
    fixed = eos is None and min(limits, default=0) == T  # no row can leave before the end
    limit_t = torch.tensor(limits, device=device)
    current = start
    for t in range(T if rows.numel() else 0):
        if t == 0 and first is not None:
            logprobs = first
        else:
            logprobs, state = step(current, state)  # (b, V)
        _check_logprobs(logprobs, rows.shape[0], t)
        chosen = choose(logprobs, rows).to(device)  # (b,)
        if everyone:
            out[:, t] = chosen
        else:
            out[rows, t] = chosen
        if score:
            picked = logprobs.gather(1, chosen[:, None].to(logprobs.device))[:, 0].double()
            total.index_add_(0, rows, picked.to(device))
            if logps is not None:
                logps[rows, t] = picked.to(device)
        if on_token is not None:
            on_token(t, chosen)
        current = chosen
        if fixed:
            continue
        ended = limit_t.index_select(0, rows) <= t + 1  # (b,) rows at their own limit
        if eos is not None:
            ended |= chosen == eos
        if not bool(ended.any()):
            continue
        at = ended.nonzero()[:, 0]
        for r, token in zip(rows[at].tolist(), chosen[at].tolist(), strict=True):
            lengths[r], finished[r] = t + 1, token == eos
        keep = (~ended).nonzero()[:, 0]
        if keep.numel() == 0:
            break
        state, current, rows = reorder(state, keep), chosen[keep], rows[keep]
        everyone = False
    tokens, totals = out.tolist(), total.tolist() if score else [math.nan] * B
    steps = logps.tolist() if logps is not None else None
    found = []
    for r in range(B):
        n, kept = lengths[r], steps[r][: lengths[r]] if steps is not None else []
        found.append(Hypothesis(tokens[r][: n - 1 if finished[r] else n], totals[r], totals[r],
                                finished[r], kept))  # fmt: skip
    return found


def greedy(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor | int | None,
    *,
    max_length: MaxLength,
    eos: int | None = None,
    batch_size: int | None = None,
    first: Tensor | None = None,
    on_token: TokenFn | None = None,
    keep_steps: bool = True,
    score: bool = True,
) -> list[Hypothesis]:
    """The most likely token at every step, for each of B rows.

    ``start`` is the first input token: (B,) ids, or one id with ``batch_size``. ``state`` is the
    model's state for those B rows. Decoding a row stops at ``eos`` or after ``max_length`` tokens
    (one limit, or one per row; the end token counts towards it, as in a loop of ``max_length``
    steps). Ties go to the lowest token id (torch's argmax). ``first`` (B, V): log-probabilities
    of the first token, already computed (then ``start`` may be None). ``on_token(t, tokens)``
    sees the tokens (b,) of the rows still decoding after each step. ``keep_steps=False`` leaves
    ``Hypothesis.steps`` empty (long outputs: a float per token saved); ``score=False`` skips the
    log-probability sums (``logprob`` and ``score`` are then NaN)."""
    _check_eos(eos)
    device = start.device if isinstance(start, Tensor) else None
    ids = _start(start, batch_size, device, first)
    return _run_rows(step, reorder, state, ids, first, _limits(max_length, ids.shape[0]), eos,
                     lambda lp, rows: lp.argmax(-1), on_token, keep_steps, score)  # fmt: skip


def sample(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor | int | None,
    *,
    max_length: MaxLength,
    eos: int | None = None,
    batch_size: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    first: Tensor | None = None,
    on_token: TokenFn | None = None,
    keep_steps: bool = True,
    score: bool = True,
) -> list[Hypothesis]:
    """Draw each token from the model's distribution: log-probabilities divided by
    ``temperature`` (0: argmax), then ``top_k`` and ``top_p`` filtering (:func:`choose_tokens`).

    ``generator``: one generator for the whole batch (reproducible for this batch; the global RNG
    without one), or one CPU generator per row (e.g. :func:`source_generators`), with which each
    row's draws depend on that row alone. Returned log-probabilities are the model's own (before
    temperature and filtering). The other arguments are :func:`greedy`'s."""
    _check_eos(eos)
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if type(top_k) is not int or top_k < 0:
        raise ValueError(f"top_k: expected an integer >= 0, got {top_k!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    device = start.device if isinstance(start, Tensor) else None
    ids = _start(start, batch_size, device, first)
    per_row = generator is not None and not isinstance(generator, torch.Generator)
    if per_row and len(generator) != ids.shape[0]:  # type: ignore[arg-type]
        raise ValueError(f"generator: expected one or {ids.shape[0]} generators, "
                         f"got {len(generator)}")  # type: ignore[arg-type]  # fmt: skip

    def choose(logprobs: Tensor, rows: Tensor) -> Tensor:
        if temperature == 0 or not per_row:
            return choose_tokens(logprobs, temperature=temperature, top_k=top_k, top_p=top_p,
                                 generator=generator)  # type: ignore[arg-type]  # fmt: skip
        probs = _probabilities(logprobs, temperature, top_k, top_p)
        return _draw_per_row(probs, generator, rows)  # type: ignore[arg-type]

    return _run_rows(step, reorder, state, ids, first, _limits(max_length, ids.shape[0]), eos,
                     choose, on_token, keep_steps, score)  # fmt: skip


# -- beam search ------------------------------------------------------------------------------


def _unwind(path: tuple | None) -> list:
    """A path kept as nested pairs (last, (previous, (...))) -> the list, oldest first. Pairs
    let a beam extend its parent's path in O(1) instead of copying it every step."""
    items = []
    while path is not None:
        items.append(path[0])
        path = path[1]
    return items[::-1]


@torch.no_grad()
def beam_search(
    step: StepFn,
    reorder: ReorderFn,
    state: Any,
    start: Tensor | int | None,
    *,
    beam: int,
    max_length: MaxLength,
    eos: int | None = None,
    batch_size: int | None = None,
    alpha: float = 0.0,
    num_return: int = 1,
    first: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """The ``num_return`` best hypotheses per row (best first), by beam search of width ``beam``.

    ``state`` holds B rows (one per source); it is expanded to B*beam rows with ``reorder``.
    ``alpha`` is the length-normalisation strength (0: rank by summed log-probability; with
    alpha = 0 and beam 1 the result is greedy's). Hypotheses cut at the row's ``max_length``
    without ``eos`` compete with finished ones when no ``eos`` was produced often enough. Fewer
    than ``num_return`` come back when fewer sequences exist. ``first``: as in :func:`greedy`."""
    _check_eos(eos)
    if type(beam) is not int or beam < 1:
        raise ValueError(f"beam: expected an integer >= 1, got {beam!r}")
    if not 1 <= num_return <= beam:
        raise ValueError(f"num_return: expected 1..beam={beam}, got {num_return!r}")
    if not (alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha: expected a finite number >= 0, got {alpha!r}")
    device = start.device if isinstance(start, Tensor) else None
    first_ids = _start(start, batch_size, device, first)
    B, K, device = first_ids.shape[0], beam, first_ids.device
    limits = _limits(max_length, B)
    expand = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,)
    state = reorder(state, expand)
    current = first_ids.index_select(0, expand)  # (B*K,)
    if first is not None:
        first = first.index_select(0, expand.to(first.device))
    # Only beam 0 of each source is live at first (the K copies are identical).
    scores = [[0.0] + [-math.inf] * (K - 1) for _ in range(B)]  # summed log-probs, per beam
    paths: list[list[tuple | None]] = [[None] * K for _ in range(B)]  # tokens, as nested pairs
    history: list[list[tuple | None]] = [[None] * K for _ in range(B)]  # per-token log-probs
    # finished hypotheses (and live ones once cut); a row allowed no token gets the empty one
    pool = [[Hypothesis([], 0.0, 0.0, False)] if n == 0 else [] for n in limits]
    done = [n == 0 for n in limits]
    for t in range(max(limits, default=0)):
        if all(done):
            break
        if t == 0 and first is not None:
            logprobs = first
        else:
            logprobs, state = step(current, state)  # (B*K, V)
        _check_logprobs(logprobs, B * K, t)
        V = logprobs.shape[1]
        base = torch.tensor(scores, dtype=torch.float64, device=logprobs.device)  # (B, K)
        total = base[:, :, None] + logprobs.view(B, K, V).double()  # (B, K, V)
        best, flat = total.view(B, K * V).topk(min(2 * K, K * V), dim=-1)  # (B, 2K)
        best_l, origin_l, token_l = best.tolist(), (flat // V).tolist(), (flat % V).tolist()
        parent = [[0] * K for _ in range(B)]
        next_token = [[0] * K for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            new_scores, new_paths, new_history = [], [], []
            for s, o, tok in zip(best_l[b], origin_l[b], token_l[b], strict=True):
                if s == -math.inf or len(new_scores) == K:
                    break
                lp_tok = s - scores[b][o]
                if eos is not None and tok == eos:
                    n = t + 1  # this path's length, the end token included
                    pool[b].append(Hypothesis(_unwind(paths[b][o]), s, s / length_penalty(n, alpha),
                                              True, _unwind((lp_tok, history[b][o]))))  # fmt: skip
                    continue
                parent[b][len(new_scores)], next_token[b][len(new_scores)] = o, tok
                new_scores.append(s)
                new_paths.append((tok, paths[b][o]))
                new_history.append((lp_tok, history[b][o]))
            live = len(new_scores)
            scores[b] = new_scores + [-math.inf] * (K - live)
            paths[b] = new_paths + [None] * (K - live)
            history[b] = new_history + [None] * (K - live)
            best_live = max(scores[b])
            ranked = sorted((h.score for h in pool[b]), reverse=True)
            bound = best_live / length_penalty(limits[b], alpha)  # the best any live beam can do
            if best_live == -math.inf or (len(ranked) >= K and ranked[K - 1] >= bound):
                done[b] = True
            elif t + 1 >= limits[b]:  # the row's own limit: its live beams are cut here
                done[b] = True
                for k in range(live):
                    pool[b].append(Hypothesis(_unwind(paths[b][k]), scores[b][k],
                                              scores[b][k] / length_penalty(t + 1, alpha), False,
                                              _unwind(history[b][k])))  # fmt: skip
        if all(done):
            break
        rows = [b * K + parent[b][k] for b in range(B) for k in range(K)]
        state = reorder(state, torch.tensor(rows, dtype=torch.long, device=device))
        current = torch.tensor(next_token, dtype=torch.long, device=device).view(-1)
    return [sorted(p, key=lambda h: -h.score)[:num_return] for p in pool]
