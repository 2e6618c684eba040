"""Resume: only into the run directory given, from any working directory, with typed flags applied
or refused by the resume table; one writer per run; a metrics log with every step exactly once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnlab.checkpoint import latest_checkpoint, list_checkpoints
from rnnlab.cli import main
from rnnlab.training.tools import RunLock, TrainingError

TEXT = "It was the best of times, it was the worst of times.\n" * 60
TINY = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--sample-length", "0",
        "--threads", "1", "--log-every", "1", "--warmup-steps", "2"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("cache_env")  # tests/conftest.py


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("note", "rnnlab: note"))
    ]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def steps(run):
    return [
        json.loads(line)["step"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
    ]


def rewrite_json(checkpoint: Path, name: str, edit) -> None:
    """Edit a JSON file of a checkpoint and fix its manifest entry (as a hostile user would)."""
    data = json.loads((checkpoint / name).read_text())
    edit(data)
    raw = (json.dumps(data) + "\n").encode()
    (checkpoint / name).write_bytes(raw)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def trained(tmp_path, capsys):
    """A run trained 4 steps from a relative input path in its own working directory."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.txt").write_text(TEXT, encoding="utf-8")
    old = os.getcwd()
    os.chdir(work)
    try:
        code, _, err = run_cli(["train", "in.txt", "--out-dir", "run", "--max-steps", 4,
                                "--eval-every", 2, "--keep-last", 1, *TINY], capsys)  # fmt: skip
    finally:
        os.chdir(old)
    assert code == 0, err
    return work / "run", work / "in.txt"


def test_resume_from_another_directory_continues_in_the_run_given(trained, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    run, _ = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["train", "--resume", "../work/run", "--max-steps", 6], capsys)
    assert code == 0, err
    assert not (elsewhere / "run").exists() and list(elsewhere.iterdir()) == []
    assert latest_checkpoint(run).name == "step-6" and steps(run) == list(range(1, 7))
    code, out, err = run_cli(["eval", "../work/run"], capsys)  # finds the input by absolute path
    assert code == 0 and "nats/char" in out, err


def test_resume_of_a_copy_writes_only_into_the_copy(trained, tmp_path, capsys):
    run, _ = trained
    before = sorted(p.name for p in run.iterdir())
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, _, err = run_cli(["train", "--resume", copy, "--max-steps", 6], capsys)
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == before  # the original is untouched
    assert latest_checkpoint(copy).name == "step-6"
    # a step-N directory given to --resume means its run directory
    code, _, err = run_cli(["train", "--resume", copy / "step-6", "--max-steps", 8], capsys)
    assert code == 0, err
    assert (
        latest_checkpoint(copy).name == "step-8" and sorted(p.name for p in run.iterdir()) == before
    )


def test_a_hostile_out_dir_in_the_config_is_never_written(trained, tmp_path, capsys):
    run, _ = trained
    target = tmp_path / "victim"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    rewrite_json(latest_checkpoint(run), "config.json",
                 lambda c: c["train"].update(out_dir=str(target)))  # fmt: skip
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6], capsys)
    assert code == 0, err
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert latest_checkpoint(run).name == "step-6"


def test_out_dir_with_resume_must_be_the_run(trained, tmp_path, capsys):
    run, _ = trained
    code, _, err = run_cli(["train", "--resume", run, "--out-dir", tmp_path / "x"], capsys)
    assert code == 1 and "writes into its own run directory" in one_line_error(err)
    assert not (tmp_path / "x").exists()


def test_a_moved_input_is_found_by_content_hash_else_asked_for(trained, tmp_path, capsys):
    run, text = trained
    moved = tmp_path / "moved.txt"
    text.rename(moved)
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6], capsys)
    assert code == 0, err  # from the corpus cache, by the stored sha256
    shutil.rmtree(tmp_path / "cache")
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 8], capsys)
    line = one_line_error(err)
    assert code == 2 and "not found and not in the corpus cache" in line and "--input" in line
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 8, "--input", moved], capsys)
    assert code == 0, err
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("best", "tseb"), encoding="utf-8")  # same characters
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 10, "--input", other], capsys)
    assert code == 2 and "not the text this run trained on" in one_line_error(err)


def test_typed_flags_are_applied_even_at_their_default(trained, capsys):
    run, _ = trained
    assert [p.name for p in list_checkpoints(run)] == ["step-4"]  # keep-last 1
    # --keep-last 3 is the default value: it still counts because it was typed
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 8, "--keep-last", 3,
                            "--lr", "0.002"], capsys)  # fmt: skip
    assert code == 0, err
    assert [p.name for p in list_checkpoints(run)] == ["step-4", "step-6", "step-8"]
    assert "keep_last: 1 -> 3" in err and "lr: 0.003 -> 0.002 (resume no longer bit-exact)" in err
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[4] < 0.002 + 1e-12 and lrs[3] > lrs[4]


@pytest.mark.parametrize(
    "flag,value",
    [("--hidden-size", 32), ("--cell", "lstm"), ("--batch-size", 8), ("--seq-len", 8),
     ("--optimizer", "sgd"), ("--seed", 1), ("--bytes", None), ("--embedding-size", 8)],
)  # fmt: skip
def test_fixed_settings_are_refused_on_resume(trained, capsys, flag, value):
    run, _ = trained
    args = ["train", "--resume", run, flag] + ([value] if value is not None else [])
    code, _, err = run_cli(args, capsys)
    line = one_line_error(err)
    assert code == 2 and "cannot change on resume" in line, line
    assert latest_checkpoint(run).name == "step-4"


def test_a_run_stored_with_device_cuda_resumes_with_device_cpu(trained, capsys):
    run, _ = trained
    rewrite_json(latest_checkpoint(run), "config.json", lambda c: c["train"].update(device="cuda"))
    if not __import__("torch").cuda.is_available():
        code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6], capsys)
        assert code == 2 and "--device cpu" in one_line_error(err)
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6, "--device", "cpu"], capsys)
    assert code == 0, err


def test_a_second_writer_is_refused(trained, capsys):
    run, _ = trained
    with RunLock(run):
        code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6], capsys)
    line = one_line_error(err)
    assert code == 1 and "another rnnlab process" in line and str(os.getpid()) in line
    assert latest_checkpoint(run).name == "step-4"
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6], capsys)
    assert code == 0, err  # the lock went with its holder


def test_the_run_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from rnnlab.training.tools import RunLock\n"
         f"with RunLock(__import__('pathlib').Path({str(tmp_path)!r})):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == b"held"
    with pytest.raises(TrainingError, match="another rnnlab process"):
        with RunLock(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path):
        pass


def test_a_torn_metrics_line_does_not_block_resume(trained, capsys):
    run, _ = trained
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_lo')  # a kill mid-write
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 6], capsys)
    assert code == 0, err
    assert steps(run) == list(range(1, 7))


def test_a_fresh_run_over_leftovers_starts_a_new_log(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    # a run killed before its first checkpoint: metrics, no step-N
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": 9.0}) + "\n"
                                               for s in range(1, 6)))  # fmt: skip
    code, _, err = run_cli(["train", tmp_path / "in.txt", "--out-dir", run, "--max-steps", 3,
                            "--eval-every", 3, *TINY], capsys)  # fmt: skip
    assert code == 0, err
    assert steps(run) == [1, 2, 3]


def test_checkpoint_every_still_writes_best_and_checkpoints_evaluations(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    code, _, err = run_cli(["train", tmp_path / "in.txt", "--out-dir", run, "--max-steps", 10,
                            "--eval-every", 4, "--checkpoint-every", 3, "--keep-last", 10,
                            *TINY], capsys)  # fmt: skip
    assert code == 0, err
    assert (run / "best").is_dir()
    assert [p.name for p in list_checkpoints(run)] == [
        "step-3", "step-4", "step-6", "step-8", "step-9", "step-10"]  # fmt: skip
    from rnnlab.runs import load_run

    best_step = json.loads((run / "best" / "manifest.json").read_text())["step"]
    assert load_run(run, "best").step == best_step and load_run(run, "latest").step == 10


def test_metrics_records_carry_elapsed_time_and_throughput(trained):
    run, _ = trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["elapsed_s"] >= 0 and r["chars_per_s"] > 0 for r in records)
    assert [r["elapsed_s"] for r in records] == sorted(r["elapsed_s"] for r in records)


KILL_SCRIPT = """
import sys
from rnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_trials_every_latest_checkpoint_resumes_and_metrics_have_each_step_once(tmp_path):
    """20 seeded trials: SIGKILL a training process at a random moment (mid-step, mid-save,
    mid-metrics-write); the latest checkpoint always loads and resumes, and at the end the log
    holds every step exactly once."""
    rng = random.Random(20261129)
    text = tmp_path / "in.txt"
    text.write_text(TEXT * 4, encoding="utf-8")
    run = tmp_path / "run"
    env = {**os.environ, "RNNLAB_CACHE": str(tmp_path / "cache"), "RNNLAB_NO_EXTENSION": "1"}
    base = [sys.executable, "-c", KILL_SCRIPT, "train"]
    fast = ["--eval-every", "5", "--checkpoint-every", "1", "--eval-batches", "1", "--keep-last",
            "2", *TINY]  # fmt: skip
    first = subprocess.run([*base, str(text), "--out-dir", str(run), "--max-steps", "2", *fast],
                           env=env, capture_output=True, timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    from rnnlab.runs import load_run

    for _trial in range(20):
        proc = subprocess.Popen([*base, "--resume", str(run), "--max-steps", "100000"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(rng.uniform(1.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(run)
        assert latest is not None
        load_run(latest, "latest")  # verifies and builds
        done = steps(run)
        assert done == sorted(set(done))  # never a duplicate (a torn last line is dropped)
    k = int(latest_checkpoint(run).name.split("-")[1])
    final = subprocess.run([*base, "--resume", str(run), "--max-steps", str(k + 2)], env=env,
                           capture_output=True, timeout=120)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert steps(run) == list(range(1, k + 3))


def test_a_new_max_steps_on_resume_keeps_the_cosine_horizon():
    """--max-steps may change on resume and stay bit-exact: the cosine (whose horizon defaults to
    max_steps) keeps the horizon the run started with; --decay-steps changes it explicitly."""
    from rnnlab.tasks.char_lm import TrainConfig
    from rnnlab.training.config import resumed_config
    from rnnlab.training.tools import lr_at

    saved = TrainConfig(input="in.txt", max_steps=300)
    for new in (60, 1000):
        resumed, notes = resumed_config(saved, {"max_steps": new})
        assert resumed.max_steps == new and any("horizon of 300" in n for n in notes)
        for step in (0, 10, 59, 250):
            assert lr_at(step, resumed, 1) == lr_at(step, saved, 1)
    explicit, _ = resumed_config(saved, {"max_steps": 60, "decay_steps": 60})
    assert explicit.decay_steps == 60


def test_resume_with_max_steps_already_reached_says_so(trained, capsys):
    """A resume whose --max-steps is at or below the checkpoint's step trains nothing: the user
    is told, instead of a silent no-op."""
    run, _ = trained
    code, _, err = run_cli(["train", "--resume", run, "--max-steps", 3], capsys)
    assert code == 0, err
    assert "the checkpoint is at step 4 and max_steps is 3: nothing to train" in err
