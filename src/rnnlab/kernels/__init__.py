"""The fast recurrence engine: the fused C++ layer kernels, the sampling step, the backend choice.

The engine takes explicit tensors and knows no model: ``rnnlab.recurrent.Recurrent`` is the only
caller (every model reaches the engine through it). Public API:

- ``fused_available(device, dtype)``: whether the C++ engine runs for these tensors (CPU, f32/f64,
  built).
- ``run_layer(cell, nonlinearity, x, state, weights, lengths=None, projected=False)``: one
  direction of one layer over all steps (see ``fused.run_layer``), autograd-aware.
- ``trace_layer(...)``: ``run_layer`` without autograd, plus every gate at every step (analysis).
- ``step_layers(cell, nonlinearity, x, state, weights, projected=False)``: one step of every layer
  in one C++ call, no autograd (sampling); for the cells in ``STEP_CELLS``.
- ``run_indrnn(u, h0, weight_hh, bias, nonlinearity, lengths=None)``: IndRNN's element-wise
  recurrence over all steps in C++, autograd-aware (``kernels.indrnn``).
- ``has_engine(cell)``: whether ``fused`` has a C++ path for the cell (not the LayerNorm cells).
- ``choose_backend(cell, hidden_size, device, ...)``: what ``backend="auto"`` runs.
- ``describe_backend(module)``: one line for the training log.
- ``regulariser_fallback(module, device)``: why a regulariser sends a module off its fast path
  (zoneout where torch's kernels would run, or with ``proj_size``), or ''.
- ``extension_status()``: whether the C++ engine built, and why not.

If the extension cannot be built it warns once and ``Recurrent`` computes with the reference loop.
On CUDA, ``fused`` means cuDNN for rnn/lstm/gru and the reference loop (whose input projection is
already one GEMM for all steps) for MUT1-3 and conditioned layers. For minGRU/minLSTM, on every
device, ``fused`` is the log-space parallel scan (``rnnlab.scan``), not the C++ engine.
"""

from __future__ import annotations

import torch

from rnnlab.cells import NATIVE_CELLS, SCAN_CELLS
from rnnlab.kernels import fused
from rnnlab.kernels.extension import ExtensionStatus, extension_status
from rnnlab.kernels.fused import CELL_IDS, run_layer, step_layers, trace_layer
from rnnlab.kernels.indrnn import run_indrnn

__all__ = [
    "ExtensionStatus",
    "choose_backend",
    "describe_backend",
    "extension_status",
    "fused_available",
    "has_engine",
    "regulariser_fallback",
    "layer_weights",
    "run_indrnn",
    "run_layer",
    "step_layers",
    "trace_layer",
]

layer_weights = fused.layer_weights

# The faster backend for CPU training of a char-LM, measured with bench/run.py on a 2-core AMD EPYC
# (torch 2.13.0 CPU; bench/RESULTS.md) at H = 128, 256 and 512: the winner did not change with
# size. oneDNN's LSTM is well tuned (fused reaches 0.8-0.94x of it); its GRU and RNN are not
# (fused is 1.1-1.8x faster), and it has no MUT cells.
# minGRU / minLSTM: "fused" is the log-space parallel scan (rnnlab.scan, torch ops, any device).
# On these 2 CPU cores it never paid: a layer's training step (forward + backward, 1 thread) took
# 2.5x the reference loop's at T=64, B=32, H=384 (137 vs 55 ms) and 1.5x at T=256, B=8, H=128
# (59 vs 39 ms): its log2(T) rounds over the whole sequence cost more than the loop's T small
# elementwise steps. Off the CPU, where each round runs in parallel over T, auto takes the scan.
CPU_FASTEST = {"rnn": "fused", "lstm": "native", "gru": "fused",
               "mut1": "fused", "mut2": "fused", "mut3": "fused",
               "mingru": "reference", "minlstm": "reference", "indrnn": "fused",
               "layernorm_lstm": "reference", "layernorm_gru": "reference"}  # fmt: skip
# IndRNN: its C++ element-wise loop trains a 2x256 char-LM at 5.8x the reference loop's chars/s
# (docs/benchmarks.md). The LayerNorm cells have no engine: the reference loop (one input GEMM,
# then torch ops per step) is what runs.
# With a lookup-table input (a char-LM's embedding) folded into layer 0's input projection, the
# engine skips its largest GEMMs and also beats oneDNN's LSTM: char-LM training 1.2x the baseline
# at H128 L1 and H256 L2, 1.16x at H512 L2, where oneDNN is 0.97-1.0x (same machine,
# bench/RESULTS.md). So a lookup input on CPU runs every cell fused.
CPU_FASTEST_LOOKUP = {
    c: "reference" if b == "reference" else "fused" for c, b in CPU_FASTEST.items()
}
# The cells the C++ layer engine (layer_forward/step_layers) runs; IndRNN has its own loop.
STEP_CELLS = tuple(c for c in CPU_FASTEST if c == "rnn" or c in CELL_IDS)


def has_engine(cell: str) -> bool:
    """Whether ``backend="fused"`` has a C++ path for this cell on CPU (the LayerNorm cells have
    none and run the reference loop)."""
    return cell in STEP_CELLS or cell == "indrnn"


def fused_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the C++ engine runs tensors of this device and dtype (CPU, f32/f64, built)."""
    return (
        torch.device(device).type == "cpu"
        and dtype in fused.DTYPES
        and extension_status().available
    )


def choose_backend(
    cell: str,
    hidden_size: int,
    device: torch.device | str,
    *,
    lookup_input: bool = False,
    conditioned: bool = False,
    proj_size: int = 0,
    zoned: bool = False,
) -> str:
    """The backend ``auto`` resolves to for this cell, size and device (fastest proven correct).

    ``lookup_input``: layer 0's input is a row lookup in a table (a char-LM's embedding), which
    the fused engine folds into its input projection. ``conditioned``: a conditioning vector
    enters layer 0 (torch's kernels cannot take one). ``proj_size``: an LSTM with projections
    (the C++ engine has none). ``zoned``: zoneout changes the recurrence, which torch's kernels
    cannot (on CPU the engine runs it; on CUDA the reference loop does)."""
    device = torch.device(device)
    if cell in SCAN_CELLS:  # no C++ engine and no torch kernel: the loop or the scan
        return CPU_FASTEST[cell] if device.type == "cpu" else "fused"
    native_ok = cell in NATIVE_CELLS and not conditioned and not zoned
    if proj_size:
        return "native" if native_ok else "reference"
    if device.type == "cuda":
        return "native" if native_ok else "fused"  # cuDNN; else the hoisted reference loop
    if device.type != "cpu":
        return "native" if native_ok else "reference"
    fastest = CPU_FASTEST_LOOKUP if lookup_input else CPU_FASTEST
    if fastest[cell] == "native" and native_ok:
        return "native"
    if fastest[cell] == "reference":
        return "reference"
    if extension_status().available:
        return "fused"
    return "native" if native_ok else "reference"


def describe_backend(module: torch.nn.Module, device: torch.device | str | None = None) -> str:
    """E.g. ``'lstm 2x512: fused (rnnlab C++ engine, auto)'``, for the training log. ``module`` is
    a ``Recurrent`` (read through its public attributes and ``resolved_backend``)."""
    device = torch.device(device) if device is not None else next(module.parameters()).device
    backend = module.resolved_backend(device)
    how = {
        "native": "torch's cuDNN kernels" if device.type == "cuda" else "torch's oneDNN kernels",
        "reference": "Python loop over the cell's step equations",
        "fused": "log-space parallel scan" if module.cell in SCAN_CELLS else
                 "cuDNN" if device.type == "cuda" and module.cell in NATIVE_CELLS
                 and not getattr(module, "zoned", False) else
                 "hoisted torch ops" if device.type == "cuda" else "rnnlab C++ engine",
    }[backend]  # fmt: skip
    if (backend == "fused" and device.type == "cpu" and not extension_status().available
            and module.cell not in SCAN_CELLS):  # fmt: skip
        backend, how = "reference", f"fused unavailable: {extension_status().reason}"
    chosen = ", auto" if module.backend == "auto" else ""
    size = f"{module.num_layers}x{module.hidden_size}"
    note = regulariser_fallback(module, device)
    return f"{module.cell} {size}: {backend} ({how}{chosen})" + (f"; {note}" if note else "")


def regulariser_fallback(module: torch.nn.Module, device: torch.device | str | None = None) -> str:
    """Why a regulariser of ``module`` (a ``Recurrent``) runs it on a slower path on ``device``
    than without it, or '' when it does not. Only zoneout can: it changes the recurrence, which
    torch's kernels (oneDNN, cuDNN) cannot run; on CPU the C++ engine runs it, but the engine has
    no ``proj_size`` and no CUDA build, and minGRU/minLSTM's scan and IndRNN's C++ loop have no
    zoneout. Weight drop and locked dropout never change the path."""
    device = torch.device(device) if device is not None else next(module.parameters()).device
    if not getattr(module, "zoned", False) or module.backend == "reference":
        return ""
    if module.proj_size:
        return "zoneout runs the Python loop (the C++ engine has no proj_size, torch's no zoneout)"
    if device.type != "cpu" and module.cell in NATIVE_CELLS:
        return (f"zoneout runs the hoisted Python loop on {device.type}, not torch's kernels "
                "(they cannot zone the state; the C++ engine is CPU-only)")  # fmt: skip
    if module.cell in (*SCAN_CELLS, "indrnn") and module.resolved_backend(device) == "fused":
        path = "parallel scan" if module.cell in SCAN_CELLS else "C++ loop"
        return f"zoneout runs the Python loop ({module.cell}'s {path} has no zoneout)"
    return ""
