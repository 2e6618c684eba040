"""VQAModel: an image and a question in, a distribution over the answer vocabulary out.

The shape of Antol et al. (2015, "VQA: Visual Question Answering") and the lecture::

    image (B, 3, S, S) --SmallCNN--> v (B, F), grid (B, K, C)      (encoder="cnn", end to end)
       or features (B, F) / (B, K, F)                              (encoder="features")
       or nothing                                                  (encoder="none": "blind")
    question ids (B, T), lengths (B,) --embedding--> Recurrent (any cell, optionally
       bidirectional) --> q (B, D*H): the top layer's last state (both directions concatenated)

    fusion "concat":   u = [q ; v]                                       (B, D*H + F)
    fusion "product":  u = tanh(W_q q) * tanh(W_v v / ||v||)             (B, U)
                       ("deeper LSTM Q + norm I": the image feature l2-normalised, both
                       projected to a common size and multiplied element-wise)
    attention_layers > 0 (stacked attention, Yang et al. 2016, eq. 15-19), per layer k:
                       h_A = tanh(W_I,A g + (W_Q,A u_{k-1} + b_A))          (B, K, A)
                       p   = softmax_i(W_P h_A + b_P)                        (B, K)
                       u_k = sum_i p_i g_i + u_{k-1}                         (B, U)
                       with g = W_g grid (B, K, U) and u_0 = W_q q; u = u_last

    logits = MLP(u): Linear -> tanh -> dropout -> Linear to the N answers    (B, N)

The blind model (encoder "none") is the same network without an image: u = q. Shapes: B batch,
T question length, E embedding, H hidden, D directions, F image feature size, K grid locations,
C annotation size, U fusion size, A attention size, N answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import CellName, ShapeError
from rnnlab.models.vision import SmallCNN
from rnnlab.recurrent import Recurrent
from rnnlab.validation import ConfigError, from_mapping, setting, validate


@dataclass
class VQAConfig:
    """Everything that fixes a VQAModel's parameters (saved as ``config.json``'s ``model``)."""

    vocab_size: int = setting(0, "question words, specials included", low=3, high=2**24)
    num_answers: int = setting(0, "N: answers the model chooses from", low=2, high=2**20)
    cell: CellName = setting("lstm", "question encoder cell")
    embedding_size: int = setting(64, "E: word embedding size", low=1, high=65536)
    hidden_size: int = setting(128, "H: question encoder units per layer and direction", low=1,
                               high=65536)  # fmt: skip
    num_layers: int = setting(1, "question encoder layers", low=1, high=64)
    bidirectional: bool = setting(False, "read the question both ways")
    dropout: float = setting(0.0, "dropout on embeddings, between layers and in the MLP",
                             low=0.0, high=0.9)  # fmt: skip
    encoder: Literal["cnn", "features", "none"] = setting(
        "cnn", "image encoder: a CNN trained end to end, precomputed features, or none (blind)"
    )
    image_size: int = setting(64, "S: images are resized to S x S (cnn encoder)", low=8,
                              high=1024)  # fmt: skip
    cnn_channels: int = setting(16, "channels of the CNN's first stage", low=1, high=1024)
    cnn_blocks: int = setting(3, "CNN stages (each but the last halves the grid)", low=1, high=8)
    feature_size: int = setting(128, "F: image feature size (cnn: output; features: the file's)",
                                low=1, high=1_000_000)  # fmt: skip
    fusion: Literal["concat", "product"] = setting(
        "concat", "how question and image meet: concatenation or element-wise product"
    )
    fusion_size: int = setting(256, "U: common size of the product fusion and attention", low=1,
                               high=65536)  # fmt: skip
    attention_layers: int = setting(0, "stacked attention layers over the grid (0: none)", low=0,
                                    high=8)  # fmt: skip
    attention_size: int = setting(128, "A: attention MLP size", low=1, high=65536)
    mlp_size: int = setting(256, "hidden units of the answer MLP", low=1, high=65536)

    def __post_init__(self) -> None:
        validate(self)
        if self.attention_layers and self.encoder == "none":
            raise ConfigError("attention_layers", "0 for a blind model (no image to attend to)",
                              self.attention_layers)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config.json") -> VQAConfig:
        return from_mapping(cls, data, source)


class VQAModel(nn.Module):
    """``logits = model(images, ids, lengths)``: images as in ``encode_image`` (ignored by a
    blind model; may be None), ids (B, T) padded with 0, lengths (B,) -> logits (B, N)."""

    def __init__(self, config: VQAConfig) -> None:
        super().__init__()
        self.config = c = config
        self.cnn = (
            SmallCNN(c.cnn_channels, c.cnn_blocks, c.feature_size, c.image_size)
            if c.encoder == "cnn"
            else None
        )
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size)
        self.rnn = Recurrent(c.cell, c.embedding_size, c.hidden_size, num_layers=c.num_layers,
                             batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0,
                             bidirectional=c.bidirectional)  # fmt: skip
        self.drop = nn.Dropout(c.dropout)
        Q, U, F_ = self.rnn.output_size, c.fusion_size, c.feature_size
        C = self.cnn.grid_size if self.cnn is not None else F_  # annotation size
        if c.encoder == "none":
            fused = Q
        elif c.attention_layers:
            self.question_proj = nn.Linear(Q, U)  # u_0 = W_q q
            self.grid_proj = nn.Linear(C, U)  # g = W_g grid
            self.att_image = nn.ModuleList(nn.Linear(U, c.attention_size, bias=False)
                                           for _ in range(c.attention_layers))  # fmt: skip
            self.att_query = nn.ModuleList(nn.Linear(U, c.attention_size)
                                           for _ in range(c.attention_layers))  # fmt: skip
            self.att_score = nn.ModuleList(nn.Linear(c.attention_size, 1)
                                           for _ in range(c.attention_layers))  # fmt: skip
            fused = U
        elif c.fusion == "product":
            self.question_proj = nn.Linear(Q, U)
            self.image_proj = nn.Linear(F_, U)
            fused = U
        else:
            fused = Q + F_
        self.mlp = nn.Sequential(nn.Linear(fused, c.mlp_size), nn.Tanh(), nn.Dropout(c.dropout),
                                 nn.Linear(c.mlp_size, c.num_answers))  # fmt: skip

    # -- encoders ------------------------------------------------------------------------------

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images (B, 3, S, S) uint8, or features (B, F) / (B, K, F) -> v (B, F), grid or None
        (a features grid's v is its mean over locations)."""
        if self.cnn is not None:
            return self.cnn(images)
        F_ = self.config.feature_size
        if images.dim() == 2 and images.shape[1] == F_:
            if self.config.attention_layers:
                raise ShapeError("features: attention needs a grid (B, K, F), got vectors (B, F)")
            return images.float(), None
        if images.dim() == 3 and images.shape[2] == F_:
            grid = images.float()
            return grid.mean(dim=1), grid
        raise ShapeError(f"features: expected (B, {F_}) or (B, K, {F_}), got "
                         f"{tuple(images.shape)}")  # fmt: skip

    def encode_question(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """ids (B, T), lengths (B,) -> q (B, D*H), the top layer's last state per direction."""
        if ids.dim() != 2:
            raise ShapeError(f"ids: expected (B, T) word ids, got shape {tuple(ids.shape)}")
        if lengths.shape != (ids.shape[0],):
            raise ShapeError(f"lengths: expected shape ({ids.shape[0]},), got "
                             f"{tuple(lengths.shape)}")  # fmt: skip
        lengths = lengths.to("cpu", torch.long)
        if self.training and self.config.dropout:
            _, h_n = self.rnn(self.drop(self.embedding(ids)), lengths=lengths)
        else:
            _, h_n = self.rnn(ids, lengths=lengths, embedding=self.embedding.weight)
        h = h_n[0] if isinstance(h_n, tuple) else h_n  # (L*D, B, H)
        D = self.rnn.num_directions
        return torch.cat(list(h[-D:]), dim=-1)  # (B, D*H)

    # -- fusion and answer --------------------------------------------------------------------

    def forward(self, images: Tensor | None, ids: Tensor, lengths: Tensor,
                image_rows: Tensor | None = None) -> Tensor:  # fmt: skip
        logits, _ = self.answer(images, ids, lengths, image_rows)
        return logits

    def answer(self, images: Tensor | None, ids: Tensor, lengths: Tensor,
               image_rows: Tensor | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(logits (B, N), the last attention layer's weights (B, K) or None).

        ``image_rows`` (B,) maps each question to its image, so ``images`` may hold M <= B
        images, each encoded once however many questions it has (neuraltalk2's
        ``seq_per_img``); without it, image i belongs to question i."""
        c = self.config
        q = self.encode_question(ids, lengths)  # (B, Q)
        if c.encoder == "none":
            return self.mlp(self.drop(q)), None
        if images is None:
            raise ShapeError("images: this model reads an image (only a blind model takes None)")
        if image_rows is None and images.shape[0] != ids.shape[0]:
            raise ShapeError(f"images: expected {ids.shape[0]} (one per question) without "
                             f"image_rows, got {images.shape[0]}")  # fmt: skip
        v, grid = self.encode_image(images)  # (M, F), (M, K, C)
        if image_rows is not None:
            if image_rows.shape != (ids.shape[0],):
                raise ShapeError(f"image_rows: expected shape ({ids.shape[0]},), got "
                                 f"{tuple(image_rows.shape)}")  # fmt: skip
            v = v[image_rows]  # (B, F)
            grid = None if grid is None else grid[image_rows]  # (B, K, C)
        weights = None
        if c.attention_layers:
            if grid is None:
                raise ShapeError("features: attention needs a grid (B, K, F)")
            g = self.grid_proj(grid)  # (B, K, U)
            u = self.question_proj(q)  # (B, U)
            for W_i, W_q, W_p in zip(self.att_image, self.att_query, self.att_score, strict=True):
                h_a = torch.tanh(W_i(g) + W_q(u)[:, None, :])  # (B, K, A)
                weights = torch.softmax(W_p(self.drop(h_a)).squeeze(-1), dim=-1)  # (B, K)
                u = torch.bmm(weights[:, None, :], g).squeeze(1) + u  # (B, U)
        elif c.fusion == "product":
            u = torch.tanh(self.question_proj(q)) * torch.tanh(
                self.image_proj(F.normalize(v, dim=-1))
            )  # (B, U)
        else:
            u = torch.cat([q, v], dim=-1)  # (B, Q + F)
        return self.mlp(self.drop(u)), weights

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
