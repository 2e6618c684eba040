"""Exports: the viewer's versioned JSON, and LSTMVis project directories (Strobelt et al. 2018,
"LSTMVis: A Tool for Visual Analysis of Hidden State Dynamics in Recurrent Neural Networks").

Viewer JSON (``format: "rnnlab.cells"``, ``version: 1``)::

    text        the window's characters (one string)
    units       every unit name ("L0.h.3", "L0.c.3", ...)
    activations {unit: [value per character]} for a chosen subset (the top units per feature)
    top         per character, the top-k [char, probability] predictions of the next character
    loss        per character, nats (null where nothing predicted it)
    features    {name: {description, binary, top: [{unit, corr, fit_corr, accuracy}]}}
    untracked   units whose |held-out correlation| with every feature is small
    constant    features that never vary in this text (not scored)
    saturation  per layer and sigmoid gate, per unit fractions left/right-saturated

LSTMVis project (its README's "Adding Your Own Data"): ``states.hdf5`` with one (N, H) dataset per
layer and kind (``states1``.. for the LSTM cell state c, ``output1``.. for h; for other cells h is
the state), ``train.hdf5`` with the (N,) token ids under ``words``, ``words.dict`` with one
``token id`` pair per line (whitespace-free token names: LSTMVis splits on whitespace), and
``lstm.yml``, written in YAML's JSON-compatible flow style, which every YAML parser reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.analysis.analyze import Analysis
from rnnlab.analysis.trace import iter_trace
from rnnlab.io import PathLike, open_inside, split_root, write_inside
from rnnlab.models import CharLM

FORMAT, VERSION = "rnnlab.cells", 1


def select_units(analysis: Analysis, max_units: int = 48) -> list[str]:
    """The units worth embedding: each feature's top units in rank order, then untracked ones."""
    chosen: list[str] = []
    for rep in analysis.cells.features.values():
        for s in rep.top:
            if s.unit not in chosen:
                chosen.append(s.unit)
    for u in analysis.cells.untracked[:4]:
        if u not in chosen:
            chosen.append(u)
    return chosen[:max_units]


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def viewer_payload(
    analysis: Analysis,
    tokens: Sequence[str],
    model_info: dict[str, Any],
    units: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The viewer's JSON (module docstring) for an ``Analysis`` and the vocabulary ``tokens``."""
    w = analysis.window
    units = list(units) if units is not None else select_units(analysis)
    index = {u: i for i, u in enumerate(w.units)}
    unknown = [u for u in units if u not in index]
    if unknown:
        raise ValueError(f"units: not in the model: {unknown[:5]}")
    text = "".join(tokens[i] for i in w.ids)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model_info,
        "text": text,
        "offset": w.start,
        "units": w.units,
        "activations": {u: unit_values(w.activations[:, index[u]]) for u in units},
        "top": [
            [[tokens[int(i)], round(float(p), 4)] for i, p in zip(ids, ps, strict=True)]
            for ids, ps in zip(w.top_ids, w.top_probs, strict=True)
        ],
        "loss": [_finite(x) for x in w.loss],
        "features": {
            name: {
                "binary": rep.binary,
                "positive_rate": _finite(rep.positive_rate),
                "majority_accuracy": _finite(rep.majority_accuracy),
                "top": [
                    {
                        "unit": s.unit,
                        "corr": _finite(s.corr),
                        "fit_corr": _finite(s.fit_corr),
                        "accuracy": _finite(s.accuracy),
                    }
                    for s in rep.top
                ],
            }
            for name, rep in analysis.cells.features.items()
        },
        "untracked": analysis.cells.untracked,
        "constant": analysis.cells.constant,
        "saturation": analysis.saturation.to_dict(),
        "chars": analysis.cells.chars,
    }


def unit_values(column: np.ndarray) -> list[float]:
    """One unit's activations as a JSON list, 3 decimals."""
    return np.round(column.astype(np.float32), 3).tolist()


def write_json(payload: dict[str, Any], path: PathLike, *, root: PathLike | None = None) -> Path:
    """Write ``payload`` as strict JSON to ``path``, which stays inside ``root`` (default: its own
    directory; see ``rnnlab.io.write_inside``: no symbolic link below ``root`` is followed)."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    return write_inside(*split_root(path, root), text)


def dict_token(token: str) -> str:
    """A whitespace-free name for a token in LSTMVis's ``words.dict``: printable non-space
    characters stand for themselves, others are ``U+XXXX``."""
    if token.isprintable() and not token.isspace() and token:
        return token
    return f"U+{ord(token):04X}"


def export_lstmvis(
    model: CharLM,
    ids: np.ndarray,
    tokens: Sequence[str],
    out_dir: str | Path,
    name: str = "rnnlab",
    chunk_len: int = 1024,
    *,
    root: PathLike | None = None,
) -> Path:
    """Write an LSTMVis project for the trace of ``ids`` (N,) into ``out_dir``, which stays
    inside ``root`` (default: ``out_dir`` itself; no symbolic link below it is followed); streams
    the trace chunk by chunk into resizable HDF5 datasets, so N is bounded by disk, not memory."""
    import h5py

    base, rel = (Path(out_dir), Path()) if root is None else split_root(out_dir, root)
    names = [dict_token(t) for t in tokens]
    if len(set(names)) != len(names):
        raise ValueError("tokens: two tokens map to the same LSTMVis dictionary name")
    types: list[dict[str, Any]] = []
    with (
        open_inside(base, rel / "states.hdf5") as states_file,
        open_inside(base, rel / "train.hdf5") as train_file,
        h5py.File(states_file, "w") as states,
        h5py.File(train_file, "w") as tr,
    ):
        words = tr.create_dataset("words", (0,), maxshape=(None,), dtype="int64", chunks=True)
        sets: dict[str, Any] = {}
        for chunk in iter_trace(model, ids, chunk_len, top_k=1):
            n0, T = words.shape[0], len(chunk.ids)
            words.resize((n0 + T,))
            words[n0:] = chunk.ids
            for key, value in chunk.values.items():
                layer, kind = key.split(".")
                if kind not in ("h", "c"):
                    continue
                k = int(layer[1:]) + 1  # LSTMVis counts layers from 1
                is_lstm_h = kind == "h" and "L0.c" in chunk.values
                path = f"output{k}" if is_lstm_h else f"states{k}"
                if path not in sets:
                    H = value.shape[1]
                    sets[path] = states.create_dataset(
                        path, (0, H), maxshape=(None, H), dtype="float32", chunks=True
                    )
                    entry: dict[str, Any] = {
                        "type": "output" if is_lstm_h else "state",
                        "layer": k,
                        "path": path,
                    }
                    if kind == "h":
                        entry["transform"] = "none"  # h is in [-1, 1] already; c gets tanh
                    types.append(entry)
                sets[path].resize((n0 + T, value.shape[1]))
                sets[path][n0:] = value
    write_inside(base, rel / "words.dict", "".join(f"{n} {i}\n" for i, n in enumerate(names)))
    config = {
        "name": name,
        "description": f"rnnlab char-LM states ({model.rnn.cell}, {model.rnn.num_layers} layers)",
        "files": {"states": "states.hdf5", "train": "train.hdf5", "words": "words.dict"},
        "word_sequence": {"file": "train", "path": "words", "dict_file": "words"},
        "states": {"file": "states", "types": sorted(types, key=lambda t: (t["layer"], t["path"]))},
    }
    write_inside(base, rel / "lstm.yml", json.dumps(config, indent=2) + "\n")
    return base / rel
