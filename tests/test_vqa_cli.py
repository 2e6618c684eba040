"""``rnnlab vqa``: train, eval beside the baselines, predict with an HTML report, the data
commands, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnlab.cli import main

pytestmark = pytest.mark.usefixtures("cache_env", "one_thread")

SMALL = ["--image-size", "16", "--cnn-blocks", "2", "--cnn-channels", "4", "--feature-size", "16",
         "--embedding-size", "8", "--hidden-size", "16", "--fusion-size", "16", "--mlp-size",
         "16", "--batch-size", "2", "--threads", "1", "--device", "cpu", "--no-progress",
         "--warmup-steps", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vqa")
    assert main(["vqa", "sort-of-clevr", str(root / "soc"), "--num-train", "8", "--num-val", "2",
                 "--num-test", "2", "--questions-per-image", "2"]) == 0  # fmt: skip
    for name, extra in (("cnn", ["--attention-layers", "1"]), ("blind", ["--blind"])):
        assert main(["vqa", "train", "--data", str(root / "soc" / "train"), "--val-data",
                     str(root / "soc" / "val"), "--out-dir", str(root / name), "--max-steps", "4",
                     "--eval-every", "2", *SMALL, *extra]) == 0  # fmt: skip
    return root


def test_eval_prints_model_and_baselines(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["vqa", "eval", str(runs / "cnn"), "--data", str(runs / "soc" / "test"),
                 "--blind", str(runs / "blind")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].endswith("8 questions, 2 images")
    assert "VQA acc" in lines[1] and "yes/no" in lines[1]
    assert lines[2].startswith("model (cnn)") and lines[3].startswith("most frequent per q-type")
    assert lines[4].startswith("blind (question only)")
    assert any(line.startswith("rel-") for line in lines)  # per question type
    assert main(["vqa", "eval", str(runs / "cnn")]) == 0  # the run's validation questions
    assert "validation questions" in capsys.readouterr().out


def test_predict_and_report(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = runs / "soc" / "test" / "images" / "COCO_soc-test_000000000000.png"
    report = runs / "out" / "report.html"
    capsys.readouterr()
    assert main(["vqa", "predict", str(runs / "cnn"), str(image), "what shape is the red object?",
                 str(image), "is the red object on the zz left?", "--top", "2", "--report",
                 str(report)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[1] == "what shape is the red object?"
    probs = [float(x) for x in lines[0].split("\t")[2].split()[1::2]]
    assert len(probs) == 2 and probs[0] >= probs[1] > 0
    assert "'zz'" in captured.err  # an unseen word is named
    page = report.read_text()
    assert page.count("data:image/png;base64,") == 4  # each image and its attention map
    assert "what shape is the red object?" in page and "<script" not in page


@pytest.mark.parametrize(("argv", "message"), [
    (["predict", "CNN", "IMG"], "give pairs"),
    (["predict", "CNN", "missing.png", "what?"], "missing.png: no such image file"),
    (["predict", "CNN", "IMG", "what?", "--top", "0"], "--top"),
    (["eval", "CNN", "--blind", "CNN"], "reads images"),
    (["eval", "CNN", "--data", "SOC/nothing"], "no such questions file"),
    (["eval", "CNN", "--images", "x"], "only with --data"),
    (["eval", "SOC"], "no complete step-N checkpoint"),
    (["train", "--max-steps", "3"], "--data"),
    (["train", "--data", "SOC/train", "--blind", "--attention-layers", "1"], "attention_layers"),
])  # fmt: skip
def test_one_line_errors(runs: Path, argv: list[str], message: str,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    image = runs / "soc" / "test" / "images" / "COCO_soc-test_000000000000.png"
    argv = [a.replace("CNN", str(runs / "cnn")).replace("SOC", str(runs / "soc"))
            .replace("IMG", str(image)) for a in argv]  # fmt: skip
    capsys.readouterr()
    assert main(["vqa", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bad_annotation_is_one_line_naming_file_and_path(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = json.loads((runs / "soc" / "test" / "annotations.json").read_text())
    notes["annotations"][3]["answers"] = "blue"
    (tmp_path / "a.json").write_text(json.dumps(notes))
    capsys.readouterr()
    assert main(["vqa", "eval", str(runs / "cnn"), "--data",
                 str(runs / "soc" / "test" / "questions.json"), "--annotations",
                 str(tmp_path / "a.json")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.json: annotations[3].answers: expected a non-empty" in err


def test_easy_vqa_command_refuses_a_wrong_wheel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.whl").write_bytes(b"not a wheel")
    assert main(["vqa", "easy-vqa", "--wheel", str(tmp_path / "x.whl"), "--cache-dir",
                 str(tmp_path / "c")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err


def test_a_run_on_features(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Precomputed (N, K, F) grids instead of the CNN: train, eval (which needs the file) and
    predict on a one-row feature file."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2), ("test", 2)):
        np.save(tmp_path / f"{split}.npy", rng.normal(size=(n, 4, 6)).astype(np.float32))
    soc = runs / "soc"
    assert main(["vqa", "train", "--data", str(soc / "train"), "--val-data", str(soc / "val"),
                 "--features", str(tmp_path / "train.npy"), "--val-features",
                 str(tmp_path / "val.npy"), "--attention-layers", "1", "--out-dir",
                 str(tmp_path / "run"), "--max-steps", "2", "--eval-every", "2",
                 *SMALL]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["vqa", "eval", str(tmp_path / "run"), "--data", str(soc / "test")]) == 2
    assert "--features" in capsys.readouterr().err
    assert main(["vqa", "eval", str(tmp_path / "run"), "--data", str(soc / "test"),
                 "--features", str(tmp_path / "test.npy")]) == 0  # fmt: skip
    np.save(tmp_path / "one.npy", rng.normal(size=(1, 4, 6)).astype(np.float32))
    capsys.readouterr()
    assert main(["vqa", "predict", str(tmp_path / "run"), str(tmp_path / "one.npy"),
                 "what shape is the red object?"]) == 0  # fmt: skip
    assert capsys.readouterr().out.count("\t") == 2


def test_predict_with_a_blind_run_reads_no_image(
    runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["vqa", "predict", str(runs / "blind"), "not-read.png",
                 "what shape is the red object?"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("not-read.png\t")
