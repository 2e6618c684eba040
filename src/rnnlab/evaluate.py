"""Evaluation: loss in nats/char and bits/char over a token stream, state carried across chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnlab.data import StreamBatcher
from rnnlab.models import CharLM


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per character
    tokens: int  # characters scored

    @property
    def bpc(self) -> float:
        """Bits per character."""
        return self.loss / math.log(2)


@torch.no_grad()
def evaluate_tokens(
    model: CharLM, data: StreamBatcher, max_batches: int | None = None
) -> EvalResult:
    """Mean loss over the batches of ``data`` in order, carrying each stream's state forward
    (as in training, so every character is predicted with its full left context)."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    total, count, state = 0.0, 0, None
    n = data.num_batches if max_batches is None else min(max_batches, data.num_batches)
    for k in range(n):
        x, y = (t.to(device) for t in data.get(k))  # (B, T)
        logits, state = model(x, state)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return EvalResult(total / max(count, 1), count)
