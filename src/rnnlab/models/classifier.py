"""SequenceClassifier: many-to-one. Embedding -> Recurrent (any cell, optionally bidirectional) ->
the last state or pooled states -> linear to C classes.

    x1 x2 ... xT   (token ids, padded batch with lengths)
     |  |      |
    [Recurrent]  -> outputs (B, T, D*H), zero past each length; h_n each sequence's own last state
         |
    pooling: last  h_n of the top layer (both directions: forward at step T, backward at step 1)
             mean  outputs summed over real steps / length
             max   element-wise max over real steps
         |
    dropout -> linear -> logits (B, C)

Padding never changes a sequence's logits: the core runs a padded batch as each sequence alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from rnnlab.cells import CellName, ShapeError
from rnnlab.recurrent import Recurrent
from rnnlab.validation import setting, validate


@dataclass
class ClassifierConfig:
    """Architecture of a SequenceClassifier (``vocab_size`` includes ``<pad>`` and ``<unk>``)."""

    vocab_size: int = setting(32, "input symbols, specials included", low=2, high=2**24)
    num_classes: int = setting(2, "labels", low=1, high=2**20)
    embedding_size: int = setting(32, "embedding width", low=1, high=16384)
    hidden_size: int = setting(64, "units per layer and direction", low=1, high=16384)
    num_layers: int = setting(1, "stacked recurrent layers", low=1, high=64)
    cell: CellName = setting("lstm", "recurrent cell")
    bidirectional: bool = setting(False, "read the sequence both ways")
    dropout: float = setting(0.0, "dropout on embeddings, between layers, before the output",
                             low=0.0, high=0.9)  # fmt: skip
    pooling: Literal["last", "mean", "max"] = setting("last", "how the states become one vector")
    backend: Literal["auto", "reference", "native", "fused"] = setting("auto", "recurrence engine")

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SequenceClassifier(nn.Module):
    """``logits = model(ids, lengths)``: ids (B, T) padded with 0, lengths (B,) -> (B, C)."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        self.rnn = Recurrent(c.cell, c.embedding_size, c.hidden_size, num_layers=c.num_layers,
                             batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0,
                             bidirectional=c.bidirectional, backend=c.backend)  # fmt: skip
        self.drop = nn.Dropout(c.dropout)
        self.output = nn.Linear(self.rnn.output_size, c.num_classes)

    def encode(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """One vector per sequence (B, D*H)."""
        if ids.dim() != 2:
            raise ShapeError(f"ids: expected (B, T) token ids, got shape {tuple(ids.shape)}")
        if lengths.shape != (ids.shape[0],):
            raise ShapeError(f"lengths: expected shape ({ids.shape[0]},), got "
                             f"{tuple(lengths.shape)}")  # fmt: skip
        lengths = lengths.to("cpu", torch.long)
        if self.training and self.config.dropout:
            out, h_n = self.rnn(self.drop(self.embedding(ids)), lengths=lengths)
        else:
            out, h_n = self.rnn(ids, lengths=lengths, embedding=self.embedding.weight)
        pooling = self.config.pooling
        if pooling == "last":
            h = h_n[0] if isinstance(h_n, tuple) else h_n  # (L*D, B, H)
            D = self.rnn.num_directions
            return torch.cat(list(h[-D:]), dim=-1)  # top layer, directions concatenated
        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[
            :, None]  # fmt: skip
        if pooling == "mean":
            return out.sum(1) / lengths.to(out.device, out.dtype)[:, None]  # zero past lengths
        return out.masked_fill(~real[..., None], float("-inf")).amax(1)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        return self.output(self.drop(self.encode(ids, lengths)))  # (B, C)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
