"""Attacks on ``rnnlab vqa``: inputs a user may give by mistake get one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rnnlab.cli import main

pytestmark = pytest.mark.usefixtures("cache_env", "one_thread")

SMALL = ["--image-size", "16", "--cnn-blocks", "2", "--cnn-channels", "2", "--feature-size", "4",
         "--embedding-size", "4", "--hidden-size", "4", "--fusion-size", "4", "--mlp-size", "4",
         "--batch-size", "2", "--threads", "1", "--device", "cpu", "--no-progress",
         "--max-steps", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def soc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("soc")
    assert main(["vqa", "sort-of-clevr", str(root), "--num-train", "2", "--num-val", "1",
                 "--num-test", "1", "--questions-per-image", "1"]) == 0  # fmt: skip
    return root


def easy_vqa(folder: Path, soc: Path, rows: list[list[object]]) -> Path:
    """An easy-vqa folder: questions.json and images/0.png, 1.png (Sort-of-CLEVR scenes)."""
    (folder / "images").mkdir(parents=True)
    for i, png in enumerate(sorted((soc / "train" / "images").iterdir())[:2]):
        shutil.copy(png, folder / "images" / f"{i}.png")
    (folder / "questions.json").write_text(json.dumps(rows))
    return folder


def test_validation_answers_none_of_which_were_trained_on(
    soc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: trained, printing "val loss 0.0000 nats/question" (0 nats over 0 questions).
    train = easy_vqa(tmp_path / "train", soc, [["what color", "red", 0], ["what shape", "blue", 1]])
    val = easy_vqa(tmp_path / "val", soc, [["what color", "purple", 0]])
    capsys.readouterr()
    assert main(["vqa", "train", "--data", str(train), "--val-data", str(val), "--out-dir",
                 str(tmp_path / "run"), *SMALL]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val/questions.json: no validation question's answer" in err
    assert not (tmp_path / "run").exists()
    (val / "questions.json").write_text(json.dumps([["what color", "purple", 0],
                                                    ["what shape", "blue", 1]]))  # fmt: skip
    assert main(["vqa", "train", "--data", str(train), "--val-data", str(val), "--out-dir",
                 str(tmp_path / "run"), *SMALL]) == 0  # fmt: skip


def test_report_that_is_a_directory_is_refused_before_any_work(
    soc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: the answers printed, then "expected a file, found a directory" (the work thrown away).
    run = tmp_path / "run"
    assert main(["vqa", "train", "--data", str(soc / "train"), "--val-data", str(soc / "val"),
                 "--out-dir", str(run), *SMALL]) == 0  # fmt: skip
    image = next((soc / "test" / "images").iterdir())
    capsys.readouterr()
    assert main(["vqa", "predict", str(run), str(image), "what?", "--report", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--report: " in err and "a directory" in err


@pytest.mark.parametrize("kind", ["directory", "device", "link"])
def test_check_output_file(tmp_path: Path, kind: str) -> None:
    from rnnlab.cli.common import check_output_file

    check_output_file("--report", None)
    check_output_file("--report", tmp_path / "new.html")  # a new file is fine
    (tmp_path / "old.html").write_text("x")
    check_output_file("--report", tmp_path / "old.html")  # so is an existing one (replaced)
    path = {"directory": tmp_path, "device": Path("/dev/null"), "link": tmp_path / "l.html"}[kind]
    if kind == "link":
        path.symlink_to(tmp_path / "old.html")
    with pytest.raises(ValueError, match="--report: .*(directory|symbolic link)"):
        check_output_file("--report", path)


def test_sort_of_clevr_keeps_a_different_set_already_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: a smaller set written over the old one (questions replaced, stale images left), so
    # the runs trained on it no longer matched it; a file as OUT was an "[Errno 20]" line.
    out = tmp_path / "soc"
    argv = ["vqa", "sort-of-clevr", str(out), "--num-train", "3", "--num-val", "1",
            "--num-test", "0", "--questions-per-image", "1"]  # fmt: skip
    assert main(argv) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(argv) == 0  # the same command again writes the same files: allowed
    capsys.readouterr()
    assert main([*argv[:3], "--num-train", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a different data set is already there" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "file").write_text("x")
    assert main(["vqa", "sort-of-clevr", str(tmp_path / "file"), "--num-train", "1"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_caption_shapes_keeps_a_different_set_already_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The sibling of sort-of-clevr's case: was overwritten in place.
    argv = ["caption", "shapes", str(tmp_path), "--num-images", "4", "--num-val", "1",
            "--num-test", "1", "--image-size", "16"]  # fmt: skip
    assert main(argv) == 0
    before = (tmp_path / "captions.json").read_bytes()
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv[:3], "--num-images", "5", *argv[5:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a different data set is already there" in err
    assert (tmp_path / "captions.json").read_bytes() == before
    assert not (tmp_path / "images" / "00004.png").exists()


def test_validation_features_of_another_width(
    soc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was: training started, then "features: expected (B, 6) or (B, K, 6), got (2, 7)" at the
    # first evaluation, naming no file, with a run directory left behind.
    import numpy as np

    np.save(tmp_path / "train.npy", np.ones((2, 6), np.float32))
    np.save(tmp_path / "val.npy", np.ones((1, 7), np.float32))
    capsys.readouterr()
    argv = ["vqa", "train", "--data", str(soc / "train"), "--val-data", str(soc / "val"),
            "--features", str(tmp_path / "train.npy"), "--val-features",
            str(tmp_path / "val.npy"), "--out-dir", str(tmp_path / "run"), *SMALL]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val.npy: features of shape (N, 7)" in err
    assert not (tmp_path / "run").exists()
    # vqa eval on a features run: test features of another width name their file
    argv[argv.index(str(tmp_path / "val.npy"))] = str(tmp_path / "val6.npy")
    np.save(tmp_path / "val6.npy", np.ones((1, 6), np.float32))
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["vqa", "eval", str(tmp_path / "run"), "--data", str(soc / "val"), "--features",
                 str(tmp_path / "val.npy")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val.npy: expected features of width F=6, found 7" in err
