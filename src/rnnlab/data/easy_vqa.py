"""The easy-vqa data set (Zhou 2020, MIT licence): found where the ``easy-vqa`` package is
installed, or read from its wheel, fetched with ``pip download --no-deps`` and checked by sha256.

The wheel ``easy_vqa-1.0-py3-none-any.whl`` ships the data inside the package::

    easy_vqa/data/answers.txt                      the 13 answers, one per line
    easy_vqa/data/train/questions.json             38,575 questions about 4,000 images
    easy_vqa/data/train/images/<id>.png            64x64 RGB
    easy_vqa/data/test/questions.json              9,673 questions about 1,000 images
    easy_vqa/data/test/images/<id>.png

An installed package is located without importing it. Otherwise the wheel in the cache (or the
one given) is checked against ``WHEEL_SHA256`` and its ``easy_vqa/data/`` members are extracted
into ``<cache>/data``; members with any other path are never written. The folders read by
``rnnlab.data.vqa.read_easy_vqa`` are ``<root>/train`` and ``<root>/test``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from rnnlab.data.corpus import cache_root
from rnnlab.data.errors import DataError
from rnnlab.data.fetch import pip_download
from rnnlab.data.text import sha256_file

REQUIREMENT = "easy-vqa==1.0"
WHEEL_NAME = "easy_vqa-1.0-py3-none-any.whl"
WHEEL_SHA256 = "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f"
PREFIX = "easy_vqa/data/"
_DONE = ".extracted"  # written last, holding the wheel's sha256


def easy_vqa_root(cache_dir: str | os.PathLike[str] | None = None,
                  wheel: str | os.PathLike[str] | None = None) -> Path:  # fmt: skip
    """The easy-vqa data folder (holding ``train/`` and ``test/``): an installed package's, else
    the wheel's (``wheel``, or the cached one, fetched if missing), extracted into
    ``cache_dir`` (default ``cache_root()/easy-vqa``). Raises DataError naming the file when the
    wheel's sha256 or contents are not the expected ones, or pip fails."""
    if wheel is None:
        spec = importlib.util.find_spec("easy_vqa")
        if spec is not None and spec.submodule_search_locations:
            installed = Path(next(iter(spec.submodule_search_locations))) / "data"
            if (installed / "train" / "questions.json").is_file():
                return installed
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "easy-vqa"
    root = cache / "data"
    if (root / _DONE).is_file() and (root / _DONE).read_text().strip() == WHEEL_SHA256:
        return root
    cache.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        wheel = cache / WHEEL_NAME
        if not (wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256):
            pip_download(
                REQUIREMENT,
                WHEEL_NAME,
                cache,
                sha256=WHEEL_SHA256,
                hint=f"or pass the path of a copied {WHEEL_NAME} with --wheel",
            )
    wheel = Path(wheel)
    if not wheel.is_file():
        raise DataError(f"{wheel}: no such file; pass the path of {WHEEL_NAME}")
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        raise DataError(f"{wheel}: sha256 {got} is not {WHEEL_SHA256} (easy-vqa 1.0's wheel); "
                        "delete it or pass the right file")  # fmt: skip
    _extract(wheel, root)
    return root


def _extract(wheel: Path, root: Path) -> None:
    """Members under ``easy_vqa/data/`` into a fresh folder, moved to ``root`` when complete."""
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".tmp-"))
    try:
        with zipfile.ZipFile(wheel) as z:
            for member in z.infolist():
                name = PurePosixPath(member.filename)
                if not member.filename.startswith(PREFIX) or member.is_dir():
                    continue
                parts = name.parts[2:]  # below easy_vqa/data
                if not parts or ".." in parts or any(p.startswith(".") for p in parts):
                    continue  # .DS_Store and anything that would leave the folder
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not (tmp / "train" / "questions.json").is_file():
            raise DataError(f"{wheel}: holds no {PREFIX}train/questions.json")
        (tmp / _DONE).write_text(WHEEL_SHA256 + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel}: not a wheel ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
