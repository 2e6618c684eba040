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
    streams: int = 1,
) -> Iterator[TraceChunk]:
    """Trace ``model`` over token ids (N,), one chunk at a time, the state carried across chunks.

    Memory is bounded by one chunk: (chunk_len, H) per layer and gate. The gates come from the
    core's ``Recurrent.trace`` (the cell's own step equations, reference backend), so the traced
    states equal ``model(idx)``'s to floating-point rounding.

    ``streams`` > 1 cuts the text into that many contiguous segments read side by side as one
    batch (S times fewer steps; each segment starts from the zero state, so its first characters
    see less context, and its first character has no loss). Chunks then arrive segment by
    segment within each step, each contiguous in the text with its own ``start``::

        ids   [ s0 s0 s0 s0 | s1 s1 s1 s1 | s2 s2 s2 ]     S = 3 segments of ceil(N / S)
        step  [ c0 c0 c1 c1 | c0 c0 c1 c1 | c0 c0 c1 ]     chunk c0 of every segment, then c1
    """
    if chunk_len <= 0:
        raise ValueError(f"chunk_len: expected a positive integer, got {chunk_len}")
    if top_k <= 0:
        raise ValueError(f"top_k: expected a positive integer, got {top_k}")
    if streams <= 0:
        raise ValueError(f"streams: expected a positive integer, got {streams}")
    if streams > 1 and state is not None:
        raise ValueError("state: only a single stream (streams=1) continues a given state")
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
    n = ids_t.numel()
    if n == 0:
        raise ValueError("ids: the text to trace is empty")
    V = model.head.out_features
    if int(ids_t.min()) < 0 or int(ids_t.max()) >= V:
        raise ValueError(f"ids: token ids must lie in [0, {V}), the model's vocabulary")
    seg = -(-n // streams)  # segment length
    S = -(-n // seg)  # segments actually used
    grid = torch.zeros(S * seg, dtype=torch.long)
    grid[:n] = ids_t
    grid = grid.view(S, seg)  # (S, L): padding after the text's end is never reported
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    prev_logp: Tensor | None = None  # (S, V) log-probs predicting each chunk's first character
    k = min(top_k, V)
    try:
        for start in range(0, seg, chunk_len):
            idx = grid[:, start : start + chunk_len].to(device)  # (S, T)
            x = model.embedding(idx)  # (S, T, E)
            out, state, gates = model.rnn.trace(x, state)  # out (S, T, H); gates[k][n] (S, T, H)
            logp = F.log_softmax(model.head(out).float(), dim=-1)  # (S, T, V)
            loss = torch.full(idx.shape, float("nan"))
            if idx.shape[1] > 1:
                loss[:, 1:] = -logp[:, :-1].gather(2, idx[:, 1:, None])[..., 0].cpu()
            if prev_logp is not None:
                loss[:, 0] = -prev_logp.gather(1, idx[:, :1])[:, 0].cpu()
            prev_logp = logp[:, -1]
            top = logp.exp().topk(k, dim=-1)
            top_ids, top_probs = top.indices.cpu().numpy(), top.values.cpu().numpy()
            values = {
                f"L{layer}.{name}": g.float().cpu().numpy()
                for layer, layer_gates in enumerate(gates)
                for name, g in layer_gates.items()
            }
            for b in range(S):
                offset = b * seg + start
                T = min(idx.shape[1], n - offset)
                if T <= 0:
                    continue
                yield TraceChunk(
                    start=offset,
                    ids=idx[b, :T].cpu().numpy(),
                    values={key: v[b, :T] for key, v in values.items()},
                    loss=loss[b, :T].numpy(),
                    top_ids=top_ids[b, :T],
                    top_probs=top_probs[b, :T],
                    next_logp=logp[b, T - 1].cpu().numpy(),
                    state=_select(state, b),
                )
    finally:
        model.train(was_training)


def _select(state: State, b: int) -> State:
    """Stream b's state, (L, 1, H) (a pair for the LSTM): what continues that stream."""
    if isinstance(state, tuple):
        return tuple(t[:, b : b + 1] for t in state)  # type: ignore[return-value]
    return state[:, b : b + 1]


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
