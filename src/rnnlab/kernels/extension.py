"""Building and loading the C++ fused-recurrence extension (JIT-compiled once, cached).

The extension is compiled from ``recurrence.cpp`` beside this file by
``torch.utils.cpp_extension.load`` on first use, into ``$RNNLAB_KERNEL_CACHE`` (default
``~/.cache/rnnlab/kernels``), under a name that hashes the source, the compiler flags and the torch
version, so an edit or an upgrade rebuilds and nothing stale is ever loaded. It is deliberately not
under ``$RNNLAB_CACHE`` (the corpus cache): runs and tests point that at scratch directories, and
each would pay a fresh 30-60 s compile. A failed build is never silent:
it warns once, naming the compiler's first error, and ``extension_status()`` keeps the reason.
``RNNLAB_NO_EXTENSION=1`` skips the build (the fused backend then falls back to reference).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

SOURCES = ("recurrence.cpp",)
_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ExtensionStatus:
    """Whether the C++ engine loaded; ``reason`` says why not (empty when it did)."""

    available: bool
    reason: str
    build_directory: str


_module: ModuleType | None = None
_status: ExtensionStatus | None = None


def cache_directory() -> Path:
    """Where builds live: ``$RNNLAB_KERNEL_CACHE`` or ``~/.cache/rnnlab/kernels``."""
    default = Path("~/.cache/rnnlab/kernels").expanduser()
    return Path(os.environ.get("RNNLAB_KERNEL_CACHE") or default)


def compiler_flags() -> list[str]:
    """-O3, OpenMP, and AVX2/FMA where this CPU has them. The gate loops only vectorise if g++ may
    if-convert float selects: -fno-trapping-math -fno-math-errno (as torch itself is built; unlike
    -ffast-math they change no result)."""
    flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def _build_name(flags: list[str]) -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update((_HERE / source).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(torch.__version__.encode())
    return f"rnnlab_fused_{digest.hexdigest()[:12]}"


def _compile(name: str, build_directory: Path, flags: list[str]) -> ModuleType:
    """The one call into the compiler (tests replace it to exercise the failure path)."""
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=name,
        sources=[str(_HERE / s) for s in SOURCES],
        build_directory=str(build_directory),
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def load_extension() -> ModuleType | None:
    """The compiled module, building it on first call; None (after one warning) if it cannot be."""
    global _module, _status
    if _status is not None:
        return _module
    flags = compiler_flags()
    name = _build_name(flags)
    build_directory = cache_directory() / name
    if os.environ.get("RNNLAB_NO_EXTENSION", "") not in ("", "0"):
        _status = ExtensionStatus(False, "disabled by RNNLAB_NO_EXTENSION", str(build_directory))
        return None
    try:
        build_directory.mkdir(parents=True, exist_ok=True)
        _module = _compile(name, build_directory, flags)
        _status = ExtensionStatus(True, "", str(build_directory))
    except Exception as error:  # any failure (no compiler, compile error, bad cache) -> reference
        _status = ExtensionStatus(False, summarize_build_error(error), str(build_directory))
        warnings.warn(
            f"rnnlab: the fused C++ extension could not be built: {_status.reason}. "
            f"The 'fused' backend falls back to 'reference' (correct, but slow). "
            f"Build directory: {build_directory}",
            RuntimeWarning,
            stacklevel=2,
        )
    return _module


def extension_status() -> ExtensionStatus:
    """Build (if not yet tried) and report whether the fused engine is available, and why not."""
    load_extension()
    assert _status is not None
    return _status


_COMPILER_ERROR = re.compile(r"^(\S+\.(?:cpp|h|hpp|cc)):(\d+):(\d+): (?:fatal )?error: (.*)$", re.M)


def summarize_build_error(error: BaseException) -> str:
    """The first compiler error as ``file:line:col: message``, else the exception's last line."""
    text = str(error)
    match = _COMPILER_ERROR.search(text)
    if match:
        path, line, col, message = match.groups()
        return f"{os.path.basename(path)}:{line}:{col}: error: {message.strip()}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return f"{type(error).__name__}: {last[:300]}"
