"""The C++ engine's build: an OS lock that dies with its process, a bounded and announced wait,
and a cache key that covers the toolchain. The compiler is replaced through the ``_compile`` seam
and the cache points at scratch, so no real build runs here."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from rnnlab.kernels import extension


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.delenv("RNNLAB_NO_EXTENSION", raising=False)
    monkeypatch.setattr(extension, "_status", None)
    monkeypatch.setattr(extension, "_module", None)
    calls = []

    def fake_compile(name, build_directory, flags):
        calls.append(name)
        assert not (build_directory / "lock").exists()  # a killed build's torch lock is gone
        return types.ModuleType(name)

    monkeypatch.setattr(extension, "_compile", fake_compile)
    return tmp_path / "kernels", calls


def lock_path():
    name = extension._build_name(extension.compiler_flags())
    return extension.cache_directory() / f"{name}.lock", extension.cache_directory() / name


SLOW_BUILD = """
import sys, time
from rnnlab.kernels import extension
def slow(name, build_directory, flags):
    (build_directory / "lock").write_text("")  # what torch's own baton leaves behind
    print("building", flush=True)
    time.sleep(60)
extension._compile = slow
extension.load_extension()
"""


@pytest.mark.slow
def test_sigkill_during_a_build_never_blocks_the_next_command(scratch):
    """Killed at random moments (before the lock, holding it, mid-'compile'), the next build
    starts at once: the flock died with its process; torch's stale lock file is cleared."""
    _, calls = scratch
    rng = random.Random(8)
    for trial in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD], env=os.environ.copy(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        if trial % 2:
            assert proc.stdout.readline().strip() == b"building"  # surely mid-build
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        extension._status = extension._module = None
        start = time.perf_counter()
        assert extension.load_extension() is not None
        assert time.perf_counter() - start < 10
    assert len(calls) == 6


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_waiting_process_says_what_it_waits_for_and_gives_up(scratch, monkeypatch, capsys):
    import warnings

    lock, build_directory = lock_path()
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        monkeypatch.setenv("RNNLAB_BUILD_WAIT", "1")
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert extension.load_extension() is None
        assert 1 <= time.perf_counter() - start < 5
        notes = [str(w.message) for w in caught if w.category is extension.BuildNotice]
        failed = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert len(notes) == 1 and "waiting for another process building the C++ engine" in notes[0]
        assert len(failed) == 1 and "gave up after 1 s" in failed[0]
        assert capsys.readouterr() == ("", "")  # the library never prints
        assert "gave up after 1 s" in extension.extension_status().reason
    finally:
        holder.kill()
        holder.wait()


def test_the_wait_bound_is_documented_and_read_from_the_environment(monkeypatch):
    assert "RNNLAB_BUILD_WAIT" in extension.__doc__ and "600" in extension.__doc__
    monkeypatch.setenv("RNNLAB_BUILD_WAIT", "7")
    assert extension.build_wait_seconds() == 7.0
    monkeypatch.delenv("RNNLAB_BUILD_WAIT")
    assert extension.build_wait_seconds() == 600.0


def test_the_cache_key_covers_ninja_and_the_compiler(tmp_path, monkeypatch):
    flags = extension.compiler_flags()
    base = extension._build_name(flags)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ninja").write_text("#!/bin/sh\necho 1.99.0\n")
    (fake / "ninja").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    other_ninja = extension._build_name(flags)
    assert other_ninja != base
    monkeypatch.setenv("CXX", str(fake / "ninja"))  # any other compiler binary
    assert extension._build_name(flags) not in (base, other_ninja)


def test_a_venv_symlink_and_its_interpreter_share_one_build(tmp_path, monkeypatch):
    flags = extension.compiler_flags()
    base = extension._build_name(flags)
    link = tmp_path / "python"
    link.symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setattr(sys, "executable", str(link))
    assert extension._build_name(flags) == base


def test_make_setup_builds_the_engine():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "setup: $(STAMP) engine" in makefile
    assert "from rnnlab.kernels.extension import build; build()" in makefile
    assert "test: lint engine" in makefile and "demo: setup" in makefile


def test_the_compile_command_does_not_depend_on_where_the_checkout_is(tmp_path, monkeypatch):
    """Two checkouts (or an installed and an editable copy) of the same source share one build:
    the compiler reads a copy of the source inside the build directory, never the checkout's
    path, so ninja sees the same command from both and neither rebuilds the other's build."""
    from torch.utils import cpp_extension

    seen = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.append(kw["sources"]))
    for checkout in ("a", "b"):
        here = tmp_path / checkout
        here.mkdir()
        for source in extension.SOURCES:
            (here / source).write_bytes((extension._HERE / source).read_bytes())
        monkeypatch.setattr(extension, "_HERE", here)
        build = tmp_path / "build"
        build.mkdir(exist_ok=True)
        extension._compile("rnnlab_fused_test", build, [])
    assert seen[0] == seen[1] == [str(tmp_path / "build" / s) for s in extension.SOURCES]
    assert (tmp_path / "build" / extension.SOURCES[0]).read_bytes() == (
        tmp_path / "a" / extension.SOURCES[0]
    ).read_bytes()


def test_a_real_build_is_announced_before_it_starts(scratch, monkeypatch, capsys):
    """A pip-installed rnnlab compiles on its first command: a note says what, why, how long and
    how to build ahead, before the compiler runs; a cached build is loaded without a word."""
    import warnings

    cache, calls = scratch
    order = []

    def compile_(name, build_directory, flags):
        order.append("compile")
        (build_directory / f"{name}.so").write_bytes(b"")
        return types.ModuleType(name)

    monkeypatch.setattr(extension, "_compile", compile_)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, *a, **k: order.append(str(m))
        assert extension.load_extension() is not None
        note = order[0]
        assert order[1:] == ["compile"]
        for words in ("C++ engine", "first use", "30-60 s", "rnnlab doctor --build", str(cache)):
            assert words in note, words
        order.clear()
        monkeypatch.setattr(extension, "_status", None)
        monkeypatch.setattr(extension, "_module", None)
        assert extension.load_extension() is not None
        assert order == ["compile"]  # ninja's up-to-date check: no note
    assert capsys.readouterr() == ("", "")


def test_doctor_build_builds_ahead_with_a_note(scratch, monkeypatch, capsys):
    from rnnlab.cli import main

    cache, calls = scratch
    assert main(["doctor", "--no-build"]) == 0
    assert "rnnlab doctor --build" in capsys.readouterr().out
    assert main(["doctor", "--build"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("C++ engine: built and loaded") and str(cache) in out and calls
    notes = err.splitlines()
    assert len(notes) == 1 and notes[0].startswith("rnnlab: note: building rnnlab's C++ engine")

    def broken(name, build_directory, flags):
        raise RuntimeError("recurrence.cpp:3:1: error: expected ';'")

    monkeypatch.setattr(extension, "_compile", broken)
    monkeypatch.setattr(extension, "_status", None)
    assert main(["doctor", "--build"]) == 1
    out, err = capsys.readouterr()
    assert "NOT built" in out and "rnnlab: error: the C++ engine could not be built" in err
    assert "Traceback" not in err
