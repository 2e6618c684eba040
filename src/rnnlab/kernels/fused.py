"""The fused backend on CPU: autograd wiring of the C++ layer kernels, and the sampling step.

One ``torch.autograd.Function`` per layer: forward calls ``layer_forward`` (all T steps in C++,
saving gate activations), backward calls ``layer_backward`` (reverse loop + all-steps GEMMs).
Dropout between layers stays in Python with ``F.dropout``, exactly as the reference backend draws
it, so the two consume the RNG identically. The algorithm (Appleyard et al. 2016): recurrence.cpp.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from rnnlab.cells import State

# Must match the Cell enum in recurrence.cpp.
CELL_IDS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "mut1": 4, "mut2": 5, "mut3": 6}
DTYPES = (torch.float32, torch.float64)


def cell_id(module: torch.nn.Module) -> int:
    name = f"rnn_{module.nonlinearity}" if module.cell == "rnn" else module.cell
    return CELL_IDS[name]


def layer_weights(params: dict[str, Tensor], k: int, cell: str) -> list[Tensor | None]:
    """Layer k's parameters in the kernel's five slots: (w_ih, w_hh, b_a, b_b, w_proj).

    b_a/b_b are bias_ih/bias_hh for rnn/lstm/gru, or the MUT cells' single ``bias`` and None.
    """
    get = params.get
    if cell.startswith("mut"):
        return [get(f"weight_ih_l{k}"), get(f"weight_hh_l{k}"), get(f"bias_l{k}"), None,
                get(f"weight_proj_l{k}")]  # fmt: skip
    return [get(f"weight_ih_l{k}"), get(f"weight_hh_l{k}"), get(f"bias_ih_l{k}"),
            get(f"bias_hh_l{k}"), None]  # fmt: skip


class FusedLayer(torch.autograd.Function):
    """One layer over all steps: (x (T,B,I), h0 (B,H), c0, weights) -> (out (T,B,H), h_T[, c_T]).

    ``projected``: x is the layer's input projection [x W_ih^T | px] (T,B,G) (see
    ``input_table``), w_ih and w_proj are None, and backward returns dx = d[x W_ih^T | px].
    """

    @staticmethod
    def forward(ctx, ext, cell, projected, x, h0, c0, w_ih, w_hh, b_a, b_b, w_proj):  # noqa: ANN001, ANN205
        out, h_t, c_t, saved = ext.layer_forward(
            cell, x, h0, c0, w_ih, w_hh, b_a, b_b, w_proj, True, projected
        )
        ctx.ext, ctx.cell, ctx.projected = ext, cell, projected
        ctx.set_materialize_grads(False)  # missing output gradients arrive as None: skip them
        x_saved = None if projected else x  # backward needs no projected input: don't hold it
        ctx.save_for_backward(x_saved, h0, c0, out, saved, w_ih, w_hh, b_a, b_b, w_proj)
        return (out, h_t, c_t) if c_t is not None else (out, h_t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h, grad_c=None):  # noqa: ANN001, ANN205
        x, h0, c0, out, saved, w_ih, w_hh, b_a, b_b, w_proj = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[3]
        grads = ctx.ext.layer_backward(ctx.cell, grad_out, grad_h, grad_c, x, h0, c0, out, saved,
                                       w_ih, w_hh, b_a, b_b, w_proj, need_dx,
                                       ctx.projected)  # fmt: skip
        return (None, None, None, *grads)


def input_table(module: torch.nn.Module, weight: Tensor) -> Tensor:
    """Layer 0's input projection of every row of ``weight`` (V, I): (V, G) = weight @ W_ih^T,
    with the MUT1/MUT2 hidden-sized input px (weight itself, or weight @ W_proj^T) appended.
    Autograd tracks it. Row v is what the fused engine computes for input x = weight[v] before the
    recurrence (biases stay in the engine), so gathering rows is exact."""
    params = module._parameters
    table = F.linear(weight, params["weight_ih_l0"])
    if module.cell in ("mut1", "mut2"):
        proj = params.get("weight_proj_l0")
        table = torch.cat([table, weight if proj is None else F.linear(weight, proj)], 1)
    return table


def run_layers(
    module: torch.nn.Module, ext: ModuleType, x: Tensor, state: State, projected: bool = False
) -> tuple:
    """All layers of ``module`` (a Recurrent) on x (T, B, I) from state (L, B, H) [or (h, c)].
    ``projected``: x is layer 0's input projection (T, B, G), rows of ``input_table``."""
    lstm = module.cell == "lstm"
    h0, c0 = state if lstm else (state, None)
    cell = cell_id(module)
    params = module._parameters  # Recurrent's flat weight_ih_l0 ...; no walk over submodules
    record = torch.is_grad_enabled() and (
        x.requires_grad
        or h0.requires_grad
        or (lstm and c0.requires_grad)
        or any(p.requires_grad for p in params.values())
    )
    hs, cs = [], []
    for k in range(module.num_layers):
        if k > 0 and module.dropout > 0:
            x = F.dropout(x, module.dropout, module.training)
        w = layer_weights(params, k, module.cell)
        proj_k = projected and k == 0
        if proj_k:
            w[0] = w[4] = None  # applied already: x is layer 0's input projection
        c0_k = c0[k] if lstm else None
        if record:
            result = FusedLayer.apply(ext, cell, proj_k, x, h0[k], c0_k, *w)
        else:
            result = ext.layer_forward(cell, x, h0[k], c0_k, *w, False, proj_k)
        x = result[0]  # (T, B, H)
        hs.append(result[1])
        if lstm:
            cs.append(result[2])
    h_n = torch.stack(hs)  # (L, B, H)
    return x, ((h_n, torch.stack(cs)) if lstm else h_n)


def step_layers(
    module: torch.nn.Module, ext: ModuleType, x: Tensor, state: State
) -> tuple[Tensor, State]:
    """One step of every layer in one C++ call (no autograd): x (B, I) -> (h_top (B, H), state)."""
    lstm = module.cell == "lstm"
    h, c = state if lstm else (state, None)
    params = module._parameters
    weights = [w for k in range(module.num_layers) for w in layer_weights(params, k, module.cell)]
    h_top, h_n, c_n = ext.step_layers(cell_id(module), x, h, c, weights)
    return h_top, ((h_n, c_n) if lstm else h_n)
