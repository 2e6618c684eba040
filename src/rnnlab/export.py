"""Exporting a trained char-LM's one-step function, to run it without rnnlab.

Both formats hold the same function, the one a sampler calls once per character:

    (token (B,) int64, h (L, B, H) [, c (L, B, H): (LayerNorm) LSTM]) -> (logits (B, V), h_n[, c_n])

- ``onnx``: an ONNX graph (torch's exporter), for onnxruntime or any ONNX runtime, in any language.
- ``torch``: a ``torch.export`` program (``model.pt2``), for ``torch.export.load`` without rnnlab.

Beside the model: ``vocab.json`` (the run's vocabulary: token id -> character or byte) and
``export.json`` (the cell, the sizes and what each input and output means). The batch dimension B
is dynamic. The step runs the cells' own equations (``rnnlab.cells.cell_step``, plain tensor
operations), not the C++ engine, so any runtime executes it; tests check both files against the
PyTorch model over a few hundred sampled characters with the state carried.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from rnnlab.cells import cell_class, cell_step
from rnnlab.io import PathLike, mkdir_inside, split_root, write_inside
from rnnlab.models.char_lm import CharLM
from rnnlab.regularisers import zoneout_expectation

FORMATS = ("onnx", "torch")
FILENAMES = {"onnx": "model.onnx", "torch": "model.pt2"}


class ExportError(ValueError):
    """The export cannot be written (a missing optional package, a bad format)."""


def _parts(state: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


class OneStep(nn.Module):
    """A CharLM's one character step as a plain module: ``forward(token, h[, c])``.

    token (B,) int64; h (L, B, H); c (L, B, H) for the LSTM. Returns logits (B, V) and the new
    state, h_n (L, B, H) [and c_n]. No dropout (evaluation), no autograd needed, no C++ engine.
    """

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        if model.rnn.bidirectional:
            raise ExportError("export: a bidirectional model has no one-step function")
        self.model = model
        self.cell = model.rnn.cell
        self.lstm = cell_class(self.cell).has_cell_state  # state (h, c)

    def forward(self, token: Tensor, h: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
        rnn = self.model.rnn
        x = self.model.embedding(token)  # (B, E)
        hs, cs = [], []
        for k in range(rnn.num_layers):
            state = (h[k], c[k]) if self.lstm else h[k]
            new, _ = cell_step(self.cell, x, state, rnn.layer_params(k), rnn.nonlinearity)
            if rnn.zoned:  # zoneout at eval: the expectation (Krueger et al. 2016)
                parts = zoneout_expectation(_parts(new), _parts(state), rnn.zoneout_rates)
                new = parts if self.lstm else parts[0]
            state = new
            x = state[0] if self.lstm else state  # (B, H): the next layer's input
            hs.append(x)
            if self.lstm:
                cs.append(state[1])
        logits = self.model.head(x)  # (B, V)
        if self.lstm:
            return logits, torch.stack(hs), torch.stack(cs)
        return logits, torch.stack(hs)

    def example_inputs(self, batch: int = 2) -> tuple[Tensor, ...]:
        rnn = self.model.rnn
        h = torch.zeros(rnn.num_layers, batch, rnn.hidden_size)
        token = torch.zeros(batch, dtype=torch.long)
        return (token, h, torch.zeros_like(h)) if self.lstm else (token, h)

    def names(self) -> tuple[list[str], list[str]]:
        """Input and output names, in order."""
        if self.lstm:
            return ["token", "h", "c"], ["logits", "h_n", "c_n"]
        return ["token", "h"], ["logits", "h_n"]


@dataclass(frozen=True)
class Exported:
    """What ``export_model`` wrote: the model file, the vocabulary and the description."""

    model: Path
    vocab: Path
    description: Path


def export_model(
    model: CharLM,
    vocab,  # noqa: ANN001
    out_dir: PathLike,
    fmt: str = "onnx",
    *,
    root: PathLike | None = None,
) -> Exported:
    """Write ``model``'s one-step function in format ``fmt`` (``onnx`` or ``torch``) with
    ``vocab.json`` and ``export.json`` into ``out_dir`` (created), which stays inside ``root``
    (default: ``out_dir`` itself): every file goes through ``rnnlab.io.write_inside``, so a
    symbolic link below ``root`` is refused, never followed. Raises ExportError."""
    if fmt not in FORMATS:
        raise ExportError(f"format: expected one of {'|'.join(FORMATS)}, got {fmt!r}")
    step = OneStep(copy.deepcopy(model).float().cpu()).eval()  # the caller's stays as is
    inputs = step.example_inputs()
    in_names, out_names = step.names()
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"token": {0: batch}, "h": {1: batch}, **({"c": {1: batch}} if step.lstm else {})}
    base, rel = (Path(out_dir), Path()) if root is None else split_root(out_dir, root)
    mkdir_inside(base, rel)  # a link in the way is refused before the export's work
    out = base / rel
    path = out / FILENAMES[fmt]
    with torch.no_grad(), _quiet():
        if fmt == "onnx":
            data = _export_onnx(step, inputs, in_names, out_names, dynamic)
        else:
            program = torch.export.export(step, inputs, dynamic_shapes=dynamic)
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            data = buffer.getvalue()
    write_inside(base, rel / path.name, data)
    vocab_path = out / "vocab.json"
    write_inside(base, rel / vocab_path.name, json.dumps(vocab.to_json(), ensure_ascii=True) + "\n")
    rnn = model.rnn
    description = {
        "format": fmt,
        "file": path.name,
        "cell": rnn.cell,
        "nonlinearity": rnn.nonlinearity,
        "num_layers": rnn.num_layers,
        "hidden_size": rnn.hidden_size,
        "vocab_size": model.config.vocab_size,
        "inputs": {"token": "(B,) int64 token ids",
                   "h": "(L, B, H) float32 hidden state, zeros to start",
                   **({"c": "(L, B, H) float32 cell state, zeros to start"} if step.lstm else {})},
        "outputs": {"logits": "(B, V) float32 unnormalised log-probabilities of the next token",
                    "h_n": "(L, B, H) the new hidden state",
                    **({"c_n": "(L, B, H) the new cell state"} if step.lstm else {})},
        "order": {"inputs": in_names, "outputs": out_names},
    }  # fmt: skip
    description_path = out / "export.json"
    write_inside(base, rel / description_path.name, json.dumps(description, indent=2) + "\n")
    return Exported(path, vocab_path, description_path)


@contextlib.contextmanager
def _quiet():  # noqa: ANN202
    """torch's exporters print progress, log and warn about things irrelevant here (torchvision
    operators, axis renames): rnnlab keeps stdout for results and stderr for what matters."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_onnx(step: OneStep, inputs, in_names, out_names, dynamic) -> bytes:  # noqa: ANN001
    """The ONNX file's bytes: the exporter saves to a path, so it saves into a private temporary
    directory and ``export_model`` writes the bytes where they belong."""
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise ExportError(
            "export: the ONNX exporter needs the onnx and onnxscript packages; "
            "pip install 'rnnlab[export]'"
        ) from None
    program = torch.onnx.export(step, inputs, input_names=in_names, output_names=out_names,
                                dynamic_shapes=dynamic, dynamo=True, verbose=False)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="rnnlab-onnx-") as tmp:
        program.save(str(Path(tmp) / FILENAMES["onnx"]))
        return (Path(tmp) / FILENAMES["onnx"]).read_bytes()
