"""Data-parallel training: sharding, 2 gloo processes against 1, preemption and resume, a dead or
hung rank, and refusals. Multi-process tests launch the real CLI with torchrun (or with
torchrun's environment set by hand, to test a rank's own behaviour without torchrun's agent)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.checkpoint import latest_checkpoint, load_checkpoint, unflatten_state
from rnnlab.cli import main
from rnnlab.data import StreamBatcher
from rnnlab.training.distributed import (
    DataParallel,
    Launch,
    check_divisible,
    launch_from_env,
    shard_rows,
    shard_state,
)
from rnnlab.validation import ConfigError

TINY = ["--cell", "lstm", "--hidden-size", "16", "--batch-size", "4", "--seq-len", "16",
        "--sample-length", "0", "--threads", "1", "--log-every", "1", "--warmup-steps", "2",
        "--eval-batches", "2", "--decay-steps", "60"]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture
def text(tmp_path, cache_env):
    rng = random.Random(14)
    words = "the quick brown fox jumps over a lazy dog while seven owls sing".split()
    path = tmp_path / "in.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(3000)), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def losses(run: Path, key: str = "train_loss") -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return [r[key] for r in records if key in r]


def two_processes_match_one(args: list[str], tmp_path: Path) -> None:
    """The command ``args`` in one process and under torchrun with 2: rank 0 reports once, and
    the training and validation losses agree within 1e-5 step by step."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out-dir", str(one)]) == 0
    done = torchrun(*args, "--out-dir", two)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("run directory:") == 1
    assert np.allclose(losses(two), losses(one), rtol=0, atol=1e-5)
    assert np.allclose(losses(two, "val_loss"), losses(one, "val_loss"), rtol=0, atol=1e-5)


def trainer_state(run: Path) -> dict:
    ckpt = load_checkpoint(latest_checkpoint(run))
    return unflatten_state(ckpt.trainer_tensors, ckpt.trainer["state"])


def torchrun(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, "-m", "rnnlab", *map(str, args)], env=env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def rank_pids(agent: int, world_size: int = 2, wait: float = 60) -> dict[int, int]:
    """{rank: pid} of the workers a torchrun agent started (read from their environment)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = {}
        children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(pid)
        if len(found) == world_size:
            return found
        time.sleep(0.1)
    raise AssertionError("torchrun's workers did not start")


def wait_for_steps(run: Path, n: int, wait: float = 90) -> None:
    log, deadline = run / "metrics.jsonl", time.monotonic() + wait
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{log}: fewer than {n} steps after {wait} s")


# -- sharding and the launch, in one process -------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_the_ranks_streams_are_disjoint_and_cover_the_single_process_batch(world_size):
    tokens = np.arange(5000, dtype=np.int64)  # every token names its position in the text
    batcher = StreamBatcher(tokens, 12, 8)
    x, y = batcher.get(3)  # (B, T) of one process
    blocks = [shard_rows(12, world_size, r) for r in range(world_size)]
    shards = [x[rows] for rows in blocks]
    assert torch.equal(torch.cat(shards), x)  # in rank order they are the batch
    assert torch.equal(torch.cat([y[rows] for rows in blocks]), y)
    seen = [set(s.flatten().tolist()) for s in shards]
    for a in range(world_size):
        assert all(not (seen[a] & seen[b]) for b in range(a + 1, world_size))  # no shared text
        assert all(len(s) == 12 // world_size for s in shards)
    # Each rank's streams are contiguous stretches of the text, and stay its own batch after batch.
    for rows in blocks:
        starts = batcher.get(0)[0][rows][:, 0]
        assert torch.equal(starts, torch.arange(rows.start, rows.stop) * batcher.stream_len)
    # The carried state (L, B, H) splits along the same rows and joins back.
    h = torch.randn(2, 12, 5)
    parts = [shard_state((h, -h), rows) for rows in blocks]
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), h)
    assert torch.equal(torch.cat([p[1] for p in parts], dim=1), -h)


def test_uneven_blocks_for_evaluation_cover_every_row_once():
    for total in range(0, 12):
        for world_size in range(1, 6):
            rows = [range(total)[shard_rows(total, world_size, r)] for r in range(world_size)]
            assert [i for block in rows for i in block] == list(range(total))
            assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_a_batch_the_world_size_does_not_divide_is_refused():
    assert check_divisible(8, 2) == 4
    with pytest.raises(ConfigError, match=r"batch_size: expected a multiple of the 3 processes"):
        check_divisible(8, 3)
    # On resume the batch is the run's: the answer is the process counts that fit it, not a
    # --batch-size the resume would refuse.
    with pytest.raises(
        ConfigError, match=r"world_size: .*divides the run's batch_size 6.*1, 2, 3, 6"
    ):
        check_divisible(6, 4, resuming=True)


def test_launch_from_torchruns_environment():
    assert launch_from_env({}) == Launch(1, 0, 0)
    launch = launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1",
                              "RNNLAB_DIST_TIMEOUT": "12.5"})  # fmt: skip
    assert (launch.world_size, launch.rank, launch.local_rank, launch.timeout_s) == (4, 3, 1, 12.5)
    for bad in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"},
                {"RNNLAB_DIST_TIMEOUT": "0"}, {"WORLD_SIZE": "0"}):  # fmt: skip
        with pytest.raises(ConfigError, match="environment: "):
            launch_from_env(bad)


def test_one_process_has_no_group_and_no_wrapper():
    model = torch.nn.Linear(2, 2)
    with DataParallel(Launch(), torch.device("cpu")) as dp:
        assert dp.wrap(model) is model and not torch.distributed.is_initialized()
        x = torch.randn(4, 3)
        assert dp.shard(x) is x and dp.rows(4) is None
        assert dp.agree(torch.tensor(1.5), False, 3.0) == (1.5, False, 3.0)
        assert dp.sum(2.0, 3.0) == (2.0, 3.0)
        assert dp.gather_objects({"a": 1}) == [{"a": 1}]


def test_batch_not_divisible_under_torchrun_is_one_line_and_writes_nothing(
    text, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    args = ["train", text, "--out-dir", tmp_path / "run", *TINY, "--batch-size", "5"]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines == [
        "rnnlab: error: batch_size: expected a multiple of the 2 processes (each trains "
        "batch_size / 2 rows; e.g. 4 or 6), or run on 1, 5 processes, found 5"
    ]
    assert not (tmp_path / "run").exists()


# -- two processes through torchrun ------------------------------------------------------------


@pytest.mark.slow
def test_two_gloo_processes_match_one_with_the_same_global_batch(text, tmp_path, capsys):
    """20 steps: per-step training loss and the sharded validation loss within 1e-5 of one
    process; the checkpoint holds the whole batch's state and both ranks' RNG; then a resume on
    one process (streams re-sharded) continues like the one-process run."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*TINY, "--max-steps", "20", "--eval-every", "10"]
    assert main(["train", str(text), "--out-dir", str(one), *common]) == 0
    done = torchrun("train", text, "--out-dir", two, *common)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("run directory:") == 1  # rank 0 reports, once
    assert "2 processes (data parallel)" in done.stderr
    assert np.allclose(losses(two), losses(one), rtol=0, atol=1e-5)
    assert np.allclose(losses(two, "val_loss"), losses(one, "val_loss"), rtol=0, atol=1e-5)
    assert len(losses(two, "val_loss")) == 2

    state, single = trainer_state(two), trainer_state(one)
    assert [tuple(s.shape) for s in state["carried"]] == [(1, 4, 16)] * 2  # (L, B, H): all streams
    assert len(state["rank_rng"]) == 1 and "rank_rng" not in single  # rank 1's RNG, beside rank 0's
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rng"]["torch"])
    for a, b in zip(state["carried"], single["carried"], strict=True):  # same streams, same state
        assert torch.allclose(a, b, rtol=0, atol=1e-5)

    capsys.readouterr()
    assert main(["train", "--resume", str(two), "--max-steps", "25"]) == 0
    assert "resuming a 2-process run on 1: the streams are re-sharded" in capsys.readouterr().err
    assert main(["train", "--resume", str(one), "--max-steps", "25"]) == 0
    assert np.allclose(losses(two)[20:], losses(one)[20:], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_and_resume_matches_an_uninterrupted_run(text, tmp_path):
    """With dropout (so every rank's RNG matters): SIGTERM to rank 1 mid-run, both ranks stop at
    one step with one checkpoint; a resume on 2 processes gives bit-identical losses."""
    run, whole = tmp_path / "run", tmp_path / "whole"
    common = [*TINY, "--dropout", "0.1", "--eval-every", "100000"]
    agent = subprocess.Popen([*TORCHRUN, "-m", "rnnlab", "train", str(text), "--out-dir", str(run),
                              *common, "--max-steps", "100000"], env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        pids = rank_pids(agent.pid)
        wait_for_steps(run, 3)
        os.kill(pids[1], signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    finally:
        agent.kill()
    assert agent.returncode != 0  # the ranks exit 130; torchrun reports a failed worker
    assert err.count("interrupted at step") == 1, err
    k = int(latest_checkpoint(run).name.split("-")[1])
    assert f"interrupted at step {k}; checkpoint saved" in err
    assert k == len(losses(run)) and k < 100000

    resumed = torchrun("train", "--resume", run, "--max-steps", k + 5)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = torchrun("train", text, "--out-dir", whole, *common, "--max-steps", k + 5)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert losses(run) == losses(whole)  # exact: each rank restored its RNG and its streams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_dead_or_hung_rank_makes_the_other_exit_with_one_line(text, tmp_path, how):
    """Without torchrun's agent (which would also stop the survivor): rank 1 is SIGKILLed (the
    survivor's collective fails at once) or SIGSTOPped (the collective timeout fires); rank 0
    exits 1 within a bounded time, with one line and no traceback."""
    port, run = free_port(), tmp_path / "run"
    timeout_s = 3 if how == "hung" else 60
    base = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
            "RNNLAB_DIST_TIMEOUT": str(timeout_s)}  # fmt: skip
    command = [sys.executable, "-m", "rnnlab", "train", str(text), "--out-dir", str(run), *TINY,
               "--max-steps", "100000", "--eval-every", "100000"]  # fmt: skip
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    ranks = [
        subprocess.Popen(command, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}, **pipes)
        for r in (0, 1)
    ]
    try:
        wait_for_steps(run, 3)
        ranks[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        start = time.monotonic()
        _, err = ranks[0].communicate(timeout=timeout_s + 30)
        took = time.monotonic() - start
    finally:
        for p in ranks:
            p.kill()
            p.wait()
    assert ranks[0].returncode == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rnnlab: error:")]
    assert len(lines) == 1 and "rank 0 of 2: another rank died or stopped answering" in lines[0]
    assert took < timeout_s + 20


@pytest.mark.slow
def test_the_benchmark_measures_two_processes(text, tmp_path, monkeypatch):
    """bench/ddp.py's measurement (torchrun, 2 processes) on a tiny model: it must not rot."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    from ddp import measure

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert measure(text, ("lstm", 16, 1, 4, 16), 2, 1, 2.0, scratch) > 0


@pytest.mark.slow
def test_seq2seq_on_two_gloo_processes_matches_one(tmp_path, cache_env, capsys):
    """The same helpers in the seq2seq loop: batches of pairs split by rank (7 pairs: blocks of 4
    and 3, each rank's summed loss weighed by the batch's token count), 12 steps within 1e-5 of
    one process, rank 0's evaluation; then a resume on 2 processes continues bit-exactly."""
    words = [f"{a}{b}{c}" for a in "abcd" for b in "abcd" for c in "abcdx"][:70]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words))
    common = ["--pairs", pairs, "--hidden-size", "16", "--embedding-size", "8", "--num-layers",
              "1", "--batch-size", "7", "--eval-size", "0", "--threads", "1", "--no-progress",
              "--eval-every", "6", "--warmup-steps", "2", "--decay-steps", "20"]  # fmt: skip
    one, two, cut = tmp_path / "one", tmp_path / "two", tmp_path / "cut"
    args = ["seq2seq", "train", *map(str, common)]
    assert main([*args, "--out-dir", str(one), "--max-steps", "12"]) == 0
    done = torchrun(*args, "--out-dir", two, "--max-steps", "12")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("run directory:") == 1
    assert np.allclose(losses(two), losses(one), rtol=0, atol=1e-5)
    assert np.allclose(losses(two, "val_loss"), losses(one, "val_loss"), rtol=0, atol=1e-5)
    assert len(state := trainer_state(two)["rank_rng"]) == 1 and isinstance(state[0], dict)

    first = torchrun(*args, "--out-dir", cut, "--max-steps", "6")
    again = torchrun("seq2seq", "train", "--resume", cut, "--max-steps", "12")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert losses(cut) == losses(two)


@pytest.mark.slow
def test_classify_on_two_gloo_processes_matches_one(tmp_path, cache_env):
    """The classification loop on the same helpers: batches of 5 rows split 3 + 2 by rank, 10
    steps within 1e-5 of one process; rank 0 evaluates and writes."""
    rng = random.Random(3)
    rows = ["".join(rng.choice("()ab") for _ in range(rng.randint(2, 9))) for _ in range(120)]
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{r}\t{'open' if r.find('(') >= 0 else 'none'}\n" for r in rows))
    args = ["classify", "train", str(data), "--hidden-size", "16", "--batch-size", "5",
            "--threads", "1", "--eval-every", "5", "--warmup-steps", "2",
            "--max-steps", "10"]  # fmt: skip
    two_processes_match_one(args, tmp_path)


@pytest.mark.slow
def test_captioning_on_two_gloo_processes_matches_one(tmp_path, cache_env):
    """The captioning loop on the same helpers: a batch's 4 images split 2 + 2 by rank (with all
    their captions), each rank's summed loss weighed by the batch's words; 6 steps within 1e-5."""
    from rnnlab.data.shapes import write_shapes_dataset

    data = write_shapes_dataset(tmp_path / "shapes", 24, num_val=4, num_test=4, image_size=16,
                                seed=1)  # fmt: skip
    args = ["caption", "train", "--data", str(data), "--image-size", "16", "--cnn-blocks", "2",
            "--cnn-channels", "4", "--feature-size", "16", "--embedding-size", "8",
            "--hidden-size", "16", "--batch-size", "4", "--warmup-steps", "0", "--threads", "1",
            "--max-length", "12", "--eval-every", "3", "--max-steps", "6"]  # fmt: skip
    two_processes_match_one(args, tmp_path)


@pytest.mark.slow
def test_vqa_on_two_gloo_processes_matches_one(tmp_path, cache_env):
    """The VQA loop on the same helpers: a batch's 3 images split 2 + 1 by rank (with all their
    questions), each rank's summed loss weighed by the batch's question count; 6 steps within
    1e-5 of one process."""
    from rnnlab.data.sort_of_clevr import write_sort_of_clevr

    write_sort_of_clevr(tmp_path / "soc", 9, 2, 0, questions_per_image=2, seed=1)
    args = ["vqa", "train", "--data", str(tmp_path / "soc" / "train"), "--val-data",
            str(tmp_path / "soc" / "val"), "--image-size", "16", "--cnn-blocks", "2",
            "--cnn-channels", "4", "--feature-size", "16", "--embedding-size", "8",
            "--hidden-size", "16", "--mlp-size", "16", "--batch-size", "3", "--warmup-steps", "0",
            "--threads", "1", "--eval-every", "3", "--max-steps", "6"]  # fmt: skip
    two_processes_match_one(args, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["discriminative", "generative"])
def test_dialog_on_two_gloo_processes_matches_one(decoder, tmp_path, cache_env):
    """The dialog loop on the same helpers: a batch's 5 dialogs split 3 + 2 by rank (with all
    their rounds), each rank's summed loss weighed by the batch's rounds (discriminative) or
    answer words (generative); 6 steps within 1e-5 of one process."""
    from rnnlab.data.clevr_dialog import write_clevr_dialog

    paths = write_clevr_dialog(tmp_path / "dialogs", 24, num_val=4, num_test=0, seed=1)
    args = ["dialog", "train", "--data", str(paths["train"]), "--val-data", str(paths["val"]),
            "--image-size", "16", "--cnn-blocks", "2", "--cnn-channels", "4", "--feature-size",
            "16", "--embedding-size", "8", "--hidden-size", "16", "--batch-size", "5",
            "--warmup-steps", "0", "--threads", "1", "--eval-every", "3", "--max-steps", "6",
            "--decoder", decoder, "--encoder", "hierarchical"]  # fmt: skip
    two_processes_match_one(args, tmp_path)
