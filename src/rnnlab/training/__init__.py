"""rnnlab.training: the shared training tools (``tools``), the char-LM config (``config``) and the
char-LM loop (``char_lm``). Each later task keeps its own short loop and reuses ``tools``.

Names are exported lazily so that ``rnnlab.training.config`` imports without the loop.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "rnnlab.training.config",
    "PRESETS": "rnnlab.training.config",
    "TrainResult": "rnnlab.training.char_lm",
    "train": "rnnlab.training.char_lm",
    "plot_losses": "rnnlab.training.char_lm",
    "TrainingError": "rnnlab.training.tools",
    "lr_at": "rnnlab.training.tools",
    "make_optimizer": "rnnlab.training.tools",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rnnlab.training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
