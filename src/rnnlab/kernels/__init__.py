"""The fast recurrence engine: the fused backend, the sampling step and the backend choice.

Public API:

- ``run_layers(module, x, state)``: the ``fused`` backend of a ``Recurrent`` (x (T, B, I)).
  With ``projected=True`` x is layer 0's input projection instead: rows of
  ``input_table(module, E)``, for an input that is a row lookup in E (a char-LM's embedding).
- ``can_project(module)``: whether ``projected=True`` can run here (CPU, C++ engine, f32/f64).
- ``step_layers(module, x, state)``: one step of every layer for sampling (x (B, I)), no autograd.
- ``choose_backend(cell, hidden_size, device, projected_input=False)``: what ``backend="auto"``
  runs; ``projected_input=True`` for a caller that will feed ``projected=True`` (CharLM).
- ``describe_backend(module)``: one line for the training log.
- ``extension_status()``: whether the C++ engine built, and why not.

On CPU the fused backend is a C++ extension (``recurrence.cpp``, Appleyard et al. 2016); on CUDA it
is cuDNN for rnn/lstm/gru and hoisted torch ops for MUT1-3 (``hoisted.py``). If the extension
cannot be built it warns once and the fused backend computes with the reference loop instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnlab.cells import State
from rnnlab.kernels import fused, hoisted
from rnnlab.kernels.extension import ExtensionStatus, extension_status, load_extension

__all__ = [
    "ExtensionStatus",
    "choose_backend",
    "describe_backend",
    "can_project",
    "extension_status",
    "input_table",
    "run_layers",
    "step_layers",
]

NATIVE_CELLS = ("rnn", "lstm", "gru")

# The faster backend for CPU training of a char-LM, measured with bench/run.py on a 2-core AMD EPYC
# (torch 2.13.0 CPU; bench/RESULTS.md) at H = 128, 256 and 512: the winner did not change with
# size. oneDNN's LSTM is well tuned (fused reaches 0.8-0.94x of it); its GRU and RNN are not
# (fused is 1.1-1.8x faster), and it has no MUT cells.
CPU_FASTEST = {"rnn": "fused", "lstm": "native", "gru": "fused",
               "mut1": "fused", "mut2": "fused", "mut3": "fused"}  # fmt: skip
# With the input projection done by the caller (CharLM folds its embedding into a (V, G) table,
# run_layers(..., projected=True)) the engine skips its largest GEMMs and also beats oneDNN's LSTM:
# char-LM training 1.2x the baseline at H128 L1 and H256 L2, 1.16x at H512 L2, where oneDNN is
# 0.97-1.0x (same machine, bench/RESULTS.md). So a CharLM on CPU runs every cell fused.
CPU_FASTEST_PROJECTED = dict.fromkeys(CPU_FASTEST, "fused")


def choose_backend(
    cell: str, hidden_size: int, device: torch.device | str, projected_input: bool = False
) -> str:
    """The backend ``auto`` resolves to for this cell, size and device (fastest proven correct).

    ``projected_input``: the caller feeds layer 0's input projection (``run_layers(...,
    projected=True)``, as CharLM does with its embedding), which saves the fused engine its
    largest GEMMs; a bare ``Recurrent`` passes False."""
    device = torch.device(device)
    standard = cell in NATIVE_CELLS
    if device.type == "cuda":
        return "native" if standard else "fused"  # cuDNN; hoisted torch ops for MUT1-3
    if device.type != "cpu":
        return "native" if standard else "reference"
    fastest = CPU_FASTEST_PROJECTED if projected_input else CPU_FASTEST
    if fastest[cell] == "native":
        return "native"
    if extension_status().available:
        return "fused"
    return "native" if standard else "reference"


def describe_backend(module: torch.nn.Module, device: torch.device | str | None = None) -> str:
    """E.g. ``'lstm 2x512: fused (rnnlab C++ engine, auto)'``, for the training log."""
    device = torch.device(device) if device is not None else next(module.parameters()).device
    backend = module.resolved_backend(device)
    how = {
        "native": "torch's cuDNN kernels" if device.type == "cuda" else "torch's oneDNN kernels",
        "reference": "Python loop over the cell's step equations",
        "fused": "cuDNN" if device.type == "cuda" and module.cell in NATIVE_CELLS else
                 "hoisted torch ops" if device.type == "cuda" else "rnnlab C++ engine",
    }[backend]  # fmt: skip
    if backend == "fused" and device.type == "cpu" and not extension_status().available:
        backend, how = "reference", f"fused unavailable: {extension_status().reason}"
    chosen = ", auto" if module.backend == "auto" else ""
    size = f"{module.num_layers}x{module.hidden_size}"
    return f"{module.cell} {size}: {backend} ({how}{chosen})"


input_table = fused.input_table


def can_project(module: torch.nn.Module) -> bool:
    """Whether ``run_layers(module, ..., projected=True)`` runs for ``module``'s parameters."""
    p = module.weight_ih_l0
    return p.device.type == "cpu" and p.dtype in fused.DTYPES and extension_status().available


def run_layers(
    module: torch.nn.Module, x: Tensor, state: State, projected: bool = False
) -> tuple[Tensor, State]:
    """The fused backend of ``Recurrent``: x (T, B, I), state (L, B, H) or a pair of them ->
    (output (T, B, H), new state). Falls back to the reference loop (warned once) without the
    C++ engine, and for dtypes it does not compile (half precision on CPU).

    ``projected``: x (T, B, G) is layer 0's input projection, rows of ``input_table`` (exact: the
    engine would compute the same row for that input); needs ``can_project(module)``."""
    if projected:
        if not can_project(module):
            raise RuntimeError("run_layers: projected input needs the C++ engine (CPU, f32/f64)")
        return fused.run_layers(module, load_extension(), x, state, projected=True)
    if x.device.type == "cuda":
        return hoisted.run_layers(module, x, state)
    ext = load_extension() if x.device.type == "cpu" and x.dtype in fused.DTYPES else None
    if ext is None:
        output, new_state, _ = module._forward_reference(x, state, record=False)
        return output, new_state
    return fused.run_layers(module, ext, x, state)


@torch.no_grad()
def step_layers(
    module: torch.nn.Module, x: Tensor, state: State | None = None
) -> tuple[Tensor, State]:
    """One time step of every layer of a ``Recurrent``, for sampling (no autograd, no dropout).

    x (B, I) -> (h_top (B, H), new state (L, B, H) or a pair). On CPU this is a single C++ call,
    so a character costs only its GEMVs; elsewhere it is the module's own forward at T = 1.
    """
    if x.dim() != 2 or x.shape[1] != module.input_size:
        raise ValueError(
            f"input: expected a 2-D (B, {module.input_size}) tensor, got shape {tuple(x.shape)}"
        )
    if state is None:
        state = module.initial_state(x.shape[0], x)
    ext = load_extension() if x.device.type == "cpu" and x.dtype in fused.DTYPES else None
    if ext is None:
        output, new_state = module(x.unsqueeze(1 if module.batch_first else 0), state)
        return output.select(1 if module.batch_first else 0, 0), new_state
    return fused.step_layers(module, ext, x, state)
