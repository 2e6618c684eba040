"""The fast recurrence engine: the fused backend, the sampling step and the backend choice.

Public API:

- ``run_layers(module, x, state)``: the ``fused`` backend of a ``Recurrent`` (x (T, B, I)).
- ``step_layers(module, x, state)``: one step of every layer for sampling (x (B, I)), no autograd.
- ``choose_backend(cell, hidden_size, device)``: what ``backend="auto"`` runs.
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
    "extension_status",
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


def choose_backend(cell: str, hidden_size: int, device: torch.device | str) -> str:
    """The backend ``auto`` resolves to for this cell, size and device (fastest proven correct)."""
    device = torch.device(device)
    standard = cell in NATIVE_CELLS
    if device.type == "cuda":
        return "native" if standard else "fused"  # cuDNN; hoisted torch ops for MUT1-3
    if device.type != "cpu":
        return "native" if standard else "reference"
    if CPU_FASTEST[cell] == "native":
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


def run_layers(module: torch.nn.Module, x: Tensor, state: State) -> tuple[Tensor, State]:
    """The fused backend of ``Recurrent``: x (T, B, I), state (L, B, H) or a pair of them ->
    (output (T, B, H), new state). Falls back to the reference loop (warned once) without the
    C++ engine, and for dtypes it does not compile (half precision on CPU)."""
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
