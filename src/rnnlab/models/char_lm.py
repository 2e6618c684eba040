"""CharLM: the character-level language model (embedding -> Recurrent -> dropout -> linear to V).

The embedding is the lecture's one-hot input times W_xh, done as a column lookup. With
``tie_weights`` the output layer reuses the embedding matrix (Press & Wolf 2017; Inan et al. 2017),
which needs ``embedding_size == hidden_size``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import State, cell_class
from rnnlab.recurrent import Recurrent


@dataclass
class CharLMConfig:
    """Architecture of a CharLM; ``embedding_size=0`` means ``hidden_size``."""

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 256
    num_layers: int = 2
    embedding_size: int = 0
    dropout: float = 0.0
    tie_weights: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        cell_class(self.cell)  # ValueError naming the cell
        if self.vocab_size <= 0:
            raise ValueError(f"vocab_size: expected a positive integer, got {self.vocab_size}")
        if self.embedding_size == 0:
            self.embedding_size = self.hidden_size
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise ValueError(
                f"tie_weights: needs embedding_size == hidden_size, got "
                f"{self.embedding_size} and {self.hidden_size}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class CharLM(nn.Module):
    """``logits, state = model(idx, state)``: idx (B, T) int64 -> logits (B, T, V).

    State is explicit (never kept inside the module): pass the previous call's state to continue
    a stream; the training loop detaches it at chunk boundaries (truncated BPTT).
    """

    def __init__(self, config: CharLMConfig) -> None:
        super().__init__()
        self.config = config
        E, H, V = config.embedding_size, config.hidden_size, config.vocab_size
        self.embedding = nn.Embedding(V, E)
        self.rnn = Recurrent(
            config.cell,
            E,
            H,
            config.num_layers,
            dropout=config.dropout,
            batch_first=True,
            backend=config.backend,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(H, V)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if idx.dim() != 2:
            raise ValueError(
                f"idx: expected a 2-D (B, T) tensor of token ids, got shape {tuple(idx.shape)}"
            )
        if not self.folds_embedding(idx):
            h, state = self.rnn(self.embedding(idx), state)  # (B, T, H)
            return self.head(self.drop(h)), state  # (B, T, V)
        from rnnlab.kernels import input_table, run_layers

        # The embedding folded into layer 0's input projection (exact): emb(idx) @ W_ih^T is row
        # idx of the (V, G) table P = E @ W_ih^T, so one V x E x G GEMM and a gather replace a
        # (B*T) x E x G GEMM. Backward: the gather's is an index_add into dP (V, G), then
        # dE = dP @ W_ih and dW_ih = dP^T @ E, small GEMMs instead of two (B*T)-row ones.
        table = input_table(self.rnn, self.embedding.weight)  # P (V, G); biases stay in the engine
        _, state, _ = self.rnn._prepare(
            table.new_empty(()).expand(*idx.shape, self.rnn.input_size), state
        )  # validates state; zeros if None
        h, state = run_layers(self.rnn, F.embedding(idx.t(), table), state, projected=True)
        return self.head(self.drop(h.transpose(0, 1))), state  # (B, T, V)

    def folds_embedding(self, idx: Tensor) -> bool:
        """Whether ``forward(idx)`` folds the embedding into layer 0's input projection: when the
        recurrence runs on rnnlab's C++ engine (backend ``fused``, or ``auto`` where the engine
        with the fold is fastest: ``choose_backend(..., projected_input=True)``) and the batch has
        more than 2V tokens, where the (V, G) table costs less than projecting every token."""
        from rnnlab.kernels import can_project

        return (self.resolved_backend() == "fused" and idx.numel() > 2 * self.config.vocab_size
                and self.embedding.padding_idx is None and self.embedding.max_norm is None
                and can_project(self.rnn))  # fmt: skip

    def resolved_backend(self, device: torch.device | str | None = None) -> str:
        """The recurrence's backend in training: ``self.rnn.resolved_backend``, except that
        ``auto`` counts the embedding fold (on CPU the LSTM then runs fused, not on oneDNN)."""
        from rnnlab.kernels import can_project, choose_backend

        rnn = self.rnn
        device = torch.device(device) if device is not None else self.embedding.weight.device
        if rnn.backend == "auto" and device == self.embedding.weight.device and can_project(rnn):
            return choose_backend(rnn.cell, rnn.hidden_size, device, projected_input=True)
        return rnn.resolved_backend(device)

    @torch.no_grad()
    def step(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """One character per stream, for sampling: idx (B,) -> logits (B, V). No autograd; on
        CPU the recurrence is one C++ call (``rnnlab.kernels.step_layers``), so generating a
        character costs its matrix-vector products, not a framework call per layer."""
        from rnnlab.kernels import step_layers

        h, state = step_layers(self.rnn, self.embedding(idx), state)  # (B, H)
        return self.head(h), state  # (B, V)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return self.rnn.initial_state(batch, self.head.weight.new_zeros(()).to(device))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
