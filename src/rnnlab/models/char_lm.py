"""CharLM: the character-level language model (embedding -> Recurrent -> dropout -> linear to V).

The embedding is the lecture's one-hot input times W_xh, done as a column lookup. With
``tie_weights`` the output layer reuses the embedding matrix (Press & Wolf 2017; Inan et al. 2017),
which needs ``embedding_size == hidden_size``.

Regularisers (AWD-LSTM's set, Merity et al. 2017, plus zoneout; all off by default, all only in
training mode; ``rnnlab.regularisers``): ``embedding_dropout`` drops whole rows of the embedding
(a character's vector) per forward; ``dropout_input`` is locked dropout on the embedding output;
``dropout`` sits between layers and before the head, per element or, with ``locked_dropout``,
one mask per sequence shared over time (Gal & Ghahramani 2016); ``weight_drop`` is DropConnect
on the recurrent matrices and ``zoneout``/``zoneout_cell`` zoneout of h and the LSTM's c
(Krueger et al. 2016), both inside ``Recurrent``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import ShapeError, State, cell_class
from rnnlab.decoding import reorder_rows
from rnnlab.recurrent import Recurrent
from rnnlab.regularisers import embedding_dropout, locked_dropout


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
    zoneout: float = 0.0
    zoneout_cell: float = 0.0
    weight_drop: float = 0.0
    locked_dropout: bool = False
    dropout_input: float = 0.0
    embedding_dropout: float = 0.0

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
        if self.zoneout_cell and not cell_class(self.cell).has_cell_state:
            raise ValueError(f"zoneout_cell: the {self.cell} cell has no cell state c")
        for name in ("dropout_input", "embedding_dropout"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")

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
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,  # between layers only
            batch_first=True,
            backend=config.backend,
            zoneout=config.zoneout,
            zoneout_cell=config.zoneout_cell if cell_class(config.cell).has_cell_state else None,
            weight_drop=config.weight_drop,
            locked_dropout=config.locked_dropout,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(H, V)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, idx: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if idx.dim() != 2:
            raise ShapeError(
                f"idx: expected a 2-D (B, T) tensor of token ids, got shape {tuple(idx.shape)}"
            )
        c = self.config
        table = embedding_dropout(self.embedding.weight, c.embedding_dropout, self.training)
        if self.training and c.dropout_input > 0:  # a per-sequence mask: no table to fold
            x = locked_dropout(F.embedding(idx, table), c.dropout_input, True, time_dim=1)
            h, state = self.rnn(x, state)  # (B, T, H)
        else:
            # The embedding is a lookup input of the recurrence: on the fused engine it is folded
            # into layer 0's input projection (exact; see rnnlab.recurrent).
            h, state = self.rnn(idx, state, embedding=table)  # (B, T, H)
        if c.locked_dropout:
            h = locked_dropout(h, c.dropout, self.training, time_dim=1)
        else:
            h = self.drop(h)
        return self.head(h), state  # (B, T, V)

    def folds_embedding(self, idx: Tensor) -> bool:
        """Whether ``forward(idx)`` folds the embedding into layer 0's input projection (see
        ``Recurrent.folds_lookup``)."""
        return self.rnn.folds_lookup(idx.numel(), self.config.vocab_size)

    def resolved_backend(self, device: torch.device | str | None = None) -> str:
        """The recurrence's backend in training (``auto`` counts the embedding lookup: on CPU the
        LSTM then runs fused, not on oneDNN)."""
        return self.rnn.resolved_backend(device, lookup=True)

    @torch.no_grad()
    def step(
        self, idx: Tensor, state: State | None = None, *, weight_dtype: torch.dtype | None = None
    ) -> tuple[Tensor, State]:
        """One character per stream, for sampling: idx (B,) -> logits (B, V). No autograd; on
        CPU the recurrence is one C++ call (``Recurrent.step``), so generating a character costs
        its matrix-vector products, not a framework call per layer. ``weight_dtype``
        (``torch.bfloat16``): the recurrence reads reduced-precision copies of its weight
        matrices (``Recurrent.step``); the head stays float32."""
        h, state = self.rnn.step(
            idx, state, embedding=self.embedding.weight, weight_dtype=weight_dtype
        )  # (B, H)
        return self.head(h), state  # (B, V)

    @staticmethod
    def reorder(state: State, index: Tensor) -> State:
        """Streams ``index`` (B',) of a state (L, B, H) (or ``(h, c)``): the decoding protocol's
        reorder (``rnnlab.decoding``), with which beam search follows its beams and sampling
        copies the prime's state to every stream. Decoding's step is ``rnnlab.sample``'s
        log-softmax of :meth:`step`."""
        return reorder_rows(state, index, dim=1)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> State:
        return self.rnn.initial_state(batch, self.head.weight.new_zeros(()).to(device))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
