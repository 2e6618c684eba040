"""Captioner: a one-to-many recurrent decoder conditioned on an image (the lecture's captioning).

Image encoder: ``SmallCNN`` (``rnnlab.models.vision``) trained end to end, or precomputed features
from any CNN (``encoder="features"``: rows of (F,) vectors or (K, F) grids). The encoder gives a
feature v (B, F) and, for attention, annotation vectors a_1..a_K (B, K, C).

Decoder: ``Recurrent`` over any of the six cells, words in through an embedding, conditioned on v
in one of two ways (``conditioning``):

* ``step``: the lecture's ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + W_ih v)``: v enters every step's
  pre-activation (the core's ``condition=``, parameter ``weight_ch_l0``), h_0 = 0 (the form of
  Karpathy & Fei-Fei 2015 with v at every step, as the lecture draws it);
* ``init``: image as initial state (Show and Tell, Vinyals et al. 2015, who feed v as the input
  before ``<start>``, which amounts to setting the state): h_0 = tanh(W_h v) for every layer
  (and c_0 = W_c v for the LSTM; Xu et al. 2015 initialise theirs from the image the same way);
  steps see only words.

``attention=True`` adds soft attention over the grid (Show, Attend and Tell, Xu et al. 2015,
"deterministic soft attention"): at step t, with h the top layer's previous hidden state,

    e_ti = w^T tanh(W_a a_i + W_ha h + b)     alpha_t = softmax_i(e_ti)     z_t = sum_i alpha_ti a_i
    x_t = [E y_{t-1}; z_t]                    logits = L_o(E y_{t-1} + L_h h_t + L_z z_t)

(the deep output layer of their eq. 7). Without attention, logits = W_hy h_t (dropout first).

Training is teacher forcing: the input at step t is the reference word t-1. Without attention a
whole caption is one ``Recurrent.forward`` call (the engine folds the embedding into layer 0's
input projection); attention needs z_t, hence a ``Recurrent.step`` loop (differentiable).
Decoding uses the step protocol of ``rnnlab.decoding``: ``start`` encodes images into a
:class:`CaptionState`, ``step(tokens (B,), state) -> (log-probabilities (B, V), state)``, and
``reorder(state, index)`` gathers rows for beam search.

Shapes: B batch, T caption length (with ``<start>``), V vocabulary, E embedding, H hidden,
L layers, F feature size, K grid locations, C annotation size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import CellName, cell_class
from rnnlab.models.vision import SmallCNN
from rnnlab.recurrent import Recurrent
from rnnlab.validation import from_mapping, setting, validate


@dataclass
class CaptionerConfig:
    """Everything that fixes a Captioner's parameters (saved as ``config.json``'s ``model``)."""

    vocab_size: int = setting(0, "V: words in the vocabulary, specials included", low=5,
                              high=1_000_000)  # fmt: skip
    cell: CellName = setting("lstm", "recurrent cell of the decoder")
    embedding_size: int = setting(64, "E: word embedding size", low=1, high=65536)
    hidden_size: int = setting(256, "H: hidden units per layer", low=1, high=65536)
    num_layers: int = setting(1, "L: recurrent layers", low=1, high=64)
    dropout: float = setting(0.0, "dropout on embeddings and outputs (and between layers)",
                             low=0.0, high=0.95)  # fmt: skip
    conditioning: Literal["step", "init"] = setting(
        "step", "how v enters: every step's pre-activation (W_ih v), or the initial state"
    )
    attention: bool = setting(False, "soft attention over the image grid (Xu et al. 2015)")
    encoder: Literal["cnn", "features"] = setting(
        "cnn", "a small CNN trained end to end, or precomputed feature files"
    )
    image_size: int = setting(32, "S: images are resized to S x S (cnn encoder)", low=8,
                              high=1024)  # fmt: skip
    cnn_channels: int = setting(32, "channels of the CNN's first stage", low=1, high=1024)
    cnn_blocks: int = setting(3, "CNN stages (each but the last halves the grid)", low=1,
                              high=8)  # fmt: skip
    feature_size: int = setting(128, "F: image feature size (cnn: output; features: the file's)",
                                low=1, high=1_000_000)  # fmt: skip
    attention_size: int = setting(0, "attention MLP size (0: hidden size)", low=0, high=65536)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config.json") -> CaptionerConfig:
        return from_mapping(cls, data, source)


@dataclass
class CaptionState:
    """The decoder's state between steps: the recurrent state (L, B, H) (or (h, c) for the
    LSTM), the image feature v (B, F) and, with attention, the grid (B, K, C) and its projection
    W_a a (B, K, A), computed once per image."""

    rnn: Tensor | tuple[Tensor, Tensor] | None
    v: Tensor
    grid: Tensor | None = None
    keys: Tensor | None = None


class Captioner(nn.Module):
    """Image -> caption. ``forward(images, tokens)`` gives teacher-forced logits (B, T, V)."""

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = (
            SmallCNN(c.cnn_channels, c.cnn_blocks, c.feature_size, c.image_size)
            if c.encoder == "cnn"
            else None
        )
        F_, H, E = c.feature_size, c.hidden_size, c.embedding_size
        C = self.encoder.grid_size if self.encoder is not None else F_  # annotation size
        self.embedding = nn.Embedding(c.vocab_size, E)
        self.rnn = Recurrent(
            c.cell,
            E + (C if c.attention else 0),
            H,
            num_layers=c.num_layers,
            batch_first=True,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            condition_size=F_ if c.conditioning == "step" else 0,
        )
        if c.conditioning == "init":  # Show and Tell: v -> the initial state of every layer
            parts = 2 if cell_class(c.cell).has_cell_state else 1
            self.init_state = nn.Linear(F_, parts * c.num_layers * H)
        self.drop = nn.Dropout(c.dropout)
        if c.attention:
            A = c.attention_size or H
            self.att_keys = nn.Linear(C, A)  # W_a
            self.att_query = nn.Linear(H, A, bias=False)  # W_ha
            self.att_score = nn.Linear(A, 1, bias=False)  # w
            self.out_h = nn.Linear(H, E)  # L_h
            self.out_z = nn.Linear(C, E, bias=False)  # L_z
            self.output = nn.Linear(E, c.vocab_size)  # L_o
        else:
            self.output = nn.Linear(H, c.vocab_size)  # W_hy

    # -- encoder and initial state ---------------------------------------------------------------

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images (B, 3, S, S) uint8, or features (B, F) / (B, K, F) -> v (B, F), grid or None."""
        if self.encoder is not None:
            v, grid = self.encoder(images)
            return v, grid
        if images.dim() == 2 and images.shape[1] == self.config.feature_size:
            if self.config.attention:
                raise ValueError("features: attention needs a grid (B, K, F), got vectors (B, F)")
            return images.float(), None
        if images.dim() == 3 and images.shape[2] == self.config.feature_size:
            grid = images.float()
            return grid.mean(dim=1), grid
        raise ValueError(
            f"features: expected (B, {self.config.feature_size}) or (B, K, "
            f"{self.config.feature_size}), got {tuple(images.shape)}"
        )

    def start(self, images: Tensor) -> CaptionState:
        """Encode a batch of images and build the decoder's state before ``<start>``."""
        v, grid = self.encode(images)
        c = self.config
        rnn = None
        if c.conditioning == "init":
            L, H, B = c.num_layers, c.hidden_size, v.shape[0]
            init = self.init_state(v).view(B, -1, L, H).permute(1, 2, 0, 3)  # (1|2, L, B, H)
            h0 = torch.tanh(init[0]).contiguous()
            # c_0 is linear: the cell state is unbounded by design, and a tanh-squashed c_0
            # measured worse on the shapes set (val BLEU-4 0.50 vs 0.68 after 800 steps).
            rnn = (h0, init[1].contiguous()) if len(init) == 2 else h0
        keys = self.att_keys(grid) if c.attention else None
        return CaptionState(rnn, v, grid if c.attention else None, keys)

    # -- teacher forcing --------------------------------------------------------------------------

    def forward(self, images: Tensor, tokens: Tensor, image_rows: Tensor | None = None) -> Tensor:
        """Teacher-forced logits: images as in ``encode``, tokens (B, T) starting with
        ``<start>`` -> logits (B, T, V) for the next word at each position.

        ``image_rows`` (B,) maps each caption to its image (then ``images`` holds N <= B images):
        an image with five captions is encoded once, not five times (neuraltalk2's
        ``seq_per_img``)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens: expected (B, T), got {tuple(tokens.shape)}")
        state = self.start(images)
        if image_rows is not None:
            state = self.reorder(state, image_rows)
        elif state.v.shape[0] != tokens.shape[0]:
            raise ValueError(f"tokens: expected {state.v.shape[0]} captions (one per image) "
                             f"without image_rows, got {tokens.shape[0]}")  # fmt: skip
        condition = state.v if self.config.conditioning == "step" else None
        if not self.config.attention:
            out, _ = self.rnn(
                tokens, state.rnn, condition=condition, embedding=self.embedding.weight
            )  # (B, T, H), fmt: skip
            return self.output(self.drop(out))  # (B, T, V)
        logits = []
        for t in range(tokens.shape[1]):
            step_logits, state = self._attend_step(tokens[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)  # (B, T, V)

    # -- one step (decoding and attention) ---------------------------------------------------------

    def _attend_step(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState]:
        c = self.config
        condition = state.v if c.conditioning == "step" else None
        if not c.attention:
            out, rnn = self.rnn.step(
                tokens, state.rnn, condition=condition, embedding=self.embedding.weight
            )  # (B, H), fmt: skip
            return self.output(self.drop(out)), CaptionState(rnn, state.v)
        assert state.grid is not None and state.keys is not None
        emb = self.drop(self.embedding(tokens))  # (B, E)
        alpha = self.attention_weights(state)  # (B, K)
        z = torch.bmm(alpha.unsqueeze(1), state.grid).squeeze(1)  # (B, C)
        out, rnn = self.rnn.step(torch.cat([emb, z], dim=1), state.rnn, condition=condition)
        deep = emb + self.out_h(self.drop(out)) + self.out_z(z)  # (B, E)
        return self.output(self.drop(deep)), CaptionState(rnn, state.v, state.grid, state.keys)

    def attention_weights(self, state: CaptionState) -> Tensor:
        """alpha (B, K): where the next word looks, from the top layer's last hidden state."""
        assert state.keys is not None
        B = state.keys.shape[0]
        if state.rnn is None:
            h = state.keys.new_zeros(B, self.config.hidden_size)
        else:
            h = (state.rnn[0] if isinstance(state.rnn, tuple) else state.rnn)[-1]  # (B, H)
        scores = self.att_score(torch.tanh(state.keys + self.att_query(h)[:, None]))  # (B, K, 1)
        return scores.squeeze(2).softmax(dim=1)

    def step(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState]:
        """The decoding step protocol: tokens (B,) -> log-probabilities (B, V), next state."""
        logits, state = self._attend_step(tokens, state)
        return logits.float().log_softmax(dim=-1), state

    @staticmethod
    def reorder(state: CaptionState, index: Tensor) -> CaptionState:
        """Rows ``index`` (B',) of a state: the recurrent state has its batch on dim 1, the
        image tensors on dim 0."""

        def rows(t: Tensor | None, dim: int) -> Tensor | None:
            return None if t is None else t.index_select(dim, index.to(t.device))

        rnn = state.rnn
        if isinstance(rnn, tuple):
            rnn = (rows(rnn[0], 1), rows(rnn[1], 1))
        else:
            rnn = rows(rnn, 1)
        return CaptionState(rnn, rows(state.v, 0), rows(state.grid, 0), rows(state.keys, 0))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def caption_loss(logits: Tensor, targets: Tensor, pad: int = 0) -> Tensor:
    """Mean cross-entropy, nats per word, over non-pad targets: logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)


@torch.no_grad()
def generate_captions(
    model: Captioner,
    images: Tensor,
    *,
    max_length: int = 16,
    beam: int = 1,
    temperature: float = 0.0,
    alpha: float = 0.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    start: int = 1,
    end: int = 2,
) -> list[list[int]]:
    """Word ids of one caption per image (``<start>``/``<end>`` excluded), in eval mode: at most
    ``max_length`` decoding steps, the end token's included.

    ``beam`` > 1: beam search (``alpha``: length normalisation); else ``temperature`` 0 is greedy
    and > 0 samples. All three are ``rnnlab.decoding``'s, over :meth:`Captioner.step` and
    :meth:`Captioner.reorder`. Every caption is a function of its own image: sampling draws
    image i from a generator seeded by ``seed`` and the image's bytes
    (``rnnlab.decoding.source_generators``), the same alone or in any batch. A ``generator``
    given instead stands for its seed (``initial_seed()``; it is not advanced); with neither,
    the global RNG draws (not reproducible)."""
    from rnnlab import decoding

    if seed is None and generator is not None:
        seed = generator.initial_seed()
    was_training = model.training
    model.eval()
    try:
        state = model.start(images)
        ids = torch.full((images.shape[0],), start, dtype=torch.long, device=images.device)
        common = {"max_length": max_length, "eos": end}
        if beam > 1:
            found = decoding.beam_search(model.step, model.reorder, state, ids, beam=beam,
                                         alpha=alpha, **common)  # fmt: skip
            return [hyps[0].tokens for hyps in found]
        if temperature > 0:
            rows = None if seed is None else decoding.source_generators(seed, list(images))
            hyps = decoding.sample(model.step, model.reorder, state, ids, temperature=temperature,
                                   generator=rows, **common)  # fmt: skip
        else:
            hyps = decoding.greedy(model.step, model.reorder, state, ids, **common)
        return [h.tokens for h in hyps]
    finally:
        model.train(was_training)


@torch.no_grad()
def attention_maps(model: Captioner, images: Tensor, captions: list[list[int]]) -> list[Tensor]:
    """Where an attention decoder looked for each word of given captions (Xu et al. 2015, fig. 3):
    per image, alpha (n, K) for its n words plus ``<end>``; row t is the attention that produced
    word t (computed from the state before it)."""
    if not model.config.attention:
        raise ValueError("attention_maps: the model has no attention (--attention)")
    was_training = model.training
    model.eval()
    try:
        maps = []
        for i, caption in enumerate(captions):
            state = model.start(images[i : i + 1])
            rows = []
            for token in [1, *caption]:  # <start>, then each word: one alpha per output
                rows.append(model.attention_weights(state)[0])
                _, state = model.step(torch.tensor([token], device=images.device), state)
            maps.append(torch.stack(rows))  # (n + 1, K)
        return maps
    finally:
        model.train(was_training)
