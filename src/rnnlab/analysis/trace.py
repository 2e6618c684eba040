"""Trace: run a char-LM over a text with its state carried and record what every unit does.

Per character t and per layer k we record the hidden state ``h``, the LSTM cell state ``c`` and
every gate of the cell (``Recurrent.trace``: lstm i f g o, gru r z n, mut z r n), the model's
top-k predictions for character t+1 and the loss on character t (Karpathy, Johnson & Fei-Fei 2015,
"Visualizing and Understanding Recurrent Networks", sections 4.1-4.3). The text is one stream
(B = 1) walked in chunks of ``chunk_len`` characters, the state carried from chunk to chunk, so a
long text is streamed in bounded memory by ``iter_trace``; ``trace_text`` gathers the chunks of a
short text (the viewer's) into whole arrays.

Keys name a layer and a quantity: ``"L0.h"``, ``"L1.c"``, ``"L0.f"``. A *unit* is one coordinate
of a layer's ``h`` or ``c``: ``"L0.c.17"``.

    text     T  h  e     c  a  t
    ids      0  1  2  3  4  5  6        input at position t
    loss     -  x  x  x  x  x  x        -log p(ids[t] | ids[<t]), nats (NaN at t = 0)
    top      p  p  p  p  p  p  p        top-k of p(ids[t+1] | ids[<=t])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import State
from rnnlab.models import CharLM

STATE_NAMES = ("h", "c")


@dataclass
class TraceChunk:
    """``chunk_len`` consecutive characters of a trace (the last chunk may be shorter).

    start: offset of the chunk's first character in the text.
    ids: (T,) int64 token ids.
    values: ``"L{k}.{name}"`` -> (T, H) float32, every state and gate of every layer.
    loss: (T,) float32, nats, -log p(ids[t] | ids[<t]); NaN where nothing predicted it.
    top_ids, top_probs: (T, k) the k most likely next characters after reading ids[t].
    next_logp: (V,) log-probabilities of the character after the chunk.
    state: the model's state after the chunk (pass it on to continue the stream).
    """

    start: int
    ids: np.ndarray
    values: dict[str, np.ndarray]
    loss: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray
    next_logp: np.ndarray
    state: State

    def units(self, kinds: Sequence[str] = STATE_NAMES) -> tuple[list[str], np.ndarray]:
        """(unit names, (T, U) matrix) for the layers' states of the given kinds (h and c)."""
        return unit_matrix(self.values, kinds)


@dataclass
class Trace:
    """A whole (short) text's trace: the chunks of ``iter_trace`` concatenated; fields as in
    ``TraceChunk`` with T the text length."""

    ids: np.ndarray
    values: dict[str, np.ndarray]
    loss: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray

    def units(self, kinds: Sequence[str] = STATE_NAMES) -> tuple[list[str], np.ndarray]:
        return unit_matrix(self.values, kinds)


def unit_matrix(
    values: dict[str, np.ndarray], kinds: Sequence[str] = STATE_NAMES
) -> tuple[list[str], np.ndarray]:
    """Stack ``values["L{k}.{kind}"]`` (T, H) for every layer and kind into (T, U), U = sum of H,
    ordered layer by layer, h before c; names are ``"L{k}.{kind}.{j}"``."""
    names: list[str] = []
    blocks: list[np.ndarray] = []
    for key in sorted(values, key=_key_order):
        layer, kind = key.split(".")
        if kind in kinds:
            blocks.append(values[key])
            names.extend(f"{key}.{j}" for j in range(values[key].shape[1]))
    if not blocks:
        raise ValueError(f"kinds: none of {list(kinds)} in the trace ({sorted(values)})")
    return names, np.concatenate(blocks, axis=1)


def _key_order(key: str) -> tuple[int, int, str]:
    layer, kind = key.split(".")
    return int(layer[1:]), STATE_NAMES.index(kind) if kind in STATE_NAMES else 2, kind


def parse_unit(name: str) -> tuple[int, str, int]:
    """``"L1.c.17"`` -> (1, "c", 17); ValueError naming the unit otherwise."""
    parts = name.split(".")
    if len(parts) != 3 or not parts[0].startswith("L") or not parts[0][1:].isdigit():
        raise ValueError(f"unit: expected a name like 'L0.h.5', got {name!r}")
    if not parts[2].isdigit():
        raise ValueError(f"unit: expected a name like 'L0.h.5', got {name!r}")
    return int(parts[0][1:]), parts[1], int(parts[2])


@torch.no_grad()
def iter_trace(
    model: CharLM,
    ids: Sequence[int] | np.ndarray | Tensor,
    chunk_len: int = 512,
    top_k: int = 5,
    state: State | None = None,
) -> Iterator[TraceChunk]:
    """Trace ``model`` over token ids (N,), one chunk at a time, the state carried across chunks.

    Memory is bounded by one chunk: (chunk_len, H) per layer and gate. The gates come from the
    core's ``Recurrent.trace`` (the cell's own step equations, reference backend), so the traced
    states equal ``model(idx)``'s to floating-point rounding.
    """
    if chunk_len <= 0:
        raise ValueError(f"chunk_len: expected a positive integer, got {chunk_len}")
    if top_k <= 0:
        raise ValueError(f"top_k: expected a positive integer, got {top_k}")
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
    if ids_t.numel() == 0:
        raise ValueError("ids: the text to trace is empty")
    V = model.head.out_features
    if int(ids_t.min()) < 0 or int(ids_t.max()) >= V:
        raise ValueError(f"ids: token ids must lie in [0, {V}), the model's vocabulary")
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    prev_logp: Tensor | None = None  # (V,) log-probs predicting the chunk's first character
    k = min(top_k, V)
    try:
        for start in range(0, ids_t.numel(), chunk_len):
            idx = ids_t[start : start + chunk_len].to(device)  # (T,)
            x = model.embedding(idx[None])  # (1, T, E)
            out, state, gates = model.rnn.trace(x, state)  # out (1, T, H); gates[k][n] (1, T, H)
            logp = F.log_softmax(model.head(out[0]).float(), dim=-1)  # (T, V)
            loss = torch.full((idx.numel(),), float("nan"))
            if idx.numel() > 1:
                loss[1:] = -logp[:-1].gather(1, idx[1:, None])[:, 0].cpu()
            if prev_logp is not None:
                loss[0] = -prev_logp[idx[0]].cpu()
            prev_logp = logp[-1]
            top = logp.exp().topk(k, dim=-1)
            values = {
                f"L{layer}.{name}": g[0].float().cpu().numpy()
                for layer, layer_gates in enumerate(gates)
                for name, g in layer_gates.items()
            }
            yield TraceChunk(
                start=start,
                ids=idx.cpu().numpy(),
                values=values,
                loss=loss.numpy(),
                top_ids=top.indices.cpu().numpy(),
                top_probs=top.values.cpu().numpy(),
                next_logp=logp[-1].cpu().numpy(),
                state=state,
            )
    finally:
        model.train(was_training)


def trace_text(
    model: CharLM,
    ids: Sequence[int] | np.ndarray | Tensor,
    chunk_len: int = 512,
    top_k: int = 5,
    max_chars: int = 200_000,
    dtype: np.dtype | type = np.float32,
) -> Trace:
    """The whole trace of a text of at most ``max_chars`` characters, kept in memory as
    ``dtype`` (float16 halves it). For longer texts stream with ``iter_trace``."""
    n = len(ids)
    if n > max_chars:
        raise ValueError(
            f"ids: {n} characters is over max_chars={max_chars}; trace a shorter text or stream "
            "it with iter_trace"
        )
    chunks = list(iter_trace(model, ids, chunk_len, top_k))
    return Trace(
        ids=np.concatenate([c.ids for c in chunks]),
        values={
            key: np.concatenate([c.values[key] for c in chunks]).astype(dtype)
            for key in chunks[0].values
        },
        loss=np.concatenate([c.loss for c in chunks]),
        top_ids=np.concatenate([c.top_ids for c in chunks]),
        top_probs=np.concatenate([c.top_probs for c in chunks]),
    )
