"""The fused backend on CPU: autograd wiring of the C++ layer kernels, and the sampling step.

Everything here takes explicit tensors (a layer's weights in the kernel's five slots), never a
module. One ``torch.autograd.Function`` runs one direction of one layer: forward calls
``layer_forward`` (all T steps in C++, saving gate activations), backward calls ``layer_backward``
(reverse loop + all-steps GEMMs). The algorithm (Appleyard et al. 2016): recurrence.cpp.

Variable lengths: the batch arrives sorted by length, longest first (``Recurrent`` sorts it), so at
step t the live rows are a prefix of the batch, ``batch_sizes[t]`` long, as in a PackedSequence;
the engine runs its GEMMs on that prefix only and finished rows keep their state.

Double backward: the C++ backward is not itself differentiable. When autograd asks for a graph of
the gradient (``create_graph=True``: gradient penalties, ``gradgradcheck``), backward recomputes
the layer with the cells' own equations (``rnnlab.cells.unroll``) and differentiates that, so the
second-order terms are exact rather than silently missing.

Zoneout (Krueger et al. 2016): ``zoneout`` is the layer's keep masks, one per state part, each
(T, B, H) in the state's dtype (1 keeps the previous value; a constant rate at eval); the engine
blends the state it hands on, m * prev + (1 - m) * new, in forward and backward (recurrence.cpp).
The masks are data, not parameters: no gradient flows to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import torch
from torch import Tensor

from rnnlab.cells import State, Zoneout, input_projection, unroll
from rnnlab.kernels.extension import extension_status, load_extension

# Must match the Cell enum in recurrence.cpp.
CELL_IDS = {"rnn_tanh": 0, "rnn_relu": 1, "lstm": 2, "gru": 3, "mut1": 4, "mut2": 5, "mut3": 6}
DTYPES = (torch.float32, torch.float64)


def cell_id(cell: str, nonlinearity: str = "tanh") -> int:
    return CELL_IDS[f"rnn_{nonlinearity}" if cell == "rnn" else cell]


def layer_weights(cell: str, p: Mapping[str, Tensor]) -> list[Tensor | None]:
    """A layer's parameters (the cell's own names) in the kernel's slots (w_ih, w_hh, b_a, b_b,
    w_proj): b_a/b_b are bias_ih/bias_hh for rnn/lstm/gru, or the MUT cells' ``bias`` and None."""
    if cell.startswith("mut"):
        return [p["weight_ih"], p["weight_hh"], p.get("bias"), None, p.get("weight_proj")]
    return [p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"), None]


def _named(cell: str, w_ih, w_hh, b_a, b_b, w_proj) -> dict[str, Tensor]:  # noqa: ANN001
    """The inverse of ``layer_weights``: the slots under the cell's own names."""
    names = (("weight_ih", w_ih), ("weight_hh", w_hh))
    if cell.startswith("mut"):
        names += (("bias", b_a), ("weight_proj", w_proj))
    else:
        names += (("bias_ih", b_a), ("bias_hh", b_b))
    return {n: t for n, t in names if t is not None}


def batch_sizes(lengths: Tensor, steps: int) -> Tensor:
    """(T,) int64: how many sequences of a batch sorted longest-first are live at each step."""
    return (lengths.unsqueeze(0) > torch.arange(steps).unsqueeze(1)).sum(1)


class FusedLayer(torch.autograd.Function):
    """One direction of one layer: (x (T,B,I), h0 (B,H), c0, weights) -> (out (T,B,H), h_T[, c_T]).

    ``projected``: x is the layer's input projection u = [x W_ih^T | px] (T,B,G) (see
    ``rnnlab.cells.input_projection``), w_ih and w_proj are None, and backward returns du.
    ``lengths`` (B,) sorted longest first, or None for full-length sequences. ``zoneout``: the
    keep masks of ``rnnlab.cells.unroll`` (h, and c for the LSTM), or None.
    """

    @staticmethod
    def forward(ctx, ext, cell, nonlinearity, projected, lengths, zoneout, x, h0, c0, *weights):  # noqa: ANN001, ANN205
        sizes = None if lengths is None else batch_sizes(lengths, x.shape[0])
        zh, zc = _masks(zoneout)
        out, h_t, c_t, saved = ext.layer_forward(
            cell_id(cell, nonlinearity), x, h0, c0, *weights, True, projected, sizes, zh, zc
        )
        ctx.ext, ctx.cell, ctx.nonlinearity, ctx.projected = ext, cell, nonlinearity, projected
        ctx.lengths, ctx.sizes, ctx.zoneout = lengths, sizes, zoneout
        ctx.set_materialize_grads(False)  # missing output gradients arrive as None: skip them
        ctx.save_for_backward(x, h0, c0, out, saved, *weights)
        return (out, h_t, c_t) if c_t is not None else (out, h_t)

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c=None):  # noqa: ANN001, ANN205
        x, h0, c0, out, saved, *weights = ctx.saved_tensors
        head = (None,) * 6  # ext, cell, nonlinearity, projected, lengths, zoneout
        if torch.is_grad_enabled():  # create_graph=True: differentiate the equations themselves
            return head + _recomputed_grads(ctx, (grad_out, grad_h, grad_c), x, h0, c0, weights)
        need_dx = ctx.needs_input_grad[6]
        grads = ctx.ext.layer_backward(
            cell_id(ctx.cell, ctx.nonlinearity), grad_out, grad_h, grad_c,
            None if ctx.projected else x, h0, c0, out, saved, *weights, need_dx, ctx.projected,
            ctx.sizes, *_masks(ctx.zoneout),
        )  # fmt: skip
        return (*head, *grads)


def _recomputed_grads(ctx, grads, x, h0, c0, weights) -> tuple:  # noqa: ANN001
    """First-order gradients with a graph (for double backward), from the cells' equations: the
    layer is recomputed from the very input tensors (not copies), so the gradients returned are
    differentiable functions of the inputs, the weights and the incoming gradients."""
    inputs = (x, h0, c0, *weights)
    wanted = [t for t, need in zip(inputs, ctx.needs_input_grad[6:], strict=True) if need]
    with torch.enable_grad():
        p = _named(ctx.cell, *weights)
        u = x if ctx.projected else input_projection(ctx.cell, x, p)
        state = (h0, c0) if c0 is not None else h0
        out, final, _ = unroll(ctx.cell, u, state, p, ctx.nonlinearity, ctx.lengths,
                               zoneout=ctx.zoneout)  # fmt: skip
        outputs = [out, *(final if isinstance(final, tuple) else (final,))]
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=False) if g is not None]
        found = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [g for _, g in pairs],
                create_graph=True, allow_unused=True,
            )
        )  # fmt: skip
    return tuple(next(found) if need else None for need in ctx.needs_input_grad[6:])


def _masks(zoneout: Zoneout | None) -> tuple[Tensor | None, Tensor | None]:
    """The engine's two mask slots (h, c) from a state's masks (c absent but for the LSTM)."""
    if zoneout is None:
        return None, None
    return zoneout[0], (zoneout[1] if len(zoneout) > 1 else None)


def engine() -> ModuleType:
    """The compiled C++ module; RuntimeError naming why when it cannot be built."""
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"the C++ engine is unavailable: {extension_status().reason}")
    return ext


def run_layer(
    cell: str,
    nonlinearity: str,
    x: Tensor,
    state: State,
    weights: list[Tensor | None],
    lengths: Tensor | None = None,
    projected: bool = False,
    zoneout: Zoneout | None = None,
) -> tuple[Tensor, State]:
    """One direction of one layer on x (T, B, I) (or its projection u, ``projected``) from state
    h0 (B, H) or (h0, c0): -> (output (T, B, H), final state). ``lengths``: sorted, longest first.
    ``zoneout``: keep masks per state part, (T, B, H) each. Records for autograd only when
    something needs a gradient."""
    ext = engine()
    lstm = cell == "lstm"
    h0, c0 = state if lstm else (state, None)
    tensors = [x, h0, c0, *weights]
    record = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if record:
        result = FusedLayer.apply(ext, cell, nonlinearity, projected, lengths, zoneout, *tensors)
    else:
        sizes = None if lengths is None else batch_sizes(lengths, x.shape[0])
        result = ext.layer_forward(cell_id(cell, nonlinearity), *tensors, False, projected, sizes,
                                   *_masks(zoneout))  # fmt: skip
    return result[0], ((result[1], result[2]) if lstm else result[1])


# The activations recurrence.cpp saves per step (the header's S layout, H columns each) under
# rnnlab.cells' gate names; the rest of S (GRU's W_hn h, MUT's r*h ...) is not a gate.
SAVED_GATES = {"rnn": (), "lstm": ("i", "f", "g", "o", "c"), "gru": ("r", "z", "n"),
               **dict.fromkeys(("mut1", "mut2", "mut3"), ("z", "r", "n"))}  # fmt: skip


@torch.no_grad()
def trace_layer(
    cell: str,
    nonlinearity: str,
    x: Tensor,
    state: State,
    weights: list[Tensor | None],
    lengths: Tensor | None = None,
    projected: bool = False,
    zoneout: Zoneout | None = None,
) -> tuple[Tensor, State, dict[str, Tensor]]:
    """``run_layer`` without autograd, plus every gate at every step: ``gates[name]`` (T, B, H),
    the activations the engine saves for backward anyway, named as ``rnnlab.cells`` names them."""
    ext = engine()
    lstm = cell == "lstm"
    h0, c0 = state if lstm else (state, None)
    sizes = None if lengths is None else batch_sizes(lengths, x.shape[0])
    out, h_t, c_t, saved = ext.layer_forward(
        cell_id(cell, nonlinearity), x, h0, c0, *weights, True, projected, sizes, *_masks(zoneout)
    )
    H = out.shape[-1]
    gates = {n: saved[..., k * H : (k + 1) * H] for k, n in enumerate(SAVED_GATES[cell])}
    gates["h"] = out
    return out, ((h_t, c_t) if lstm else h_t), gates


@torch.no_grad()
def step_layers(
    cell: str,
    nonlinearity: str,
    x: Tensor,
    state: State,
    weights: list[list[Tensor | None]],
    projected: bool = False,
    zoneout: tuple[float, float] = (0.0, 0.0),
) -> tuple[Tensor, State]:
    """One step of every layer in one C++ call (no autograd): x (B, I) -> (h_top (B, H), state).
    ``weights[k]`` is layer k's five slots; ``projected``: x is layer 0's projection u (B, G).
    ``zoneout`` (h, c) rates: the eval expectation ``rate * prev + (1 - rate) * new``.
    A character costs only its GEMVs, not a framework call per layer."""
    ext = engine()
    lstm = cell == "lstm"
    h, c = state if lstm else (state, None)
    flat = [w for layer in weights for w in layer]
    h_top, h_n, c_n = ext.step_layers(cell_id(cell, nonlinearity), x, h, c, flat, projected,
                                      *zoneout)  # fmt: skip
    return h_top, ((h_n, c_n) if lstm else h_n)
