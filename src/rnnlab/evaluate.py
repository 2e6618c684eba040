"""Evaluation: loss in nats/char and bits/char over a token stream, state carried across chunks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import State
from rnnlab.data import StreamBatcher
from rnnlab.models import CharLM


class NonFiniteScoreError(ValueError):
    """A score came out NaN or infinite: the model's logits overflowed (diverged or damaged
    weights). What every scoring command raises instead of printing ``nan``, as decoding does."""


def require_finite(scores: Mapping[str, float], where: str) -> None:
    """Raise NonFiniteScoreError naming ``where`` and each score that is NaN or infinite. The
    one rule for every command that scores (eval of each task); training keeps non-finite
    evaluations as values, since its loop judges them (an unhealthy evaluation)."""
    bad = {name: value for name, value in scores.items() if not math.isfinite(value)}
    if bad:
        shown = ", ".join(f"{name} {value}" for name, value in bad.items())
        raise NonFiniteScoreError(
            f"{where}: expected finite scores, found {shown}: the model produced non-finite "
            "logits (NaN/inf), its weights are diverged or damaged; evaluate an earlier "
            "checkpoint or retrain with a lower --lr"
        )


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per character
    tokens: int  # characters scored
    nats: float = 0.0  # summed cross-entropy: shards of one evaluation add up exactly

    @property
    def bpc(self) -> float:
        """Bits per character."""
        return self.loss / math.log(2)


@torch.no_grad()
def evaluate_tokens(
    model: CharLM, data: StreamBatcher, max_batches: int | None = None, rows: slice | None = None
) -> EvalResult:
    """Mean loss over the batches of ``data`` in order, carrying each stream's state forward
    (as in training, so every character is predicted with its full left context).

    ``rows`` scores only those streams (B', T) of each (B, T) batch: one rank's share of a
    sharded evaluation, whose ``nats`` and ``tokens`` the ranks add up."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    total, count, state = 0.0, 0, None
    n = data.num_batches if max_batches is None else min(max_batches, data.num_batches)
    if rows is not None and len(range(data.batch_size)[rows]) == 0:
        n = 0  # a rank with no streams of this batch
    for k in range(n):
        x, y = (t if rows is None else t[rows] for t in data.get(k))
        x, y = x.to(device), y.to(device)  # (B, T)
        logits, state = model(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return EvalResult(total / max(count, 1), count, total)


@torch.no_grad()
def evaluate_all(model: CharLM, tokens: np.ndarray, batch_size: int, seq_len: int) -> EvalResult:
    """Mean loss over every one of the N-1 next-token predictions of ``tokens`` (N,), none left
    out: ``batch_size`` contiguous streams walked in ``seq_len`` chunks with the state carried
    (the last chunk may be shorter), then the few targets left over (fewer than the number of
    streams) continuing the last stream's state. Tokens are read chunk by chunk (a memmap stays
    on disk)."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    n = len(tokens) - 1
    B = max(1, min(batch_size, n))
    L = n // B  # targets per stream

    def rows(starts: list[int], t0: int, t1: int) -> tuple[Tensor, Tensor]:
        x = np.stack([np.asarray(tokens[s + t0 : s + t1], dtype=np.int64) for s in starts])
        y = np.stack([np.asarray(tokens[s + t0 + 1 : s + t1 + 1], dtype=np.int64) for s in starts])
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def loss_sum(x: Tensor, y: Tensor, state: State | None) -> tuple[float, State]:
        logits, state = model(x, state)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item(), state

    total, state = 0.0, None
    starts = [b * L for b in range(B)]
    for t0 in range(0, L, max(1, seq_len)):
        part, state = loss_sum(*rows(starts, t0, min(L, t0 + seq_len)), state)
        total += part
    if n > B * L:  # the remainder follows the last stream's text: carry its state on
        last = tuple(s[:, -1:] for s in state) if isinstance(state, tuple) else state[:, -1:]
        part, _ = loss_sum(*rows([B * L], 0, n - B * L), last)
        total += part
    model.train(was_training)
    return EvalResult(total / max(n, 1), n, total)
