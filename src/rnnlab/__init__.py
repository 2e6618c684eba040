"""rnnlab: recurrent neural networks from the lecture to a fast char-level language model.

The public API, imported lazily (PEP 562 module ``__getattr__``) so that ``import rnnlab`` costs
nothing until a name is used: the CLI starts fast and can handle Ctrl-C during start-up.

    from rnnlab import LSTM, Recurrent, LSTMCell, CharLM
    lstm = LSTM(10, 20, 2, batch_first=True)        # torch.nn.LSTM's signature
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(
        ["CELLS", "Cell", "RNNCell", "LSTMCell", "GRUCell", "MUT1Cell", "MUT2Cell", "MUT3Cell",
         "MinGRUCell", "MinLSTMCell", "ShapeError", "cell_class"],
        "rnnlab.cells",
    ),
    **dict.fromkeys(
        ["IndRNNCell", "LayerNormLSTMCell", "LayerNormGRUCell", "indrnn_recurrent_bound"],
        "rnnlab.cells",
    ),
    **dict.fromkeys(
        ["Recurrent", "RNN", "LSTM", "GRU", "MUT1", "MUT2", "MUT3", "MinGRU", "MinLSTM"],
        "rnnlab.recurrent",
    ),
    **dict.fromkeys(["CharLM", "CharLMConfig"], "rnnlab.models.char_lm"),
    **dict.fromkeys(["Seq2Seq", "Seq2SeqConfig"], "rnnlab.models.seq2seq"),
    **dict.fromkeys(["SequenceClassifier", "ClassifierConfig"], "rnnlab.models.classifier"),
    **dict.fromkeys(["Captioner", "CaptionerConfig"], "rnnlab.models.captioner"),
    # The train/sample/evaluate functions share their names with modules (rnnlab.train, ...), which
    # would shadow them once imported: they stay at rnnlab.train.train, rnnlab.runs.sample, ...
    **dict.fromkeys(["TrainConfig"], "rnnlab.train"),
    **dict.fromkeys(["SampleConfig"], "rnnlab.sample"),
    **dict.fromkeys(["load_run"], "rnnlab.runs"),
    **dict.fromkeys(["prepare_corpus"], "rnnlab.data"),
}  # fmt: skip

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; never executed
    from rnnlab.cells import (  # noqa: F401
        CELLS,
        Cell,
        GRUCell,
        IndRNNCell,
        LayerNormGRUCell,
        LayerNormLSTMCell,
        LSTMCell,
        MinGRUCell,
        MinLSTMCell,
        MUT1Cell,
        MUT2Cell,
        MUT3Cell,
        RNNCell,
        ShapeError,
        cell_class,
        indrnn_recurrent_bound,
    )
    from rnnlab.data import prepare_corpus  # noqa: F401
    from rnnlab.models.captioner import Captioner, CaptionerConfig  # noqa: F401
    from rnnlab.models.char_lm import CharLM, CharLMConfig  # noqa: F401
    from rnnlab.models.classifier import ClassifierConfig, SequenceClassifier  # noqa: F401
    from rnnlab.models.seq2seq import Seq2Seq, Seq2SeqConfig  # noqa: F401
    from rnnlab.recurrent import (  # noqa: F401
        GRU,
        LSTM,
        MUT1,
        MUT2,
        MUT3,
        RNN,
        MinGRU,
        MinLSTM,
        Recurrent,
    )
    from rnnlab.runs import load_run  # noqa: F401
    from rnnlab.sample import SampleConfig  # noqa: F401
    from rnnlab.train import TrainConfig  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rnnlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
