"""``from rnnlab.train import TrainConfig, train``: the README's entry point to char-LM training.

The code lives in ``rnnlab.training``: ``config`` (TrainConfig, presets, the resume table),
``tools`` (shared by every task's loop) and ``char_lm`` (the loop).
"""

from rnnlab.training.char_lm import TrainResult, plot_losses, train
from rnnlab.training.config import PRESETS, TrainConfig
from rnnlab.training.tools import TrainingError, lr_at, make_optimizer

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "lr_at",
    "make_optimizer",
    "plot_losses",
    "train",
]
