"""Gradient flow through time: how far back a loss still reaches.

The lecture's vanishing/exploding-gradient slides (Bengio, Simard & Frasconi 1994; Pascanu,
Mikolov & Bengio 2013): backpropagating from the loss at step T to the hidden state at step t
multiplies T - t Jacobians dh_{s+1}/dh_s; for the vanilla RNN each is diag(tanh') W_hh, so the
gradient shrinks (largest singular value of W_hh below 1) or grows (above 1) geometrically, while
the LSTM's additive cell path c_{s+1} = f * c_s + ... scales it by the forget gate only.

- ``hidden_gradient_norms``: ||dL_T/dh_t|| for t = 0..T-1, per layer, on a CharLM or a bare
  ``Recurrent`` (fresh or trained), by autograd through the model's own forward, one step a call
  so every h_t is a tensor of the graph.
- ``one_unit_gradients``: the lecture's one-unit demonstration, h_t = tanh(w h_{t-1}) from
  h_0 = 0, where tanh' = 1 along the path and dh_T/dh_t = w^(T-t) exactly.
- ``largest_singular_values``: sigma_max of each layer's W_hh (and of each gate block).
- ``clip_events``: the training steps whose pre-clip gradient norm exceeded the clip threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import SCAN_CELLS
from rnnlab.models import CharLM
from rnnlab.recurrent import Recurrent


@dataclass
class GradientFlow:
    """norms: (T, L) mean over the batch of ||dL_T/dh_t|| for layer k, row t = 0..T-1 (the last
    row is the step the loss reads). ``decay(d)`` is the top layer's norm d steps back over the
    norm at the last step."""

    cell: str
    norms: np.ndarray

    def decay(self, distance: int) -> float:
        T = self.norms.shape[0]
        if not 0 <= distance < T:
            raise ValueError(f"distance: expected 0..{T - 1}, got {distance}")
        top = self.norms[:, -1]
        return float(top[T - 1 - distance] / top[T - 1])

    def by_distance(self) -> np.ndarray:
        """(T, L) norms indexed by T-1-t: row d is d steps before the loss."""
        return self.norms[::-1].copy()


def _recurrent(model: CharLM | Recurrent) -> Recurrent:
    return model.rnn if isinstance(model, CharLM) else model


def hidden_gradient_norms(
    model: CharLM | Recurrent,
    steps: int = 100,
    batch: int = 8,
    ids: Tensor | None = None,
    seed: int = 0,
) -> GradientFlow:
    """||dL_T/dh_t|| for the loss L_T at the last of ``steps`` steps, per layer, batch-averaged.

    CharLM: the input is ``ids`` (B, T) or uniformly random characters, and L_T is the cross-
    entropy of the prediction at step T for a random next character. Recurrent: the input is
    standard normal (B, T, I) and L_T = <u, h_T> for a random unit vector u. Dropout is off.
    """
    if steps < 2 or batch < 1:
        raise ValueError(f"steps/batch: expected steps >= 2 and batch >= 1, got {steps}, {batch}")
    rnn = _recurrent(model)
    g = torch.Generator().manual_seed(seed)
    device = next(rnn.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, CharLM):
            V = model.head.out_features
            if ids is None:
                ids = torch.randint(0, V, (batch, steps + 1), generator=g)
            ids = ids.to(device)
            x = model.embedding(ids[:, :steps])  # (B, T, E)
            target = ids[:, steps]
        else:
            x = torch.randn(batch, steps, rnn.input_size, generator=g).to(device)
            u = torch.randn(rnn.hidden_size, generator=g).to(device)
            u = u / u.norm()
        state = None
        hs: list[Tensor] = []
        for t in range(x.shape[1]):
            xt = x[:, t : t + 1] if rnn.batch_first else x[:, t : t + 1].transpose(0, 1)
            _, state = rnn(xt, state)
            hs.append(state[0] if isinstance(state, tuple) else state)  # (L, B, H)
        last = hs[-1][-1]  # (B, H): the top layer's h_T, what the output layer reads
        if isinstance(model, CharLM):
            loss = F.cross_entropy(model.head(last), target, reduction="sum")
        else:
            loss = (last @ u).sum()
        # Lower layers' h_T reach no loss at step T: their gradient is zero (allow_unused).
        grads = torch.autograd.grad(loss, hs, allow_unused=True)
        norms = torch.stack(
            [
                torch.zeros(len(h)) if gr is None else gr.norm(dim=-1).mean(dim=-1).cpu()
                for h, gr in zip(hs, grads, strict=True)
            ]
        )  # (T, L)
    finally:
        model.train(was_training)
    return GradientFlow(rnn.cell, norms.detach().cpu().double().numpy())


def one_unit_gradients(w: float, steps: int) -> np.ndarray:
    """|dh_T/dh_t| for d = T - t = 0..steps, of the one-unit RNN h_t = tanh(w h_{t-1} + 0 x_t)
    from h_0 = 0, computed by autograd through ``Recurrent`` in float64 (it equals |w|^d)."""
    rnn = Recurrent("rnn", 1, 1, backend="reference").double()
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            p.zero_()
            if name.startswith("weight_hh"):
                p.fill_(w)
    h0 = torch.zeros(1, 1, 1, dtype=torch.float64, requires_grad=True)
    hs, state = [h0], h0
    for _ in range(steps):
        _, state = rnn(torch.zeros(1, 1, 1, dtype=torch.float64), state)
        hs.append(state)
    grads = torch.autograd.grad(hs[-1].sum(), hs)
    return np.array([abs(float(gr)) for gr in grads[::-1]])  # index d = T - t


def largest_singular_values(rnn: Recurrent) -> list[dict[str, float]]:
    """Per layer: ``{"W_hh": sigma_max, "<gate>": sigma_max of that gate's H-row block}``.
    minGRU and minLSTM have no W_hh (h enters only through h' = a ⊙ h + b): ``{"W_hh": 0.0}``."""
    H = rnn.hidden_size
    if rnn.cell in SCAN_CELLS:
        return [{"W_hh": 0.0} for _ in range(rnn.num_layers)]
    gate_names = {
        "lstm": "ifgo",
        "gru": "rzn",
        "rnn": "h",
        "mut1": ("r", "h"),
        "mut2": "zrh",
        "mut3": "zrh",
        "indrnn": "h",
        "layernorm_lstm": "ifgo",
        "layernorm_gru": "rzn",
    }[rnn.cell]
    out = []
    for k in range(rnn.num_layers):
        w = getattr(rnn, f"weight_hh_l{k}").detach().double().cpu()
        if w.dim() == 1:  # IndRNN: W_hh = diag(u), sigma_max = max |u|
            out.append({"W_hh": float(w.abs().max())})
            continue
        row = {"W_hh": float(torch.linalg.matrix_norm(w, ord=2))}
        if len(gate_names) > 1:
            for j, name in enumerate(gate_names):
                row[name] = float(torch.linalg.matrix_norm(w[j * H : (j + 1) * H], ord=2))
        out.append(row)
    return out


def clip_events(records: Iterable[Mapping[str, object]], grad_clip: float) -> list[int]:
    """Steps of ``metrics.jsonl`` records whose ``grad_norm`` exceeded ``grad_clip`` (> 0)."""
    if grad_clip <= 0:
        return []
    steps = []
    for r in records:
        g = r.get("grad_norm")
        if isinstance(g, (int, float)) and (g > grad_clip or not np.isfinite(g)):
            steps.append(int(r["step"]))  # type: ignore[arg-type]
    return steps
