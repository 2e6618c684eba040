"""Fixtures shared by many test modules (each was pasted into several files before).

- ``cache_env``: ``RNNLAB_CACHE`` pointed at this test's ``tmp_path / "cache"`` (not created),
  so a test never reads or fills the user's corpus cache; returns that path. Subprocesses
  started with ``os.environ`` inherit it. A module that needs it for every test says
  ``pytestmark = pytest.mark.usefixtures("cache_env")``.
- ``one_thread``: torch runs on one intra-op thread for the test, then gets its count back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RNNLAB_CACHE", str(cache))
    return cache


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Two intra-op threads on a busy 2-core machine made one 4096-step native LSTM call take
    # seconds instead of milliseconds (spinning workers); tiny test models need one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
