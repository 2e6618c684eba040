"""Building and loading the C++ fused-recurrence extension (JIT-compiled once, cached).

The extension is compiled from ``recurrence.cpp`` beside this file by
``torch.utils.cpp_extension.load`` on first use, into ``$RNNLAB_KERNEL_CACHE`` (default
``~/.cache/rnnlab/kernels``), under a name that hashes the source, the compiler flags and the torch
version, so an edit or an upgrade rebuilds and nothing stale is ever loaded. It is deliberately not
under ``$RNNLAB_CACHE`` (the corpus cache): runs and tests point that at scratch directories, and
each would pay a fresh 30-60 s compile. A failed build is never silent:
it warns once, naming the compiler's first error, and ``extension_status()`` keeps the reason.
``RNNLAB_NO_EXTENSION=1`` skips the build (the fused backend then falls back to reference).

One build at a time, and never a stale lock: a build holds an exclusive ``flock`` on
``<build dir>.lock``, which the kernel releases when the process ends however it ends (kill -9,
an out-of-memory kill, a closed terminal), unlike torch's own lock *file*, which outlives a killed
build and makes every later command wait forever. A process that finds the lock held says what
it waits for on stderr ("building the C++ engine, first use, about a minute") and gives up after
``RNNLAB_BUILD_WAIT`` seconds (default 600) with an error; the engine then falls back to the
reference loop. A killed build's leftovers (torch's ``lock`` file, half-written objects) are
removed by the next build, which holds our lock. The cache key covers everything that changes
the build command: the source, the flags, torch, the Python interpreter, the compiler and ninja.
``make setup`` builds the engine (``rnnlab.kernels.extension.build()``), so a user's first
command does not; ``pip install`` cannot (the build depends on the machine's compiler and the
torch found at run time), so there ``rnnlab doctor --build`` builds ahead.

Every message to the user is a ``BuildNotice`` warning, never a print: the CLI shows warnings
as one ``rnnlab: note:`` line, a library user sees or filters them as any warning. A real
compile (no finished build in the cache) is announced before it starts: what, why, about how
long, and how to build ahead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
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


def toolchain() -> list[str]:
    """What besides the source and flags changes the build: the interpreter, the compiler
    (``$CXX`` or c++) and ninja, by path and version. Two of them (a venv's ninja and the
    system's) would otherwise alternate, each rebuilding the other's build."""
    # The real interpreter (a venv's python is a symlink to it: `.venv/bin/rnnlab` and
    # `.venv/bin/python -m rnnlab` must share one build), and where torch's headers come from.
    parts = [os.path.realpath(sys.executable), sys.version, torch.__version__, torch.__file__]
    for tool in (os.environ.get("CXX") or "c++", "ninja"):
        path = shutil.which(tool) or tool
        try:
            done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
            version = (
                (done.stdout or done.stderr).splitlines()[0] if done.stdout or done.stderr else ""
            )
        except (OSError, subprocess.SubprocessError):
            version = "missing"
        parts += [os.path.realpath(path), version]
    return parts


def _build_name(flags: list[str]) -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update((_HERE / source).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update("\0".join(toolchain()).encode())
    return f"rnnlab_fused_{digest.hexdigest()[:12]}"


def build_wait_seconds() -> float:
    """How long a process waits for another one's build: ``$RNNLAB_BUILD_WAIT`` (default 600)."""
    try:
        return max(0.0, float(os.environ.get("RNNLAB_BUILD_WAIT", "600")))
    except ValueError:
        return 600.0


class BuildNotice(UserWarning):
    """What the engine's build is doing and why a command waits (the CLI shows it as a note)."""


def _notice(message: str) -> None:
    warnings.warn(message, BuildNotice, stacklevel=4)


def build_notice(build_directory: Path) -> str:
    """The note shown before a real compile: what, why, how long, how to build ahead."""
    return (
        "building rnnlab's C++ engine (the fused recurrence kernels): no build for this source, "
        "torch and compiler is cached yet (first use after installing or upgrading); about "
        f"30-60 s, once, into {build_directory}. To build ahead: rnnlab doctor --build "
        "(RNNLAB_NO_EXTENSION=1 skips the engine)"
    )


class BuildLockTimeout(RuntimeError):
    """Another process held the build lock for longer than ``RNNLAB_BUILD_WAIT``."""


def _locked_build(name: str, build_directory: Path, flags: list[str]) -> ModuleType:
    """``_compile`` under an exclusive flock on ``<build_directory>.lock``: waits (saying so)
    while another process builds, up to ``build_wait_seconds()``."""
    lock_path = build_directory.with_name(build_directory.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, told = time.monotonic() + build_wait_seconds(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A finished build is only being loaded (checked by ninja) by the other process,
                # e.g. another torchrun rank: wait without a message about a first-use build.
                if not told and not any(build_directory.glob("*.so")):
                    _notice(
                        "waiting for another process building the C++ engine (first use, about "
                        f"a minute; lock {lock_path})"
                    )
                    told = True
                if time.monotonic() > deadline:
                    raise BuildLockTimeout(
                        f"gave up after {build_wait_seconds():.0f} s waiting for another "
                        f"process's build (RNNLAB_BUILD_WAIT; lock {lock_path})"
                    ) from None
                time.sleep(0.2)
        # We hold the lock: no build is running, so torch's lock file is a killed build's.
        (build_directory / "lock").unlink(missing_ok=True)
        if not any(build_directory.glob("*.so")):  # a real compile, not ninja's up-to-date check
            _notice(build_notice(build_directory))
        return _compile(name, build_directory, flags)
    finally:
        os.close(fd)  # releases the flock


def _compile(name: str, build_directory: Path, flags: list[str]) -> ModuleType:
    """The one call into the compiler (tests replace it to exercise the failure path).

    It compiles a copy of the sources placed in the build directory: the build name already
    hashes their content, and a path into the checkout would make the compile command differ
    between two checkouts (or an installed and an editable copy) of the same source, so each
    would rebuild the other's build forever."""
    from torch.utils import cpp_extension

    sources = []
    for source in SOURCES:
        copy = build_directory / source
        data = (_HERE / source).read_bytes()
        if not copy.exists() or copy.read_bytes() != data:  # keep the mtime: ninja rebuilds on it
            copy.write_bytes(data)
        sources.append(str(copy))
    return cpp_extension.load(
        name=name,
        sources=sources,
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
        _module = _locked_build(name, build_directory, flags)
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


def is_built() -> bool:
    """Whether a finished build for this source and toolchain is in the cache (no building)."""
    directory = cache_directory() / _build_name(compiler_flags())
    return any(directory.glob("*.so"))


def build() -> int:
    """``make setup``/``make engine``: build once, so a user's first command does not. A failed
    build is reported, not fatal: the fused backend then falls back to the reference loop."""
    status = extension_status()
    print(f"rnnlab C++ engine: {'built' if status.available else 'NOT built: ' + status.reason}")
    print(f"  {status.build_directory}")
    return 0
