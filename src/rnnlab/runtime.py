"""Device, threads, seeds and RNG state: the set-up every entry point shares, written once."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; otherwise the named device, checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {name!r} requested but no CUDA GPU is available; use --device cpu"
        )
    return device


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads (0 keeps torch's default)."""
    if threads < 0:
        raise ValueError(f"threads: expected 0 (default) or a positive integer, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, object]:
    """Every RNG the training loop may touch, as tensors and plain data (checkpointable)."""
    state: dict[str, object] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, object]) -> None:
    torch.set_rng_state(_as_byte_tensor(state["torch"]))
    version, internal, gauss = state["python"]  # type: ignore[misc]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_tuple(state["numpy"]))  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_as_byte_tensor(t) for t in state["cuda"]])  # type: ignore


def _numpy_state() -> dict[str, object]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "gauss": float(gauss),
    }


def _numpy_tuple(state: dict[str, object]) -> tuple:
    keys = state["keys"]
    keys = keys.numpy() if isinstance(keys, Tensor) else np.asarray(keys)
    return (state["name"], keys.astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"])


def _as_byte_tensor(t: object) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.uint8)
