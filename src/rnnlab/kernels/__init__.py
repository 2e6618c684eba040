"""The fast recurrence engine: backend choice and the fused forward/backward (being built)."""

from __future__ import annotations

import torch

NATIVE_CELLS = ("rnn", "lstm", "gru")


def choose_backend(cell: str, hidden_size: int, device: torch.device) -> str:
    """The backend ``auto`` resolves to: torch's kernels for the standard cells, else reference."""
    return "native" if cell in NATIVE_CELLS else "reference"


def run_layers(module, x, state):  # noqa: ANN001, ANN201
    raise RuntimeError("backend: 'fused' is not available yet; use 'reference' or 'native'")
