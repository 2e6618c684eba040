"""Visual dialog models (Das et al. 2017, "Visual Dialog", CVPR): an encoder turns the image, the
question of round t and the dialog history into an encoding e_t; a decoder ranks the round's
candidate answers with it.

Inputs of a batch of B dialogs with R rounds (``rnnlab.data.visdial.EncodedDialogs``)::

    images (B, 3, S, S)      -> SmallCNN (captioning's encoder) -> v (B, F)
    questions (B, R, Tq)     -> question LSTM, last state        -> q_t (B, R, H)
    facts (B, R, Tf)         fact 0 = the caption, fact t + 1 = the words of q_t a_t

Rounds count from 0; the history of round t is facts 0..t (the caption and rounds 0..t-1),
never its own answer or a later round. Encoders (``encoder``):

* ``late_fusion`` (LF): the history is read as one long sequence by a history LSTM (Das et al.
  concatenate it into one string): the LSTM runs over fact 0, then fact 1 from the state fact 0
  left, ... so its state after fact t *is* the encoding of the concatenation of facts 0..t, for
  all R rounds in R calls. e_t = tanh(W [v; q_t; h_t]).
* ``hierarchical`` (HRE): a fact LSTM encodes each fact alone (f_0..f_{R-1}); a dialog-level LSTM
  runs over the rounds with input [q_t; f_t] and the image as its condition (W_ch v at every
  step), and e_t = tanh(W d_t) from its output d_t.

Ablations: ``history=False`` leaves the history out (e_t = tanh(W [v; q_t]); both encoders are
then this one model), ``image=False`` too leaves the image out (with ``history=False``: the
question-only model).

Decoders (``decoder``):

* ``discriminative``: an answer LSTM encodes each candidate (last state a_n, (N, H)) and the score
  is the dot product e_t . a_n; trained with cross entropy over the N options (VisDial's
  discriminative decoder).
* ``generative``: an answer LSTM language model conditioned on e_t at every step (W_ch e_t, as the
  captioner's ``step`` conditioning), trained by teacher forcing on the ground-truth answer;
  candidates are ranked by their log-likelihood (sum of token log-probabilities, ``<end>``
  included), and answers are generated through ``rnnlab.decoding`` (``start``/``step``/
  ``reorder``).

Shapes: B dialogs, R rounds, N options, A answers, T tokens, E embedding, H hidden, F image
feature, V vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnlab.cells import CELL_HELP, CellName
from rnnlab.models.vision import SmallCNN
from rnnlab.recurrent import Recurrent
from rnnlab.validation import from_mapping, setting, validate

PAD = 0
SCORE_ELEMENTS = 1 << 25  # generative ranking: logits held at once (128 MiB of float32)


@dataclass
class DialogConfig:
    """Everything that fixes a DialogModel's parameters (``config.json``'s ``model``)."""

    vocab_size: int = setting(0, "V: words, specials included", low=5, high=1_000_000)
    encoder: Literal["late_fusion", "hierarchical"] = setting(
        "late_fusion", "history encoder: late fusion (LF) or hierarchical recurrent (HRE)"
    )
    decoder: Literal["discriminative", "generative"] = setting(
        "discriminative", "score candidates by dot product, or by an answer LM's log-likelihood"
    )
    history: bool = setting(True, "use the dialog history (False: the no-history ablation)")
    image: bool = setting(True, "use the image (False with history False: question only)")
    cell: CellName = setting("lstm", CELL_HELP)
    embedding_size: int = setting(64, "E: word embedding size", low=1, high=65536)
    hidden_size: int = setting(128, "H: hidden units of each recurrent network", low=1, high=65536)
    dropout: float = setting(0.0, "dropout on the fused encoding", low=0.0, high=0.95)
    image_size: int = setting(32, "S: images are resized to S x S", low=8, high=1024)
    cnn_channels: int = setting(16, "channels of the CNN's first stage", low=1, high=1024)
    cnn_blocks: int = setting(3, "CNN stages", low=1, high=8)
    feature_size: int = setting(128, "F: image feature size", low=1, high=1_000_000)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "config.json") -> DialogConfig:
        return from_mapping(cls, data, source)


@dataclass
class DialogInputs:
    """One batch of dialogs as tensors (see the module docstring for shapes)."""

    images: Tensor  # (B, 3, S, S) uint8
    questions: Tensor  # (B, R, Tq)
    question_lengths: Tensor  # (B, R) on CPU
    facts: Tensor  # (B, R, Tf)
    fact_lengths: Tensor  # (B, R) on CPU


def _last(
    rnn: Recurrent, emb: nn.Embedding, ids: Tensor, lengths: Tensor, state: Any = None
) -> tuple[Tensor, Any]:
    """The top layer's state after each padded sequence's last token: ids (M, T) -> (M, H)."""
    _, h = rnn(ids, state, lengths=lengths.cpu(), embedding=emb.weight)
    top = (h[0] if isinstance(h, tuple) else h)[-1]  # (M, H)
    return top, h


class DialogModel(nn.Module):
    """Encoder (LF or HRE, with ablations) + discriminative or generative decoder."""

    def __init__(self, config: DialogConfig) -> None:
        super().__init__()
        self.config = c = config
        E, H, F_ = c.embedding_size, c.hidden_size, c.feature_size
        self.embedding = nn.Embedding(c.vocab_size, E, padding_idx=PAD)
        self.cnn = SmallCNN(c.cnn_channels, c.cnn_blocks, F_, c.image_size) if c.image else None
        self.question_rnn = Recurrent(c.cell, E, H, batch_first=True)
        fused = H + (F_ if c.image else 0)
        if c.history and c.encoder == "late_fusion":
            self.history_rnn = Recurrent(c.cell, E, H, batch_first=True)
            fused += H
        elif c.history:  # hierarchical
            self.fact_rnn = Recurrent(c.cell, E, H, batch_first=True)
            self.dialog_rnn = Recurrent(
                c.cell, 2 * H, H, batch_first=True, condition_size=F_ if c.image else 0
            )
            fused = H
        self.fuse = nn.Linear(fused, H)
        self.drop = nn.Dropout(c.dropout)
        cond = H if c.decoder == "generative" else 0
        self.answer_rnn = Recurrent(c.cell, E, H, batch_first=True, condition_size=cond)
        if c.decoder == "generative":
            self.output = nn.Linear(H, c.vocab_size)

    # -- encoder ----------------------------------------------------------------------------------

    def encode(self, x: DialogInputs) -> Tensor:
        """e (B, R, H): the encoding of every round, from its question, the image and the
        history before it."""
        c = self.config
        B, R, Tq = x.questions.shape
        q, _ = _last(
            self.question_rnn,
            self.embedding,
            x.questions.reshape(B * R, Tq),
            x.question_lengths.reshape(-1),
        )
        q = q.view(B, R, -1)  # (B, R, H)
        v = self.cnn(x.images)[0] if self.cnn is not None else None  # (B, F)
        if c.history and c.encoder == "hierarchical":
            Tf = x.facts.shape[2]
            f, _ = _last(
                self.fact_rnn,
                self.embedding,
                x.facts.reshape(B * R, Tf),
                x.fact_lengths.reshape(-1),
            )
            rounds = torch.cat([q, f.view(B, R, -1)], dim=2)  # (B, R, 2H): q_t with fact t
            d, _ = self.dialog_rnn(rounds, condition=v)  # (B, R, H)
            return torch.tanh(self.fuse(self.drop(d)))
        parts = [q] + ([v[:, None].expand(B, R, -1)] if v is not None else [])
        if c.history:  # late fusion: the history LSTM reads facts 0..t as one sequence
            state, hist = None, []
            for t in range(R):
                h, state = _last(
                    self.history_rnn, self.embedding, x.facts[:, t], x.fact_lengths[:, t], state
                )
                hist.append(h)  # the history of round t: facts 0..t
            parts.append(torch.stack(hist, dim=1))  # (B, R, H)
        return torch.tanh(self.fuse(self.drop(torch.cat(parts, dim=2))))  # (B, R, H)

    # -- decoders ---------------------------------------------------------------------------------

    def encode_answers(self, answers: Tensor) -> Tensor:
        """Discriminative: answer rows (A, T) as <start> words <end> <pad>.. -> a (A, H)."""
        words = answers[:, 1:]  # without <start>; <end> kept as the last real token
        lengths = (words != PAD).sum(dim=1).clamp(min=1)
        a, _ = _last(self.answer_rnn, self.embedding, words, lengths)
        return a

    def option_scores(self, e: Tensor, options: Tensor, answers: Tensor) -> Tensor:
        """Scores (B, R, N) of options (B, R, N) (rows of ``answers`` (A, T)) for encodings
        e (B, R, H): dot products (discriminative) or log-likelihoods (generative). Each
        distinct answer of the batch is encoded once (discriminative)."""
        if self.config.decoder == "discriminative":
            used, inverse = torch.unique(options, return_inverse=True)
            a = self.encode_answers(answers[used])  # (A', H)
            return torch.einsum("brh,brnh->brn", e, a[inverse])
        B, R, N = options.shape
        flat, cond = options.reshape(-1), e[:, :, None].expand(B, R, N, -1).reshape(B * R * N, -1)
        chunk = max(1, SCORE_ELEMENTS // (answers.shape[1] * self.config.vocab_size))
        return torch.cat(
            [
                self.answer_logprob(cond[i : i + chunk], answers[flat[i : i + chunk]])
                for i in range(0, len(flat), chunk)
            ]
        ).view(B, R, N)

    def answer_logits(self, e: Tensor, answers: Tensor) -> Tensor:
        """Generative, teacher forcing: e (M, H), answers (M, T) -> logits (M, T - 1, V) of
        each next token."""
        out, _ = self.answer_rnn(answers[:, :-1], condition=e, embedding=self.embedding.weight)
        return self.output(out)

    def answer_logprob(self, e: Tensor, answers: Tensor) -> Tensor:
        """Generative: log p(answer | e) (M,): the sum over its words and ``<end>``."""
        logp = self.answer_logits(e, answers).float().log_softmax(dim=-1)
        target = answers[:, 1:]
        picked = logp.gather(2, target[:, :, None]).squeeze(2)  # (M, T - 1)
        return (picked * (target != PAD)).sum(dim=1)

    def forward(
        self, x: DialogInputs, options: Tensor, gt_index: Tensor, answers: Tensor
    ) -> tuple[Tensor, int]:
        """The training loss of a batch, summed, and its count (see :meth:`loss`)."""
        return self.loss(self.encode(x), options, gt_index, answers)

    def loss(
        self, e: Tensor, options: Tensor, gt_index: Tensor, answers: Tensor
    ) -> tuple[Tensor, int]:
        """Training loss summed, and what it is summed over: cross entropy over the options per
        round (discriminative; B*R rounds) or the ground truth's cross entropy per word, ``<end>``
        included (generative; its word count)."""
        if self.config.decoder == "discriminative":
            scores = self.option_scores(e, options, answers)  # (B, R, N)
            loss = F.cross_entropy(scores.flatten(0, 1), gt_index.flatten(), reduction="sum")
            return loss, int(gt_index.numel())
        truth = answers[options.gather(2, gt_index[:, :, None]).flatten()]  # (B*R, T)
        logits = self.answer_logits(e.flatten(0, 1), truth)
        target = truth[:, 1:]
        loss = F.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=PAD, reduction="sum"
        )
        return loss, int((target != PAD).sum())

    # -- generation: the step protocol of rnnlab.decoding --------------------------------------

    def start(self, e: Tensor) -> tuple[Any, Tensor]:
        """The decoder's state before ``<start>`` for encodings e (M, H)."""
        if self.config.decoder != "generative":
            raise ValueError("decoder: only a generative model generates answers")
        return None, e

    def step(self, tokens: Tensor, state: tuple[Any, Tensor]) -> tuple[Tensor, tuple[Any, Tensor]]:
        """tokens (M,) -> log-probabilities (M, V) of the next token, next state."""
        rnn, e = state
        out, rnn = self.answer_rnn.step(tokens, rnn, condition=e, embedding=self.embedding.weight)
        return self.output(out).float().log_softmax(dim=-1), (rnn, e)

    @staticmethod
    def reorder(state: tuple[Any, Tensor], index: Tensor) -> tuple[Any, Tensor]:
        from rnnlab.decoding import reorder_rows

        rnn, e = state
        return (None if rnn is None else reorder_rows(rnn, index, dim=1)), e.index_select(0, index)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
