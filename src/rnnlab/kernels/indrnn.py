"""IndRNN's fused recurrence on CPU: autograd wiring of ``indrnn_forward`` / ``indrnn_backward``.

IndRNN (Li et al. 2018) recurs element-wise, h_t = act(u_t + w * h_{t-1} + b), so once the input
projection u = x W_ih^T of all steps is one GEMM (the caller's, differentiated by autograd), the
layer is a scalar loop over time per (row, unit): one C++ pass over u (recurrence.cpp) instead of
T Python steps of a few tensor ops each. Backward walks the steps in reverse from the saved
outputs and returns du, dh0, dw, db; ``lengths`` (B,) in any order.

Double backward (``create_graph=True``) recomputes the layer with the cells' own equations
(``rnnlab.cells.unroll``) and differentiates that, as ``rnnlab.kernels.fused`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.cells import unroll
from rnnlab.kernels.fused import engine


class IndRNNLayer(torch.autograd.Function):
    """(u (T, B, H), h0 (B, H), w (H,), b (H,) or None) -> (out (T, B, H), h_T (B, H))."""

    @staticmethod
    def forward(ctx, ext, relu, lengths, u, h0, w, b):  # noqa: ANN001, ANN205
        out, h_n = ext.indrnn_forward(u, h0, w, b, relu, lengths)
        ctx.ext, ctx.relu, ctx.lengths, ctx.has_bias = ext, relu, lengths, b is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u, h0, w, b, out)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_h):  # noqa: ANN001, ANN205
        u, h0, w, b, out = ctx.saved_tensors
        head = (None, None, None)  # ext, relu, lengths
        if torch.is_grad_enabled():  # create_graph=True: differentiate the equations themselves
            return head + _recomputed(ctx, grad_out, grad_h, u, h0, w, b)
        du, dh0, dw, db = ctx.ext.indrnn_backward(
            grad_out, grad_h, h0, w, out, ctx.has_bias, ctx.relu, ctx.lengths
        )
        return head + (du, dh0, dw, db if ctx.has_bias else None)


def _recomputed(ctx, grad_out, grad_h, u, h0, w, b) -> tuple:  # noqa: ANN001
    inputs = (u, h0, w, b)
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[3:], strict=True) if need]
    with torch.enable_grad():
        p = {"weight_hh": w} if b is None else {"weight_hh": w, "bias": b}
        nonlinearity = "relu" if ctx.relu else "tanh"
        out, h_n, _ = unroll("indrnn", u, h0, p, nonlinearity, ctx.lengths)
        pairs = [(o, g) for o, g in ((out, grad_out), (h_n, grad_h)) if g is not None]
        found = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs],
                create_graph=True, allow_unused=True,
            )
        )  # fmt: skip
    return tuple(next(found) if need else None for need in ctx.needs_input_grad[3:])


def run_indrnn(
    u: Tensor,
    h0: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None,
    nonlinearity: str,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One direction of one IndRNN layer from its projection u (T, B, H) and h0 (B, H):
    -> (output (T, B, H), final state (B, H)). ``lengths`` (B,) int64, each in 1..T, any order.
    Records for autograd only when something needs a gradient."""
    ext = engine()
    relu = nonlinearity == "relu"
    tensors = (u, h0, weight_hh, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, h_n = IndRNNLayer.apply(ext, relu, lengths, *tensors)
    else:
        out, h_n = ext.indrnn_forward(u, h0, weight_hh, bias, relu, lengths)
    return out, h_n
