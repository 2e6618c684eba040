"""The parallel scan over time of the minimal cells (minGRU, minLSTM): all T steps in a few ops.

Their step is ``h_t = a_t ⊙ h_{t-1} + b_t`` with a_t in (0, 1) and b_t > 0 functions of x_t alone
(``rnnlab.cells.min_coefficients``), so with A_t = a_1 ⋯ a_t the whole sequence is

    h_t = A_t h_0 + Σ_{k≤t} (A_t / A_k) b_k
        = exp(L_t) h_0 + exp(L_t + logcumsumexp_k(log b_k − L_k)),      L_t = Σ_{s≤t} log a_s

(Heinsen 2023, "Efficient parallelization of a ubiquitous sequential computation"; Feng et al.
2024, appendix B). The sum has positive terms only, so it is taken in log space (finite in float32
where the product A_t underflows); h_0 may have either sign, so its term stays outside the log
(the paper's listing takes log g(h_0) instead, which changes a given initial state).

Precision: L_t grows like t, and exp(L_t + (…)) cancels two numbers of size |L_t|, so the relative
error grows like |L_t| ε. The scan therefore runs over blocks of ``BLOCK`` steps, each from the
previous block's last state (exact, a T / BLOCK step loop): |L_t| stays at most BLOCK * max|log a|.

Autograd differentiates these torch ops (cumsum, logcumsumexp, exp) directly; the tests compare
values and gradients with the one-step loop (``rnnlab.cells.unroll``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.cells import Gates, Params, min_coefficients, min_log_coefficients

BLOCK = 32  # steps per scan block: bounds |L_t| (see the module docstring)


def linear_scan(log_a: Tensor, log_b: Tensor, h0: Tensor, block: int = BLOCK) -> Tensor:
    """h_t = a_t ⊙ h_{t-1} + b_t for t = 1..T, from log a, log b (T, B, H) and h0 (B, H) of any
    sign: -> h (T, B, H). ``block``: steps per log-space scan (a positive int)."""
    if block < 1:
        raise ValueError(f"block: expected a positive integer, got {block!r}")
    outputs = []
    h = h0
    for s in range(0, log_a.shape[0], block):
        la, lb = log_a[s : s + block], log_b[s : s + block]  # (K, B, H)
        L = la.cumsum(0)  # log A_t within the block
        part = L.exp() * h + (L + torch.logcumsumexp(lb - L, 0)).exp()  # (K, B, H)
        outputs.append(part)
        h = part[-1]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def run_layer(
    cell: str,
    u: Tensor,
    h0: Tensor,
    p: Params,
    lengths: Tensor | None = None,
    record: bool = False,
    block: int = BLOCK,
) -> tuple[Tensor, Tensor, Gates]:
    """One direction of one minGRU/minLSTM layer over u (T, B, G) (``input_projection``) from h0
    (B, H): -> (output (T, B, H), final h (B, H), gates), as ``rnnlab.cells.unroll`` returns them.

    ``lengths`` (B,) (each in 1..T): outputs (and gates) past a sequence's end are 0 and its final
    state is its output at step length - 1 (the scan is causal: padding after a sequence never
    reaches its earlier steps). ``record``: gates (T, B, H) by name (z n h, or f i g h).
    """
    log_a, log_b = min_log_coefficients(cell, u, p)
    out = linear_scan(log_a, log_b, h0, block)  # (T, B, H)
    gates: Gates = {}
    if record:
        gates = {**min_coefficients(cell, u, p)[2], "h": out}
    if lengths is None:
        return out, out[-1], gates
    lengths = lengths.to(out.device)
    last = (lengths - 1).view(1, -1, 1).expand(1, *out.shape[1:])  # (1, B, H)
    final = out.gather(0, last).squeeze(0)
    live = (torch.arange(out.shape[0], device=out.device).unsqueeze(1) < lengths).unsqueeze(2)
    gates = {n: g.masked_fill(~live, 0.0) for n, g in gates.items()}
    return out.masked_fill(~live, 0.0), final, gates
