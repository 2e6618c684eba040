"""What ``rnnlab doctor`` reports: versions, threads, device, the C++ engine, the auto backend."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch


def report(build: bool = True) -> dict[str, Any]:
    """Facts a user needs to tell a slow fallback from the fast path. ``build=False`` reports
    the engine's cache state without compiling it."""
    import rnnlab
    from rnnlab.kernels import extension

    info: dict[str, Any] = {
        "rnnlab": getattr(rnnlab, "__version__", "unknown"),
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "device (auto)": "cuda" if torch.cuda.is_available() else "cpu",
        "engine cache": str(extension.cache_directory()),
    }
    if not build:
        info["C++ engine"] = (
            "built"
            if extension.is_built()
            else "not built yet: the first command that runs it builds it (30-60 s); "
            "build now with rnnlab doctor --build"
        )
        return info
    from rnnlab.kernels import describe_backend, extension_status, regulariser_fallback
    from rnnlab.models import CharLM, CharLMConfig

    status = extension_status()
    info["C++ engine"] = "built and loaded" if status.available else f"unavailable: {status.reason}"
    for cell in ("lstm", "gru"):
        model = CharLM(CharLMConfig(vocab_size=96, cell=cell, hidden_size=256, num_layers=1))
        alone = describe_backend(model.rnn, "cpu")
        info[f"auto backend ({cell} 1x256, cpu)"] = (
            f"{model.resolved_backend('cpu')}; recurrence alone: {alone}"
        )
    regularised = CharLM(CharLMConfig(vocab_size=96, cell="lstm", hidden_size=256, num_layers=2,
                                      dropout=0.2, zoneout=0.1, zoneout_cell=0.1,
                                      weight_drop=0.2, locked_dropout=True))  # fmt: skip
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        note = regulariser_fallback(regularised.rnn, device)
        info[f"regularisers (lstm 2x256, zoneout + weight drop + locked dropout, {device})"] = (
            f"{regularised.resolved_backend(device)}; " + (note or "no fallback")
        )
    return info


def build_engine() -> tuple[bool, list[str]]:
    """Build the C++ engine now if it is not cached (``rnnlab doctor --build``): whether it
    loaded, and the lines to show (its state and build directory, or why it failed)."""
    from rnnlab.kernels import extension

    was_built = extension.is_built()
    status = extension.extension_status()
    if not status.available:
        return False, [f"C++ engine: NOT built: {status.reason}", f"  {status.build_directory}"]
    state = "already built" if was_built else "built"
    return True, [f"C++ engine: {state} and loaded", f"  {status.build_directory}"]
