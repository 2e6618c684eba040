"""The CLI: one-line errors for bad input, exit codes, streaming sample output, eval, help."""

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnlab.cells import CELLS
from rnnlab.cli import main

TEXT = "It was the best of times, it was the worst of times.\n" * 60
FAST = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--eval-every", "10",
        "--sample-length", "10", "--threads", "1"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("cache_env")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLAB_CACHE", str(tmp / "cache"))
    path = tmp / "dickens.txt"
    path.write_text(TEXT, encoding="utf-8")
    run = tmp / "run"
    assert main(["train", str(path), "--out-dir", str(run), "--max-steps", "20", *FAST]) == 0
    yield run, path
    mp.undo()


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "training file is empty"),
        (b"abc\xffdef" * 100, "byte offset 3"),
        (b"short text", "batch"),
    ],
)
def test_bad_training_files(tmp_path, capsys, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(["train", str(path), "--out-dir", str(out_dir), *FAST], capsys)
    assert code == 2
    assert message in one_line_error(err)
    assert not out_dir.exists()  # nothing written


def test_directory_and_missing_file(tmp_path, capsys):
    code, _, err = run_cli(
        ["train", str(tmp_path), "--out-dir", str(tmp_path / "o"), *FAST], capsys
    )
    assert code == 2 and "directory" in one_line_error(err)
    code, _, err = run_cli(
        ["train", str(tmp_path / "nope.txt"), "--out-dir", str(tmp_path / "o"), *FAST], capsys
    )
    assert code == 2 and "nope.txt" in one_line_error(err)


def test_too_short_message_names_the_numbers(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("x" * 60)
    out_dir = tmp_path / "out"
    code, _, err = run_cli(["train", str(path), "--out-dir", str(out_dir), *FAST], capsys)
    line = one_line_error(err)
    assert code == 2 and "68" in line and "53" in line  # 4 x (16 + 1) needed; train split 53
    assert not out_dir.exists()


def test_sample_is_reproducible_and_streams_only_text(trained, capsys):
    run, _ = trained
    args = ["sample", str(run), "--seed", "7", "--length", "40", "--prime", "It "]
    code, out1, err = run_cli(args, capsys)
    assert code == 0 and out1.startswith("It ") and len(out1) == len("It ") + 40 + 1
    assert err == ""
    _, out2, _ = run_cli(args, capsys)
    assert out1 == out2
    _, out3, _ = run_cli(["sample", str(run), "--argmax", "--length", "30"], capsys)
    _, out4, _ = run_cli(["sample", str(run), "--argmax", "--length", "30", "--seed", "3"], capsys)
    assert out3 == out4


def test_sample_unseen_prime_characters(trained, capsys):
    run, _ = trained
    code, out, err = run_cli(["sample", str(run), "--prime", "héllo☃"], capsys)
    line = one_line_error(err)
    assert code == 2 and "'é'" in line and "'☃'" in line and out == ""
    code, out, _ = run_cli(["sample", str(run), "--prime", "héllo☃", "--unknown", "skip",
                            "--length", "5"], capsys)  # fmt: skip
    assert code == 0


def test_sample_prime_file_and_num_samples(trained, tmp_path, capsys):
    run, _ = trained
    prime = tmp_path / "prime.txt"
    prime.write_text("It was\nthe best\n" * 200)
    code, out, _ = run_cli(["sample", str(run), "--prime-file", str(prime), "--length", "10"],
                           capsys)  # fmt: skip
    assert code == 0 and out.startswith("It was\nthe best\n")
    code, out, _ = run_cli(["sample", str(run), "--num-samples", "3", "--length", "10"], capsys)
    assert code == 0 and out.count("-" * 40) == 2


def test_eval_split_and_file(trained, capsys):
    run, path = trained
    code, out, _ = run_cli(["eval", str(run)], capsys)
    assert code == 0 and "nats/char" in out and "bits/char" in out
    code, out, _ = run_cli(["eval", str(run), str(path)], capsys)
    assert code == 0 and "bits/char" in out


def test_resume_with_different_vocabulary_is_refused(trained, tmp_path, capsys):
    run, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "Ω", encoding="utf-8")
    code, _, err = run_cli(["train", str(other), "--resume", str(copy)], capsys)
    assert code == 2 and "vocabulary mismatch" in one_line_error(err)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_posing_as_checkpoint_is_refused(trained, tmp_path, capsys):
    run, _ = trained
    fake = tmp_path / "fake"
    shutil.copytree(run / "best", fake)
    marker = tmp_path / "pwned"
    (fake / "model.safetensors").write_bytes(pickle.dumps(Payload(str(marker))))
    for args in (["sample", str(fake)], ["eval", str(fake)], ["train", "--resume", str(fake)]):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and "model.safetensors" in one_line_error(err)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["train", "sample", "eval", "data", "gradcheck", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_bad_flag_exits_2():
    with pytest.raises(SystemExit) as exit_:
        main(["train", "x.txt", "--no-such-flag"])
    assert exit_.value.code == 2


def test_console_script_subprocess(tmp_path):
    """The installed entry point: real exit code, message on stderr, nothing on stdout."""
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "rnnlab.cli", "train", str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().startswith("rnnlab: error:") and "Traceback" not in proc.stderr


def test_gradcheck_command(capsys):
    code, out, _ = run_cli(["gradcheck"], capsys)
    assert code == 0
    for cell in CELLS:
        assert f"\n{cell} " in out


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    import json
    import os
    import signal
    import time

    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    env = {**os.environ, "RNNLAB_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "rnnlab.cli", "train", str(path), "--out-dir", str(run),
           "--max-steps", "100000", "--log-every", "1", *FAST]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 5
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"interrupted at step" in err and b"Traceback" not in err
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    from rnnlab.checkpoint import latest_checkpoint

    k = steps[-1]
    assert latest_checkpoint(run).name == f"step-{k}"
    resume = [sys.executable, "-m", "rnnlab.cli", "train", "--resume", str(run),
              "--max-steps", str(k + 3)]  # fmt: skip
    subprocess.run(resume, env=env, check=True, capture_output=True, timeout=120)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, k + 4))


def test_max_minutes_alone_is_the_only_limit(tmp_path, capsys):
    """`rnnlab train FILE --max-minutes M` trains for M minutes, not until the default step
    limit; with --max-steps as well, whichever comes first."""
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    timed = tmp_path / "timed"
    code, _, err = run_cli(["train", str(path), "--out-dir", str(timed), "--max-minutes", "0.005",
                            *FAST], capsys)  # fmt: skip
    assert code == 0, err
    stored = json.loads((timed / "best" / "config.json").read_text())["train"]
    assert stored["max_steps"] > 10**9 and "(max_minutes)" in err
    both = tmp_path / "both"
    code, _, err = run_cli(["train", str(path), "--out-dir", str(both), "--max-minutes", "5",
                            "--max-steps", "3", *FAST], capsys)  # fmt: skip
    assert code == 0 and "step 3 (max_steps)" in err
