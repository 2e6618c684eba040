"""``rnnlab caption shapes|train|eval|predict``: the happy path end to end, and every user error
as one line naming the file, with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rnnlab.cli import main

TINY = [
    "--image-size",
    "16",
    "--cnn-blocks",
    "2",
    "--cnn-channels",
    "4",
    "--feature-size",
    "16",
    "--embedding-size",
    "8",
    "--hidden-size",
    "16",
    "--batch-size",
    "4",
    "--threads",
    "1",
    "--eval-every",
    "2",
    "--log-every",
    "1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert (
        main(
            [
                "caption",
                "shapes",
                str(root / "data"),
                "--num-images",
                "20",
                "--num-val",
                "4",
                "--num-test",
                "4",
                "--image-size",
                "16",
            ]
        )
        == 0
    )
    data = root / "data" / "captions.json"
    run = root / "run"
    assert (
        main(
            [
                "caption",
                "train",
                "--data",
                str(data),
                "--out-dir",
                str(run),
                "--max-steps",
                "4",
                *TINY,
            ]
        )
        == 0
    )
    return data, run


def test_train_eval_predict(trained, capsys, tmp_path):
    data, run = trained
    capsys.readouterr()
    assert (
        main(
            [
                "caption",
                "eval",
                str(run),
                "--beam",
                "2",
                "--baselines",
                "--report",
                str(tmp_path / "r.html"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test split, 4 images" in out and "most frequent caption" in out
    assert "nearest neighbour" in out and "CIDEr-D" in out
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    images = sorted((data.parent / "images").glob("*.png"))[:3]
    assert main(["caption", "predict", str(run), *map(str, images)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(map(str, images))
    assert main(["caption", "predict", str(run), str(images[0]), "--temperature", "0.8"]) == 0


def test_resume_extends_and_refuses_other_flags(trained, capsys):
    data, run = trained
    assert main(["caption", "train", "--resume", str(run), "--max-steps", "5"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert main(["caption", "train", "--resume", str(run), "--hidden-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "hidden_size: expected" in err and "cannot change on resume" in err


def one_line_error(capsys, argv, *fragments, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_user_errors_name_the_file(trained, capsys, tmp_path):
    data, run = trained
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"images": [{"filename": "a.png", "split": "train"}]}')
    one_line_error(
        capsys, ["caption", "train", "--data", str(bad_json)], str(bad_json), "images[0].sentences"
    )
    entries = json.loads(data.read_text())
    entries["images"][3]["filename"] = "missing.png"
    moved = tmp_path / "captions.json"
    moved.write_text(json.dumps(entries))
    one_line_error(
        capsys,
        ["caption", "train", "--data", str(moved), "--images", str(data.parent)],
        "missing.png: no such image file",
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    one_line_error(
        capsys, ["caption", "predict", str(run), str(broken)], str(broken), "cannot read the image"
    )
    one_line_error(
        capsys,
        ["caption", "predict", str(run), str(tmp_path / "gone.jpg")],
        "gone.jpg: no such image file",
    )
    one_line_error(capsys, ["caption", "eval", str(tmp_path / "norun")], "norun")
    one_line_error(
        capsys,
        ["caption", "predict", str(run), "x.png", "--beam", "2", "--temperature", "1"],
        "--beam and --temperature",
    )
    one_line_error(capsys, ["caption", "train"], "--data")
    one_line_error(
        capsys,
        ["caption", "train", "--data", str(data), "--image-size", "30"],
        "image_size: expected a multiple of 4",
    )


def test_a_real_process_exits_non_zero_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnlab.cli",
            "caption",
            "train",
            "--data",
            str(tmp_path / "none.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"rnnlab: error: {tmp_path / 'none.json'}: no such caption file"
