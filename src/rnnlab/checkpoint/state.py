"""Nested training state <-> (tensors, JSON tree): exact, typed, never pickled.

``flatten_state`` splits an optimizer state_dict, RNG states, a carried hidden state, ... into
tensors for safetensors and a JSON tree; ``unflatten_state`` rebuilds it bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or not in a format rnnlab reads."""


# ---------------------------------------------------------------------------------------------
# flatten_state / unflatten_state: nested Python state <-> (tensors, JSON tree)
#
# The tree is JSON in which every object is a tagged node with exactly one "$" key, so nothing
# is ambiguous: None, bool, int, str and finite float are JSON scalars; a list is a JSON array;
#   {"$float": "nan" | "inf" | "-inf"}          non-finite float
#   {"$tuple": [...]}                           tuple (random.getstate() needs real tuples)
#   {"$dict": {"k": node, ...}}                 dict whose keys are all str
#   {"$pairs": [[key, node], ...]}              dict with int keys (optimizer state), order kept
#   {"$tensor": "name"}                         torch.Tensor stored as tensors["name"]
#   {"$ndarray": {"tensor": "name", "dtype": "<u4"}}   numpy array, comes back as numpy array
#   {"$numpy": {"dtype": "int64", "value": node}}      numpy scalar, comes back as numpy scalar
# ---------------------------------------------------------------------------------------------


def flatten_state(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """Split nested state into safetensors-able tensors and a JSON-able tree.

    Accepts dict (str or int keys; subclasses such as OrderedDict come back as dict), list,
    tuple, None, bool, int, float (nan/inf included), str, torch.Tensor, numpy arrays and numpy
    scalars, nested arbitrarily: optimizer and scheduler state_dicts, ``torch.get_rng_state()``,
    ``random.getstate()``, ``np.random.get_state()``, ``Generator.bit_generator.state``, carried
    hidden states. ``unflatten_state(*flatten_state(x))`` equals ``x`` with the same types, key
    types, key order, tensor dtypes and shapes (0-dim included) and bit-identical values. Tensors
    come back as plain (non-Parameter) tensors; one tensor object reached twice comes back as one.
    Named tuples, sets, bytes and other types raise TypeError naming the path; so does saving a
    dtype safetensors lacks (complex128).
    """
    tensors: dict[str, Tensor] = {}
    names_by_id: dict[int, str] = {}

    def tensor_name(path: list[str]) -> str:
        base = ".".join(path) or "tensor"
        name, n = base, 1
        while name in tensors:  # e.g. keys 0 and "0" in one dict
            name, n = f"{base}~{n}", n + 1
        return name

    def walk(x: Any, path: list[str]) -> Any:
        if x is None or type(x) in (bool, str, int):
            return x
        if type(x) is float:
            return x if math.isfinite(x) else {"$float": repr(x)}
        if isinstance(x, np.generic):
            if x.dtype.kind not in "biuf" or x.dtype.itemsize > 8:
                raise TypeError(f"state at {_where(path)}: unsupported numpy scalar {x.dtype}")
            return {"$numpy": {"dtype": x.dtype.str, "value": walk(x.item(), path)}}
        if isinstance(x, Tensor):
            if id(x) not in names_by_id:
                names_by_id[id(x)] = tensor_name(path)
                tensors[names_by_id[id(x)]] = x
            return {"$tensor": names_by_id[id(x)]}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biufc":
                raise TypeError(f"state at {_where(path)}: unsupported numpy dtype {x.dtype}")
            name = tensor_name(path)
            native = x.astype(x.dtype.newbyteorder("="), copy=True)  # own, contiguous copy
            tensors[name] = torch.from_numpy(native)
            return {"$ndarray": {"tensor": name, "dtype": x.dtype.str}}
        if isinstance(x, dict):
            if all(type(k) is str for k in x):
                return {"$dict": {k: walk(v, [*path, k]) for k, v in x.items()}}
            for k in x:
                if type(k) not in (str, int):
                    raise TypeError(f"state at {_where(path)}: key {k!r} is not a str or int")
            return {"$pairs": [[k, walk(v, [*path, str(k)])] for k, v in x.items()]}
        if type(x) is list:
            return [walk(v, [*path, str(i)]) for i, v in enumerate(x)]
        if type(x) is tuple:
            return {"$tuple": [walk(v, [*path, str(i)]) for i, v in enumerate(x)]}
        raise TypeError(f"state at {_where(path)}: cannot store {type(x).__name__}")

    tree = walk(obj, [])
    return tensors, tree


def unflatten_state(tensors: dict[str, Tensor], tree: Any) -> Any:
    """Rebuild what :func:`flatten_state` split; raises CheckpointError on a malformed tree."""

    def tensor(name: Any, path: list[str]) -> Tensor:
        if type(name) is not str or name not in tensors:
            raise CheckpointError(f"state at {_where(path)}: no tensor named {name!r}")
        return tensors[name]

    def walk(x: Any, path: list[str]) -> Any:
        if x is None or type(x) in (bool, str, int, float):
            return x
        if type(x) is list:
            return [walk(v, [*path, str(i)]) for i, v in enumerate(x)]
        if type(x) is not dict or len(x) != 1:
            raise CheckpointError(f"state at {_where(path)}: malformed node {str(x)[:80]}")
        ((tag, v),) = x.items()
        if tag == "$float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag == "$tuple" and type(v) is list:
            return tuple(walk(e, [*path, str(i)]) for i, e in enumerate(v))
        if tag == "$dict" and type(v) is dict:
            return {k: walk(e, [*path, k]) for k, e in v.items()}
        if tag == "$pairs" and type(v) is list:
            if not all(type(p) is list and len(p) == 2 and type(p[0]) in (str, int) for p in v):
                raise CheckpointError(f"state at {_where(path)}: malformed $pairs")
            return {k: walk(e, [*path, str(k)]) for k, e in v}
        if tag == "$tensor":
            return tensor(v, path)  # the same object each time: shared tensors stay shared
        if tag == "$ndarray" and type(v) is dict and v.keys() == {"tensor", "dtype"}:
            t = tensor(v["tensor"], path).cpu()
            return t.numpy().astype(_np_dtype(v["dtype"], path), copy=True)
        if tag == "$numpy" and type(v) is dict and v.keys() == {"dtype", "value"}:
            return _np_dtype(v["dtype"], path).type(walk(v["value"], path))
        raise CheckpointError(f"state at {_where(path)}: unknown node {tag!r}")

    return walk(tree, [])


def _where(path: list[str]) -> str:
    return repr(".".join(path)) if path else "the top level"


def _np_dtype(s: Any, path: list[str]) -> np.dtype:
    try:
        dtype = np.dtype(s) if type(s) is str else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biufc":
        raise CheckpointError(f"state at {_where(path)}: bad numpy dtype {s!r}")
    return dtype
