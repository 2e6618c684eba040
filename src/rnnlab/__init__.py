"""rnnlab: recurrent neural networks from the lecture to a fast char-level language model."""

from rnnlab.cells import (
    CELLS,
    Cell,
    GRUCell,
    LSTMCell,
    MUT1Cell,
    MUT2Cell,
    MUT3Cell,
    RNNCell,
    cell_class,
)

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "Cell",
    "GRUCell",
    "LSTMCell",
    "MUT1Cell",
    "MUT2Cell",
    "MUT3Cell",
    "RNNCell",
    "cell_class",
]
