"""The benchmark's workloads still run (a smoke test: `make bench` must not rot when the library
changes). Tiny sizes; the numbers themselves are for bench/run.py, not for tests."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

WORKLOADS = Path(__file__).resolve().parent.parent / "bench" / "workloads.py"
TINY = ["--hidden", "8", "--layers", "2", "--batch", "4", "--seq", "6", "--vocab", "11"]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--cell", "lstm", "--backend", "baseline", "--steps", "1", "--warmup", "1"],
        ["train", "--cell", "gru", "--backend", "fused", "--steps", "1", "--warmup", "1"],
        ["train", "--cell", "mut1", "--backend", "fused-nofold", "--steps", "1", "--warmup", "1"],
        ["sample", "--cell", "lstm", "--backend", "fused", "--steps", "2", "--warmup", "1"],
        ["sample", "--cell", "lstm", "--backend", "baseline", "--steps", "2", "--warmup", "1"],
    ],
)
def test_benchmark_workloads_run(args):
    done = subprocess.run(
        [sys.executable, str(WORKLOADS), *args, *TINY], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["chars_per_s"] > 0


TRAINER = WORKLOADS.with_name("trainer.py")


def test_trainer_benchmark_measurements_run(tmp_path):
    """bench/trainer.py's workers (rnnlab train differenced, the plain loop, rnnlab sample through
    the CLI, the plain sampling loop) on a tiny model and text."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 400)
    dims = ["--hidden", "8", "--layers", "1", "--batch", "4", "--seq", "8", "--seconds", "0.1",
            "--data", str(text)]  # fmt: skip

    def worker(kind: str, *args: str) -> dict:
        done = subprocess.run([sys.executable, str(TRAINER), "--worker", kind, *dims, *args],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert worker("baseline", "--cell", "lstm")["chars_per_s"] > 0
    ours = worker("rnnlab", "--cell", "mut1")  # differenced tiny runs: only the shape of it
    assert math.isfinite(ours["gflops"]) and ours["steps"] >= 5
    assert worker("sample-baseline", "--streams", "2")["chars_per_s"] > 0
    from rnnlab.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(input=str(text), out_dir=str(run), hidden_size=8, batch_size=4, seq_len=8,
                      max_steps=2, sample_length=0))  # fmt: skip
    got = worker("sample-cli", "--run", str(run), "--streams", "2", "--length", "120")
    assert math.isfinite(got["chars_per_s"])


def test_vqa_benchmark_quick(tmp_path):
    """bench/vqa.py --quick: both sets (a tiny easy-vqa layout the test writes), every model
    and baseline in the table."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "easy"
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        rows = []
        for i in range(12):
            colour = ("red", "blue")[i % 2]
            rgb = ((255, 0, 0), (0, 0, 255))[i % 2]
            Image.fromarray(np.full((16, 16, 3), rgb, dtype=np.uint8)).save(
                root / split / "images" / f"{i}.png"
            )
            answer = "yes" if i % 2 == 0 else "no"
            rows += [["what color is the shape?", colour, i], ["is there a red shape?", answer, i]]
        (root / split / "questions.json").write_text(json.dumps(rows))
    done = subprocess.run(
        [sys.executable, str(WORKLOADS.with_name("vqa.py")), "--quick", "--threads", "1",
         "--work", str(tmp_path / "work"), "--easy-vqa", str(root)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "| easy-vqa CNN+LSTM |" in out and "| easy-vqa blind LSTM |" in out
    assert "| Sort-of-CLEVR CNN+LSTM + stacked attention |" in out and "relational" in out
    assert out.count("| most frequent answer per question type |") == 2
    assert "rnnlab vqa train --data" in out


def test_dialog_benchmark_quick_run(tmp_path):
    """bench/dialog.py --quick: every model of the README's table trains, is ranked on the test
    split and lands in the table with all six VisDial metrics and R@1 by coreference distance."""
    script = WORKLOADS.with_name("dialog.py")
    done = subprocess.run([sys.executable, str(script), "--quick", "--work", str(tmp_path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | R@1 | R@5 | R@10 | mean rank | MRR | NDCG | R@1 d=0")
    names = [row.split(" | ")[0][2:] for row in rows[1:]]
    assert names == ["LF, discriminative", "HRE, discriminative", "no history, discriminative",
                     "question only, discriminative", "LF, generative", "HRE, generative",
                     "no history, generative"]  # fmt: skip
