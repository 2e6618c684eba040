"""The fused backend's device-generic path (CUDA): plain torch ops, autograd by torch.

Used where the C++ CPU kernels do not apply (CUDA tensors). The standard cells go to cuDNN
(``Recurrent._forward_native``); the MUT cells keep the first of Appleyard et al.'s (2016) tricks:
the input projections of all T steps (``W_ih x`` and, where present, ``W_proj x``) are one GEMM
before the loop, so each step only runs its recurrent GEMMs and the gate math. The equations are
those of ``rnnlab.cells.mut{1,2,3}_step`` with ``W_ih x`` precomputed; tests check them against the
reference on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import State

NATIVE_CELLS = ("rnn", "lstm", "gru")


def mut_step(cell: str, xw: Tensor, px: Tensor, h: Tensor, p: dict[str, Tensor]) -> Tensor:
    """One MUT step with xw = W_ih x (B, Gx) and px = x or W_proj x (B, H) given."""
    b_z, b_r, b_h = p["bias"].chunk(3)
    w = p["weight_hh"].chunk(p["weight_hh"].shape[0] // h.shape[-1])
    if cell == "mut1":  # w = (W_hr, W_hh); xw = (x_z, x_r)
        x_z, x_r = xw.chunk(2, dim=-1)
        z = torch.sigmoid(x_z + b_z)
        r = torch.sigmoid(x_r + F.linear(h, w[0], b_r))
        n = torch.tanh(F.linear(r * h, w[1], b_h) + torch.tanh(px))
    elif cell == "mut2":  # w = (W_hz, W_hr, W_hh); xw = (x_z, x_h)
        x_z, x_h = xw.chunk(2, dim=-1)
        z = torch.sigmoid(x_z + F.linear(h, w[0], b_z))
        r = torch.sigmoid(px + F.linear(h, w[1], b_r))
        n = torch.tanh(F.linear(r * h, w[2], b_h) + x_h)
    else:  # mut3: w = (W_hz, W_hr, W_hh); xw = (x_z, x_r, x_h)
        x_z, x_r, x_h = xw.chunk(3, dim=-1)
        z = torch.sigmoid(x_z + F.linear(torch.tanh(h), w[0], b_z))
        r = torch.sigmoid(x_r + F.linear(h, w[1], b_r))
        n = torch.tanh(F.linear(r * h, w[2], b_h) + x_h)
    return n * z + h * (1 - z)


def run_layers(module: torch.nn.Module, x: Tensor, state: State) -> tuple[Tensor, State]:
    """All layers on x (T, B, I): cuDNN for rnn/lstm/gru, hoisted torch ops for MUT1-3."""
    if module.cell in NATIVE_CELLS:
        return module._forward_native(x, state)
    finals = []
    for k in range(module.num_layers):
        if k > 0 and module.dropout > 0:
            x = F.dropout(x, module.dropout, module.training)
        p = module.layer_params(k)
        xw = F.linear(x, p["weight_ih"])  # (T, B, Gx): every step's input projection at once
        px = F.linear(x, p["weight_proj"]) if "weight_proj" in p else x  # (T, B, H)
        h = state[k]
        outputs = []
        for t in range(x.shape[0]):
            h = mut_step(module.cell, xw[t], px[t], h, p)
            outputs.append(h)
        x = torch.stack(outputs)  # (T, B, H)
        finals.append(h)
    return x, torch.stack(finals)
