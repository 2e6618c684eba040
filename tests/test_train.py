"""The training loop: initial loss, overfitting, exact resume, NaN guard, clipping, metrics."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rnnlab.checkpoint import latest_checkpoint, load_checkpoint
from rnnlab.data import DataError
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.train import TrainConfig, TrainingError, lr_at, train

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 120


pytestmark = pytest.mark.usefixtures("cache_env")  # tests/conftest.py


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def small(text_file, tmp_path, **overrides):
    values = dict(input=str(text_file), out_dir=str(tmp_path / "run"), hidden_size=16,
                  num_layers=1, batch_size=4, seq_len=16, max_steps=20, eval_every=10,
                  sample_length=20, threads=1, log_every=1, warmup_steps=2)  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_initial_loss_is_log_vocab():
    torch.manual_seed(0)
    V = 65
    model = CharLM(CharLMConfig(V, hidden_size=64, num_layers=2))
    idx = torch.randint(0, V, (8, 50))
    logits, _ = model(idx)
    loss = F.cross_entropy(logits.flatten(0, 1), idx.flatten()).item()
    assert abs(loss - math.log(V)) < 0.1


def test_one_tiny_batch_is_overfit(text_file, tmp_path):
    cfg = small(text_file, tmp_path, max_steps=150, lr=1e-2, hidden_size=32, batch_size=2,
                seq_len=8, eval_every=150, lr_schedule="constant", val_frac=0.5,
                test_frac=0.0)  # fmt: skip
    # A corpus whose training split is exactly one batch: the same batch every step.
    text = "abcdefghij" * 2 + "klmnopqrst" * 2
    text_file.write_text(text)
    cfg.input = str(text_file)
    train(cfg)
    losses = [r["train_loss"] for r in read_metrics(cfg.out_dir)]
    assert losses[0] > 2.0 and losses[-1] < 0.05


def test_metrics_plot_and_checkpoints(text_file, tmp_path):
    cfg = small(text_file, tmp_path)
    events = []
    result = train(cfg, on_event=events.append)
    records = read_metrics(cfg.out_dir)
    assert [r["step"] for r in records] == list(range(1, 21))
    assert all({"step", "train_loss", "lr", "grad_norm"} <= set(r) for r in records)
    assert "val_loss" in records[9] and "val_bpc" in records[19]
    assert (Path(cfg.out_dir) / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert latest_checkpoint(cfg.out_dir).name == "step-20"
    assert (Path(cfg.out_dir) / "best").is_dir()
    kinds = {e["kind"] for e in events}
    assert {"start", "step", "eval", "sample", "checkpoint", "end"} <= kinds
    start = next(e for e in events if e["kind"] == "start")
    assert start["parameters"] > 0 and start["backend"] in ("native", "fused", "reference")
    assert result.step == 20


def test_existing_run_is_never_overwritten(text_file, tmp_path):
    cfg = small(text_file, tmp_path, max_steps=10)
    train(cfg)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg)


def test_resume_refuses_a_different_vocabulary(text_file, tmp_path):
    cfg = small(text_file, tmp_path, max_steps=10)
    train(cfg)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper() + "é", encoding="utf-8")
    with pytest.raises(DataError, match="vocabulary mismatch"):
        train(resume=cfg.out_dir, changes={"input": str(other), "max_steps": 20})


def test_nan_step_is_skipped_and_counted(text_file, tmp_path, monkeypatch):
    cfg = small(text_file, tmp_path, max_steps=8, eval_every=100, sample_length=0)
    calls = {"n": 0}
    original = CharLM.forward

    def forward(self, idx, state=None):
        logits, state = original(self, idx, state)
        calls["n"] += 1
        if self.training and calls["n"] == 5:
            logits = logits * float("nan")
        return logits, state

    monkeypatch.setattr(CharLM, "forward", forward)
    train(cfg)
    records = read_metrics(cfg.out_dir)
    assert math.isnan(records[4]["train_loss"])
    assert records[4]["nonfinite_skips"] == 1 and records[-1]["nonfinite_skips"] == 1


def test_consecutive_nans_abort_with_last_good_checkpoint(text_file, tmp_path, monkeypatch):
    cfg = small(text_file, tmp_path, max_steps=30, eval_every=5, sample_length=0,
                max_nonfinite=3)  # fmt: skip
    original = CharLM.forward
    calls = {"n": 0}

    def forward(self, idx, state=None):
        logits, state = original(self, idx, state)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 12:
                logits = logits * float("inf")
        return logits, state

    monkeypatch.setattr(CharLM, "forward", forward)
    with pytest.raises(TrainingError, match="non-finite steps in a row"):
        train(cfg)
    ckpt = load_checkpoint(latest_checkpoint(cfg.out_dir))
    assert ckpt.step == 10
    assert all(torch.isfinite(t).all() for t in ckpt.model.values())
    last = read_metrics(cfg.out_dir)[-1]  # the step that aborted the run is in the log
    assert last["step"] == 12 + cfg.max_nonfinite and not math.isfinite(last["train_loss"])


def test_clipping_logs_pre_clip_norm_and_bounds_update(text_file, tmp_path):
    cfg = small(text_file, tmp_path, max_steps=5, grad_clip=1e-3, eval_every=100,
                sample_length=0)  # fmt: skip
    train(cfg)
    norms = [r["grad_norm"] for r in read_metrics(cfg.out_dir)]
    assert all(n > 1e-3 for n in norms)  # the logged norm is the one before clipping


def test_lr_schedules():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, lr_schedule="cosine",
                      min_lr_frac=0.1)  # fmt: skip
    assert lr_at(0, cfg, 50) == pytest.approx(0.1)
    assert lr_at(10, cfg, 50) == pytest.approx(1.0)
    assert lr_at(110, cfg, 50) == pytest.approx(0.1)
    step = TrainConfig(lr=1.0, warmup_steps=0, lr_schedule="step", lr_decay=0.5)
    assert [lr_at(s, step, 10) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]


def test_cosine_follows_the_time_budget():
    """With --max-minutes the cosine ends at whichever limit comes first: half the budget spent
    is half the cosine (lr halfway to the floor), the deadline is the floor, and without a
    budget (or with --decay-steps) the clock is ignored."""
    timed = TrainConfig(lr=1.0, warmup_steps=0, max_steps=10**9, max_minutes=2.0, min_lr_frac=0)
    assert lr_at(5, timed, 50, elapsed=0.0) == pytest.approx(1.0)
    assert lr_at(5, timed, 50, elapsed=60.0) == pytest.approx(0.5)
    assert lr_at(5, timed, 50, elapsed=120.0) == pytest.approx(0.0)
    assert lr_at(5, timed, 50, elapsed=999.0) == pytest.approx(0.0)
    steps_first = TrainConfig(lr=1.0, warmup_steps=0, max_steps=100, max_minutes=60.0,
                              min_lr_frac=0)  # fmt: skip
    assert lr_at(50, steps_first, 50, elapsed=1.0) == pytest.approx(0.5)
    untimed = TrainConfig(lr=1.0, warmup_steps=0, max_steps=100, min_lr_frac=0)
    assert lr_at(5, untimed, 50, elapsed=1e6) == lr_at(5, untimed, 50)
    fixed = TrainConfig(lr=1.0, warmup_steps=0, max_steps=100, decay_steps=100, max_minutes=1.0)
    assert lr_at(5, fixed, 50, elapsed=59.0) == lr_at(5, fixed, 50)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("optimizer", "adamax", "optimizer: expected one of"),
        ("batch_size", 0, r"batch_size: expected an integer in \[1, 65_536\], found 0"),
        ("lr", -1.0, "lr: expected a finite number in"),
        ("cell", "lstmm", "cell: expected one of"),
    ],
)
def test_bad_config(text_file, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        cfg = small(text_file, tmp_path, **{field: value})
        train(cfg)


RESUME_SCRIPT = """
import json, sys
from rnnlab.train import TrainConfig, train
values = json.loads(sys.argv[1])
if len(sys.argv) > 2:
    train(resume=sys.argv[2], changes=values)
else:
    train(TrainConfig(**values))
"""


def run_in_fresh_process(config: dict, resume=None, env=None):
    args = [sys.executable, "-c", RESUME_SCRIPT, json.dumps(config)]
    if resume:
        args.append(str(resume))
    subprocess.run(args, check=True, env=env, capture_output=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("cell,optimizer", [("lstm", "adam"), ("gru", "rmsprop")])
def test_exact_resume_in_a_fresh_process(text_file, tmp_path, cell, optimizer):
    """Losses after resuming at step N equal the uninterrupted run's bit for bit (CPU)."""
    import os

    env = {**os.environ, "RNNLAB_CACHE": str(tmp_path / "cache")}
    base = dict(input=str(text_file), cell=cell, optimizer=optimizer, hidden_size=16,
                num_layers=2, dropout=0.3, batch_size=4, seq_len=16, eval_every=6,
                sample_length=10, threads=1, log_every=1, warmup_steps=3, max_steps=24,
                lr_schedule="cosine", decay_steps=24, grad_clip=0.5)  # fmt: skip
    full = {**base, "out_dir": str(tmp_path / "full")}
    run_in_fresh_process(full, env=env)
    # Stop at step 12 (mid-epoch, mid-stream), then resume to 24 in a new process.
    part = {**base, "out_dir": str(tmp_path / "part"), "max_steps": 12}
    run_in_fresh_process(part, env=env)
    run_in_fresh_process({"max_steps": 24}, resume=tmp_path / "part", env=env)
    a = read_metrics(tmp_path / "full")
    b = read_metrics(tmp_path / "part")
    assert [r["step"] for r in b] == list(range(1, 25))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r.get("val_loss") for r in a] == [r.get("val_loss") for r in b]
    ma = load_checkpoint(latest_checkpoint(tmp_path / "full")).model
    mb = load_checkpoint(latest_checkpoint(tmp_path / "part")).model
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_divergence_is_detected_and_a_truly_good_checkpoint_is_kept(text_file, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """A loss that explodes yet stays finite (as with a learning rate far too high) counts as a
    bad step once above ln(V) + 1 after warm-up; the run aborts and best/ is a healthy model."""
    cfg = small(text_file, tmp_path, max_steps=40, eval_every=5, sample_length=10,
                max_nonfinite=3)  # fmt: skip
    original = CharLM.forward
    calls = {"n": 0}

    def forward(self, idx, state=None):
        logits, state = original(self, idx, state)
        calls["n"] += self.training
        if calls["n"] > 12:  # from the 13th training step on, train and eval: finite but huge
            logits = logits * 1e6
        return logits, state

    monkeypatch.setattr(CharLM, "forward", forward)
    events = []
    with pytest.raises(TrainingError, match=r"3 diverged steps in a row .*ln\(V\)\+1.*best"):
        train(cfg, on_event=events.append)
    best = load_checkpoint(Path(cfg.out_dir) / "best")
    assert best.step == 10 and all(torch.isfinite(t).all() for t in best.model.values())
    assert latest_checkpoint(cfg.out_dir).name == "step-10"  # nothing after the divergence
    limit = math.log(len(set(TEXT))) + 1
    assert [e["reason"] for e in events if e["kind"] == "nonfinite"] == ["diverged"] * 3
    assert all(e["loss"] > limit for e in events if e["kind"] == "nonfinite")


def test_a_high_learning_rate_never_ends_in_a_diverged_final_checkpoint(text_file, tmp_path):
    cfg = small(text_file, tmp_path, max_steps=30, eval_every=10, lr=100.0, optimizer="sgd",
                grad_clip=0.0, warmup_steps=0, max_nonfinite=5)  # fmt: skip
    try:
        train(cfg)
    except TrainingError as e:
        assert "steps in a row" in str(e)
    limit = math.log(len(set(TEXT))) + 1
    for ckpt in [latest_checkpoint(cfg.out_dir), Path(cfg.out_dir) / "best"]:
        if ckpt is not None and ckpt.exists():
            records = {r["step"]: r for r in read_metrics(cfg.out_dir)}
            step = load_checkpoint(ckpt).step
            assert records[step].get("val_loss", 0.0) <= limit


def test_step_events_carry_throughput_and_an_eta_bounded_by_the_time_limit(text_file, tmp_path):
    events = []
    cfg = small(text_file, tmp_path, max_steps=10**6, max_minutes=0.02, eval_every=10**6,
                sample_length=0)  # fmt: skip
    train(cfg, on_event=events.append)
    steps = [e for e in events if e["kind"] == "step"]
    assert steps and all(e["chars_per_s"] > 0 and 0 <= e["eta_s"] <= 1.2 for e in steps)


def test_a_failing_training_sample_never_kills_the_run(text_file, tmp_path, monkeypatch):
    import rnnlab.tasks.char_lm as loop
    from rnnlab.sample import DecodingError

    def broken(*args, **kwargs):
        raise DecodingError("the model produced non-finite logits (NaN/inf) at character 0")

    monkeypatch.setattr(loop, "generate", broken)
    events = []
    result = train(small(text_file, tmp_path, max_steps=10, eval_every=5), on_event=events.append)
    assert result.step == 10
    samples = [e["text"] for e in events if e["kind"] == "sample"]
    assert samples and all(
        s.startswith("(no sample: the model produced non-finite") for s in samples
    )
