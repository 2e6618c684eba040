"""``rnnlab.io``: atomic writes, and writes that stay inside the directory they were handed, with
real symbolic links and hard links in a temporary directory."""

from __future__ import annotations

import os

import h5py
import pytest

from rnnlab.io import (
    UnsafePathError,
    mkdir_inside,
    open_inside,
    split_root,
    write_atomic,
    write_inside,
)


@pytest.fixture
def victim(tmp_path):
    """A file outside the handed directory, and the handed directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("keep me")
    root = tmp_path / "run"
    root.mkdir()
    return root, outside, secret


def test_write_inside_writes_and_replaces(tmp_path):
    path = write_inside(tmp_path, "a/b/c.json", "one")
    assert path == tmp_path / "a/b/c.json" and path.read_text() == "one"
    write_inside(tmp_path, "a/b/c.json", b"two")
    assert path.read_text() == "two"
    assert sorted(os.listdir(tmp_path / "a/b")) == ["c.json"]  # no temporary left behind


def test_a_symlinked_directory_under_root_is_refused(victim):
    root, outside, secret = victim
    (root / "analysis").symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"analysis: is a symbolic link") as e:
        write_inside(root, "analysis/secret.txt", "overwritten")
    assert "\n" not in str(e.value)
    assert secret.read_text() == "keep me" and os.listdir(outside) == ["secret.txt"]
    with pytest.raises(UnsafePathError):
        mkdir_inside(root, "analysis/deeper")
    assert os.listdir(outside) == ["secret.txt"]


def test_a_symlinked_file_is_refused_and_left_alone(victim):
    root, _, secret = victim
    (root / "cells.json").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="cells.json: is a symbolic link"):
        write_inside(root, "cells.json", "overwritten")
    assert secret.read_text() == "keep me" and (root / "cells.json").is_symlink()
    (root / "dangling.json").symlink_to(root.parent / "outside" / "new.txt")
    with pytest.raises(UnsafePathError):
        write_inside(root, "dangling.json", "x")
    assert not (root.parent / "outside" / "new.txt").exists()


def test_a_hard_link_to_an_outside_file_is_replaced_not_written_through(victim):
    root, _, secret = victim
    os.link(secret, root / "cells.json")
    write_inside(root, "cells.json", "new")
    assert (root / "cells.json").read_text() == "new" and secret.read_text() == "keep me"


@pytest.mark.parametrize("relative", ["../secret.txt", "a/../../x", "/etc/passwd", "", "."])
def test_names_that_leave_root_are_refused(victim, relative):
    root, outside, _ = victim
    with pytest.raises(UnsafePathError):
        write_inside(root, relative, "x")
    assert os.listdir(outside) == ["secret.txt"]


def test_the_root_itself_may_be_a_link(victim):
    root, outside, _ = victim  # what the user named is theirs to choose, links and all
    link = root / "chosen"
    link.symlink_to(outside)
    write_inside(link, "new.txt", "ok")
    assert (outside / "new.txt").read_text() == "ok"


def test_a_file_in_the_way_of_a_directory_is_refused(tmp_path):
    (tmp_path / "analysis").write_text("a file")
    with pytest.raises(UnsafePathError, match="expected a directory"):
        write_inside(tmp_path, "analysis/cells.json", "x")
    (tmp_path / "d").mkdir()
    with pytest.raises(UnsafePathError, match="expected a file"):
        write_inside(tmp_path, "d", "x")


def test_open_inside_keeps_the_old_file_on_an_error(tmp_path):
    write_inside(tmp_path, "f.bin", b"old")
    with pytest.raises(RuntimeError), open_inside(tmp_path, "f.bin") as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert (tmp_path / "f.bin").read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_open_inside_serves_h5py(tmp_path):
    with open_inside(tmp_path, "x.hdf5") as f, h5py.File(f, "w") as h:
        h["a"] = [1, 2, 3]
    with h5py.File(tmp_path / "x.hdf5") as h:
        assert list(h["a"][:]) == [1, 2, 3]


def test_split_root(tmp_path):
    assert split_root(tmp_path / "a" / "b.png") == (tmp_path / "a", tmp_path.__class__("b.png"))
    assert split_root(tmp_path / "a" / "b.png", tmp_path)[1].as_posix() == "a/b.png"
    with pytest.raises(UnsafePathError, match="not inside"):
        split_root("/elsewhere/b.png", tmp_path)


def test_write_atomic_refuses_a_symlink_target(victim):
    root, _, secret = victim
    (root / "vocab.json").symlink_to(secret)
    with pytest.raises(UnsafePathError):
        write_atomic(root / "vocab.json", "{}")
    assert secret.read_text() == "keep me"
    write_atomic(root / "plain.json", "{}")
    assert (root / "plain.json").read_text() == "{}"
