"""``from rnnlab.train import TrainConfig, train``: the README's entry point to char-LM training.

The char-LM task lives in ``rnnlab.tasks.char_lm`` (its config, presets and ``train``); the loop
every task shares is ``rnnlab.training.loop.fit``.
"""

from rnnlab.tasks.char_lm import PRESETS, TrainConfig, train
from rnnlab.training.loop import FitResult
from rnnlab.training.plots import plot_history
from rnnlab.training.tools import TrainingError, lr_at, make_optimizer

TrainResult = FitResult  # the name this module has always exported

__all__ = [
    "PRESETS",
    "FitResult",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "lr_at",
    "make_optimizer",
    "plot_history",
    "train",
]
