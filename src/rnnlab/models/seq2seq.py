"""Seq2Seq: a many-to-one encoder followed by a one-to-many decoder (Sutskever et al. 2014).

The lecture's graph, with optional attention as a flag (off by default, so the plain
encoder-decoder stays the baseline)::

    source  x1 x2 ... xS </s>                 target in   <s> y1 ... yT
              | embedding                                  | embedding (+ context: bahdanau)
    encoder  [Recurrent, any cell, bi-dir?] --final state--> decoder [Recurrent, any cell]
              | outputs M (B, S, H)  - - - - attention - - - -> | h_t (B, T, H)
                                                               | (luong: tanh(W_c [c_t; h_t]))
                                                               v linear -> logits (B, T, V)
    target out  y1 ... yT </s>

- The decoder starts from the encoder's final state, layer by layer. A bidirectional encoder has
  H/2 units per direction and its two final states are concatenated (H units). An LSTM decoder
  after a non-LSTM encoder starts with c = 0; a non-LSTM decoder after an LSTM encoder takes h.
- Attention over the encoder outputs M, padding masked out:
  ``luong`` (Luong et al. 2015, "general" score h_t^T W_a m_j, no input feeding): the context
  c_t is computed from the decoder's output h_t, and ``tanh(W_c [c_t; h_t])`` replaces h_t;
  teacher-forced training stays one Recurrent call over the whole target.
  ``bahdanau`` (Bahdanau et al. 2015, additive score v^T tanh(W_s s_{t-1} + W_m m_j)): the context
  is computed from the previous decoder state and enters the decoder's input next to the token
  embedding; the output is ``tanh(W_c [c_t; s_t])``. Trained step by step.
- Teacher forcing feeds the reference token; ``sampling`` > 0 feeds, per row and step, the
  model's own sampled prediction with that probability (scheduled sampling, Bengio et al. 2015);
  then training runs step by step through ``Recurrent.step``.
- Decoding goes through ``rnnlab.decoding`` over :meth:`Seq2Seq.step` / :meth:`Seq2Seq.reorder`.

Token ids follow g2p-en's layout (its published weights load unchanged): source ``<pad>=0,
<unk>=1, </s>=2``, appended to every source; target ``<pad>=0, <unk>=1, <s>=2, </s>=3``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from rnnlab.cells import CellName, ShapeError, State, cell_class
from rnnlab.decoding import (
    Hypothesis,
    beam_search,
    greedy,
    reorder_rows,
    sample,
    source_generators,
)
from rnnlab.recurrent import Recurrent
from rnnlab.validation import setting, validate

PAD, UNK, SOURCE_EOS = 0, 1, 2  # source specials
BOS, EOS = 2, 3  # target specials (pad and unk as in the source)


@dataclass
class Seq2SeqConfig:
    """Architecture of a Seq2Seq (both vocabularies' sizes include their special tokens)."""

    source_vocab_size: int = setting(32, "source symbols, specials included", low=3, high=2**24)
    target_vocab_size: int = setting(32, "target symbols, specials included", low=4, high=2**24)
    embedding_size: int = setting(64, "embedding width of source and target symbols", low=1,
                                  high=65536)  # fmt: skip
    hidden_size: int = setting(256, "decoder units per layer (a bidirectional encoder has half "
                               "per direction)", low=2, high=65536)  # fmt: skip
    num_layers: int = setting(2, "layers of the encoder and of the decoder", low=1, high=64)
    encoder_cell: CellName = setting("lstm", "encoder cell")
    decoder_cell: CellName = setting("lstm", "decoder cell")
    bidirectional: bool = setting(False, "bidirectional encoder")
    dropout: float = setting(0.0, "dropout on embeddings, between layers and before the output",
                             low=0.0, high=0.99)  # fmt: skip
    attention: Literal["none", "luong", "bahdanau"] = setting(
        "none", "attention over the encoder outputs (none: the plain encoder-decoder)"
    )
    backend: Literal["auto", "reference", "native", "fused"] = setting("auto", "recurrence backend")

    def __post_init__(self) -> None:
        validate(self)
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError(
                f"hidden_size: a bidirectional encoder needs an even hidden_size (H/2 units per "
                f"direction), got {self.hidden_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DecoderState:
    """What a decoding step carries: the decoder's recurrent state (L, B, H) (a tuple for the
    LSTM), and for attention the encoder outputs (B, S, H), their projected keys (B, S, A) and
    the source mask (B, S)."""

    hidden: State
    memory: Tensor | None = None
    keys: Tensor | None = None
    mask: Tensor | None = None


class Seq2Seq(nn.Module):
    """``logits = model(source, source_lengths, target_in)``: (B, S), (B,), (B, T) -> (B, T, V)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = c = config
        E, H, L = c.embedding_size, c.hidden_size, c.num_layers
        He = H // 2 if c.bidirectional else H
        self.source_embedding = nn.Embedding(c.source_vocab_size, E)
        self.target_embedding = nn.Embedding(c.target_vocab_size, E)
        between = c.dropout if L > 1 else 0.0
        self.encoder = Recurrent(c.encoder_cell, E, He, num_layers=L, batch_first=True,
                                 dropout=between, bidirectional=c.bidirectional,
                                 backend=c.backend)  # fmt: skip
        extra = H if c.attention == "bahdanau" else 0  # the context enters the decoder's input
        self.decoder = Recurrent(c.decoder_cell, E + extra, H, num_layers=L, batch_first=True,
                                 dropout=between, backend=c.backend)  # fmt: skip
        if c.attention == "luong":
            self.attn_key = nn.Linear(H, H, bias=False)  # W_a: h_t^T W_a m_j
        elif c.attention == "bahdanau":
            self.attn_key = nn.Linear(H, H, bias=False)  # W_m
            self.attn_query = nn.Linear(H, H, bias=True)  # W_s (+ b)
            self.attn_score = nn.Linear(H, 1, bias=False)  # v
        if c.attention != "none":
            self.attn_combine = nn.Linear(2 * H, H, bias=False)  # W_c [c_t; h_t]
        self.drop = nn.Dropout(c.dropout)
        self.output = nn.Linear(H, c.target_vocab_size)

    # -- encoder ------------------------------------------------------------------------------

    def encode(self, source: Tensor, lengths: Tensor) -> DecoderState:
        """source (B, S) ids padded with 0, lengths (B,) -> the decoder's starting state."""
        if source.dim() != 2:
            raise ShapeError(f"source: expected (B, S) token ids, got shape {tuple(source.shape)}")
        if lengths.shape != (source.shape[0],):
            raise ShapeError(
                f"source_lengths: expected shape ({source.shape[0]},), got {tuple(lengths.shape)}"
            )
        lengths = lengths.to("cpu", torch.long)
        if self.training and self.config.dropout:
            x = self.drop(self.source_embedding(source))  # (B, S, E)
            memory, final = self.encoder(x, lengths=lengths)
        else:  # a lookup input, folded into the engine's input projection when it pays
            memory, final = self.encoder(source, lengths=lengths,
                                         embedding=self.source_embedding.weight)  # fmt: skip
        hidden = self._bridge(final, source.shape[0])
        if self.config.attention == "none":
            return DecoderState(hidden)
        S = memory.shape[1]
        mask = torch.arange(S, device=source.device)[None, :] < lengths.to(source.device)[:, None]
        return DecoderState(hidden, memory, self.attn_key(memory), mask)  # (B,S,H) x2, (B,S)

    def _bridge(self, final: State, B: int) -> State:
        """Encoder final state (L*D, B, He) -> decoder initial state (L, B, H), per layer."""
        c = self.config
        parts = final if isinstance(final, tuple) else (final,)
        if c.bidirectional:  # (L*D, B, He) -> (L, B, 2*He): forward and backward concatenated
            parts = tuple(p.view(c.num_layers, 2, B, -1).permute(0, 2, 1, 3).reshape(
                c.num_layers, B, -1) for p in parts)  # fmt: skip
        h = parts[0]
        if not cell_class(c.decoder_cell).has_cell_state:
            return h
        cell = parts[1] if len(parts) == 2 else torch.zeros_like(h)
        return (h, cell)

    # -- decoder ------------------------------------------------------------------------------

    def _attend(self, query: Tensor, state: DecoderState) -> Tensor:
        """Context vectors (B, T, H) for queries (B, T, H) over the memory, padding masked."""
        assert state.memory is not None and state.keys is not None and state.mask is not None
        if self.config.attention == "luong":
            scores = query @ state.keys.transpose(1, 2)  # (B, T, S)
        else:
            hidden = torch.tanh(self.attn_query(query)[:, :, None] + state.keys[:, None])
            scores = self.attn_score(hidden)[..., 0]  # (B, T, S)
        scores = scores.masked_fill(~state.mask[:, None, :], float("-inf"))
        return scores.softmax(-1) @ state.memory  # (B, T, H)

    def _top(self, hidden: State) -> Tensor:
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return h[-1]  # (B, H)

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.drop(self.target_embedding(tokens))

    def forward(
        self,
        source: Tensor,
        source_lengths: Tensor,
        target_in: Tensor,
        *,
        sampling: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Teacher-forced logits (B, T, V) for ``target_in`` (B, T) = ``<s> y1 .. y{T-1}``.

        ``sampling`` in [0, 1]: each step's input is, per row, the model's own sample from its
        previous output distribution with this probability (scheduled sampling); 0 is plain
        teacher forcing. Padding after a target's end does not change its logits (causal)."""
        if source.dim() != 2:
            raise ShapeError(f"source: expected (B, S) token ids, got shape {tuple(source.shape)}")
        if target_in.dim() != 2 or target_in.shape[0] != source.shape[0]:
            raise ShapeError(
                f"target_in: expected ({source.shape[0]}, T) token ids, got "
                f"{tuple(target_in.shape)}"
            )
        if not 0.0 <= sampling <= 1.0:
            raise ValueError(f"sampling: expected a probability in [0, 1], got {sampling!r}")
        state = self.encode(source, source_lengths)
        if sampling == 0.0 and self.config.attention != "bahdanau":
            if self.training and self.config.dropout:
                out, _ = self.decoder(self._embed(target_in), state.hidden)  # (B, T, H)
            else:
                out, _ = self.decoder(target_in, state.hidden,
                                      embedding=self.target_embedding.weight)  # fmt: skip
            return self.output(self.drop(self._combine(out, state)))  # (B, T, V)
        return self._forward_steps(state, target_in, sampling, generator)

    def _combine(self, out: Tensor, state: DecoderState) -> Tensor:
        """Luong: the attentional state tanh(W_c [c_t; h_t]) (B, T, H); else h_t unchanged."""
        if self.config.attention != "luong":
            return out
        context = self._attend(out, state)
        return torch.tanh(self.attn_combine(torch.cat([context, out], dim=-1)))

    def _forward_steps(
        self,
        state: DecoderState,
        target_in: Tensor,
        sampling: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Step-by-step decoder (Bahdanau attention, scheduled sampling): (B, T, V)."""
        logits = []
        tokens = target_in[:, 0]
        for t in range(target_in.shape[1]):
            if t > 0:
                tokens = target_in[:, t]
                if sampling > 0.0:
                    with torch.no_grad():
                        drawn = torch.multinomial(logits[-1].softmax(-1), 1, generator=generator)
                        use = torch.rand(tokens.shape, generator=generator) < sampling
                    tokens = torch.where(use.to(tokens.device), drawn[:, 0], tokens)
            step_logits, state = self._step_logits(tokens, state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)  # (B, T, V)

    def _step_logits(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        x = self._embed(tokens)  # (B, E)
        if self.config.attention == "bahdanau":
            context = self._attend(self._top(state.hidden)[:, None], state)[:, 0]  # (B, H)
            x = torch.cat([x, context], dim=-1)
        out, hidden = self.decoder.step(x, state.hidden)  # (B, H)
        new = dataclasses.replace(state, hidden=hidden)
        if self.config.attention == "bahdanau":
            context = self._attend(out[:, None], new)[:, 0]
            out = torch.tanh(self.attn_combine(torch.cat([context, out], dim=-1)))
        elif self.config.attention == "luong":
            out = self._combine(out[:, None], new)[:, 0]
        return self.output(self.drop(out)), new  # (B, V)

    # -- the decoding protocol (rnnlab.decoding) -----------------------------------------------

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One decoding step: tokens (B,) -> log-probabilities (B, V) of the next token."""
        logits, state = self._step_logits(tokens, state)
        return logits.float().log_softmax(-1), state

    @staticmethod
    def reorder(state: DecoderState, index: Tensor) -> DecoderState:
        """Gather batch rows (beam search, dropping finished rows)."""
        pick = None if state.memory is None else index.to(state.memory.device)
        return DecoderState(
            reorder_rows(state.hidden, index, dim=1),
            None if state.memory is None else state.memory.index_select(0, pick),
            None if state.keys is None else state.keys.index_select(0, pick),
            None if state.mask is None else state.mask.index_select(0, pick),
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class DecodeConfig:
    """How ``rnnlab seq2seq eval|predict`` decode."""

    method: Literal["greedy", "beam", "sample"] = setting("greedy", "decoding method")
    beam: int = setting(5, "beam width (method beam)", low=1, high=256)
    alpha: float = setting(0.0, "length normalisation ((5+n)/6)^alpha (method beam; 0: none)",
                           low=0.0, high=10.0)  # fmt: skip
    max_length: int = setting(0, "longest output in tokens, end token included (0: 2*S + 10, S "
                              "the source's own length)", low=0, high=100_000)  # fmt: skip
    temperature: float = setting(1.0, "sampling temperature (method sample)", low=0.0, high=1e6)
    top_k: int = setting(0, "keep the k most likely tokens (method sample; 0: all)", low=0,
                         high=2**24)  # fmt: skip
    top_p: float = setting(1.0, "nucleus mass (method sample; 1: all)", low=1e-9, high=1.0)
    seed: int = setting(0, "random seed (method sample; each source draws from its own generator, "
                        "seeded from this and the source's symbols)", low=0,
                        high=2**63 - 1)  # fmt: skip

    def __post_init__(self) -> None:
        validate(self)


@torch.no_grad()
def translate(
    model: Seq2Seq, source: Tensor, source_lengths: Tensor, config: DecodeConfig | None = None
) -> list[Hypothesis]:
    """The best output per source row: source (B, S), lengths (B,) -> B hypotheses (target ids
    without ``<s>`` and ``</s>``). The model is put in eval mode (and restored).

    Each row's result is a function of its own source, never of the batch: the default limit is
    ``2 * length + 10`` with the row's own length (``</s>`` included), and sampling draws row i
    from a generator seeded by ``config.seed`` and the row's unpadded symbols
    (``rnnlab.decoding.source_generators``), so a source decoded alone or in any batch gives the
    same output."""
    config = config or DecodeConfig()
    if source_lengths.shape != (source.shape[0],):
        raise ShapeError(f"source_lengths: expected shape ({source.shape[0]},), "
                         f"got {tuple(source_lengths.shape)}")  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        state = model.encode(source, source_lengths)
        B = source.shape[0]
        lengths = source_lengths.tolist()
        max_length = [config.max_length or 2 * n + 10 for n in lengths]  # per row
        start = torch.full((B,), BOS, dtype=torch.long, device=source.device)
        if config.method == "beam":
            beams = beam_search(model.step, model.reorder, state, start, beam=config.beam,
                                max_length=max_length, eos=EOS, alpha=config.alpha)  # fmt: skip
            return [b[0] for b in beams]
        if config.method == "sample":
            rows = [source[i, :n].long() for i, n in enumerate(lengths)]
            return sample(model.step, model.reorder, state, start, max_length=max_length, eos=EOS,
                          temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                          generator=source_generators(config.seed, rows))  # fmt: skip
        return greedy(model.step, model.reorder, state, start, max_length=max_length, eos=EOS)
    finally:
        model.train(was_training)
