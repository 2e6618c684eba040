"""Tests for rnnlab.checkpoint: exact round trips, atomic saves, retention and hostile files."""

from __future__ import annotations

import builtins
import copy
import hashlib
import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rnnlab.checkpoint as ckpt_mod
from rnnlab.checkpoint import (
    CheckpointError,
    flatten_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_safetensors,
    resolve_checkpoint,
    save_checkpoint,
    unflatten_state,
)

FILES = {
    "config.json",
    "model.safetensors",
    "vocab.json",
    "trainer.safetensors",
    "trainer.json",
    "manifest.json",
}
CONFIG = {"cell": "lstm", "hidden_size": 8, "num_layers": 1}
VOCAB = {"chars": list("abc\r\n☃")}


def assert_same(a, b, path="state"):
    """Exact equality: same types (keys included), same dtypes and shapes, identical bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), path
        bits = [t.detach().reshape(-1).contiguous().view(torch.uint8) for t in (a, b)]
        assert torch.equal(*bits), path
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        ), path
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def json_trip(tree):
    return json.loads(json.dumps(tree, allow_nan=False))


def small_model():
    return {"weight": torch.randn(4, 3), "bias": torch.zeros(4)}


def save(run_dir, step, **kw):
    if "model" not in kw:  # not setdefault: drawing weights would advance the torch RNG
        kw["model"] = small_model()
    return save_checkpoint(run_dir, step, config=CONFIG, vocab=VOCAB, **kw)


def rewrite_manifest(step_dir: Path) -> None:
    """Make the manifest match the files again, as a writer that did not check would."""
    manifest = json.loads((step_dir / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (step_dir / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (step_dir / "manifest.json").write_text(json.dumps(manifest))


# --- flatten_state / unflatten_state -------------------------------------------------------------


def test_flatten_round_trip_is_exact():
    shared = torch.arange(6.0).reshape(2, 3)
    state = {
        "ints": {0: {"step": torch.tensor(2.0)}, 10: "ten", "0": "str zero"},
        "floats": [0.1, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, 5e-324],
        "misc": (None, True, False, 0, -(2**70), "", "é☃"),
        "dtypes": [
            torch.tensor(3, dtype=torch.int64),
            torch.randn(2, 2).to(torch.bfloat16),
            torch.tensor([True, False]),
            torch.tensor([0, 255], dtype=torch.uint8),
            torch.randn(3, dtype=torch.complex64),
            torch.randn(3, 4).t(),  # non-contiguous
            torch.zeros(0, 5),
        ],
        "shared": [shared, shared],
        "numpy": {
            "u32": np.arange(5, dtype=np.uint32),
            "u64": np.array([2**64 - 1], dtype=np.uint64),
            "f16": np.array([[0.5, -1.0]], dtype=np.float16),
            "be": np.array([1.5, -2.25], dtype=">f8"),
            "bool0d": np.array(True),
            "i64": np.int64(-7),
            "f32": np.float32(0.1),
            "f64": np.float64("nan"),
            "b": np.bool_(True),
        },
        "nested": [[[]], {}, ()],
    }
    tensors, tree = flatten_state(state)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    back = unflatten_state(tensors, json_trip(tree))
    assert_same(state, back)
    assert back["shared"][0] is back["shared"][1]
    assert back["ints"][0]["step"].dim() == 0


def test_flatten_through_a_checkpoint_is_exact(tmp_path):
    state = {"opt": {0: {"m": torch.randn(3, dtype=torch.float64)}}, "rng": random.getstate()}
    tensors, tree = flatten_state(state)
    path = save(tmp_path, 1, trainer_tensors=tensors, trainer={"state": tree})
    loaded = load_checkpoint(path)
    assert_same(state, unflatten_state(loaded.trainer_tensors, loaded.trainer["state"]))


@pytest.mark.parametrize(
    "bad",
    [{1, 2}, b"bytes", namedtuple("P", "x")(1), {1.5: 0}, {(1, 2): 0}, object(), 1 + 2j],
)
def test_flatten_rejects_what_it_cannot_restore_exactly(bad):
    with pytest.raises(TypeError, match="state at"):
        flatten_state({"x": [bad]})


@pytest.mark.parametrize(
    "tree",
    [{"$eval": "1"}, {"$tensor": "missing"}, {"a": 1, "b": 2}, {"$pairs": [[1.5, 0]]}],
)
def test_unflatten_rejects_malformed_trees(tree):
    with pytest.raises(CheckpointError, match="state at"):
        unflatten_state({}, tree)


# --- exact resume: model, Adam, schedulers, RNGs -------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8)
        self.head = nn.Linear(8, 5)


def make_run(seed: int, schedule: str):
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if schedule == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    return model, opt, sched


def train_step(model, opt, sched, gen):
    # Every RNG the trainer may use feeds the loss, so a missed RNG state changes it.
    x = torch.randn(6, 3, 4)  # (T, B, E)
    scale = 1 + random.random() + np.random.rand() + gen.random()
    out, _ = model.lstm(x)  # (T, B, H)
    out = F.dropout(out, 0.3, training=True)
    loss = model.head(out).pow(2).mean() * scale
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


@pytest.mark.parametrize("schedule", ["lambda", "cosine"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, schedule):
    model, opt, sched = make_run(0, schedule)
    random.seed(1)
    np.random.seed(2)
    gen = np.random.default_rng(3)
    for _ in range(2):
        train_step(model, opt, sched, gen)
    hidden = (torch.randn(1, 3, 8), torch.randn(1, 3, 8))  # (L, B, H): drawn before the RNG state
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "generator": gen.bit_generator.state,
        },
        "step": 2,
        "cursor": [0, 17],
        "hidden": hidden,
        "history": [1.25, float("nan")],
    }
    expected = copy.deepcopy(state)
    tensors, tree = flatten_state(state)
    path = save(tmp_path, 2, model=model.state_dict(), trainer_tensors=tensors, trainer=tree)
    losses_a = [train_step(model, opt, sched, gen) for _ in range(3)]

    # A fresh run with other weights and RNG states, restored from the checkpoint.
    loaded = load_checkpoint(path)
    restored = unflatten_state(loaded.trainer_tensors, loaded.trainer)
    assert_same(expected, restored)
    assert restored["optimizer"]["state"][0]["step"].item() == 2.0
    model_b, opt_b, sched_b = make_run(99, schedule)
    model_b.load_state_dict(loaded.model)
    opt_b.load_state_dict(restored["optimizer"])
    sched_b.load_state_dict(restored["scheduler"])
    torch.set_rng_state(restored["rng"]["torch"])
    random.setstate(restored["rng"]["python"])
    np.random.set_state(restored["rng"]["numpy"])
    gen_b = np.random.default_rng()
    gen_b.bit_generator.state = restored["rng"]["generator"]
    losses_b = [train_step(model_b, opt_b, sched_b, gen_b) for _ in range(3)]

    assert losses_a == losses_b
    assert_same(dict(model.state_dict()), dict(model_b.state_dict()))
    assert opt.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]


# --- files, aliases, dtypes ----------------------------------------------------------------------


def test_checkpoint_layout_and_manifest(tmp_path):
    path = save(tmp_path, 40)
    assert path == tmp_path / "step-40"
    assert {p.name for p in path.iterdir()} == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-40"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["step"] == 40
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    loaded = load_checkpoint(path)
    assert (loaded.step, loaded.config, loaded.vocab, loaded.trainer) == (40, CONFIG, VOCAB, {})
    assert loaded.trainer_tensors == {}


def test_tied_weights_stay_tied_and_are_stored_once(tmp_path):
    emb = nn.Embedding(1000, 64)
    head = nn.Linear(64, 1000)
    head.weight = emb.weight  # weight tying (Press & Wolf 2017)
    model = {**{f"embedding.{k}": v for k, v in emb.state_dict().items()}}
    model.update({f"head.{k}": v for k, v in head.state_dict().items()})
    path = save(tmp_path, 1, model=model)
    loaded = load_checkpoint(path).model
    assert loaded["head.weight"].data_ptr() == loaded["embedding.weight"].data_ptr()
    assert loaded["head.weight"] is loaded["embedding.weight"]
    assert torch.equal(loaded["head.weight"], emb.weight.detach())
    on_disk = read_safetensors(path / "model.safetensors")
    assert set(on_disk) == {"embedding.weight", "head.bias"}
    assert (path / "model.safetensors").stat().st_size < 1.1 * 1000 * 64 * 4


def test_overlapping_views_that_are_not_ties_are_stored_separately(tmp_path):
    w = torch.randn(4, 6)
    model = {"w": w, "flat": w.view(-1), "rows": w[1:3], "t": w.t(), "p": nn.Parameter(w)}
    loaded = load_checkpoint(save(tmp_path, 1, model=model)).model
    for k, v in model.items():
        assert_same(v.detach().contiguous(), loaded[k], k)
    assert loaded["w"] is not loaded["flat"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_checkpoint_loads_on_cpu(tmp_path):
    w = torch.randn(3, 3, device="cuda")
    loaded = load_checkpoint(save(tmp_path, 1, model={"w": w, "tied": w})).model
    assert loaded["w"].device.type == "cpu" and loaded["w"] is loaded["tied"]
    assert torch.equal(loaded["w"], w.cpu())


# --- hostile and damaged files -------------------------------------------------------------------


class Payload:
    """Unpickling this creates a marker file: proof that something executed code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Payload(probe)))  # the payload is live: unpickling runs it
    assert probe.exists()

    marker = tmp_path / "pwned"
    path = save(tmp_path / "run", 5)
    raw = pickle.dumps({"weight": Payload(marker)})
    zipped = tmp_path / "zipped.pt"
    torch.save({"weight": Payload(marker)}, zipped)  # the zip format torch writes
    for payload in (raw, zipped.read_bytes()):
        (path / "model.safetensors").write_bytes(payload)
        (path / "model.pt").write_bytes(payload)
        with pytest.raises(CheckpointError, match=r"model\.safetensors.*(size|checksum)"):
            load_checkpoint(path)
        rewrite_manifest(path)  # a manifest that vouches for the pickle
        with pytest.raises(CheckpointError, match=r"model\.safetensors: header length"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match=r"model\.safetensors"):
            read_safetensors(path / "model.safetensors")
        with pytest.raises(CheckpointError):
            load_checkpoint(resolve_checkpoint(tmp_path / "run"))
    assert not marker.exists()


def test_loading_never_calls_the_pickle_loader(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("rnnlab called the pickle-based loader")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_checkpoint(save(tmp_path, 1, trainer_tensors={"x": torch.ones(2)}))


def test_one_flipped_byte_is_a_checksum_mismatch(tmp_path):
    path = save(tmp_path, 40, model={"w": torch.randn(64, 64)})
    file = path / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data, not the header
    file.write_bytes(bytes(data))
    read_safetensors(file)  # safetensors alone does not notice: hence the manifest
    with pytest.raises(CheckpointError, match=r"step-40/model\.safetensors: checksum mismatch"):
        load_checkpoint(path)


def header(obj) -> bytes:
    raw = json.dumps(obj).encode()
    return len(raw).to_bytes(8, "little") + raw


GOOD_HEADER = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
MALFORMED = {
    "zero-length": (b"", "truncated"),
    "truncated header": (header(GOOD_HEADER)[:20], "exceeds the file size"),
    "truncated data": (header(GOOD_HEADER) + b"\0" * 4, "outside the file"),
    "header length > file size": ((1000).to_bytes(8, "little") + b"{}", "exceeds the file size"),
    "header > 100 MB": ((200_000_000).to_bytes(8, "little") + b"{}" * 10, "byte limit"),
    "garbage header": ((4).to_bytes(8, "little") + b"\xff\xfe{[", "not valid JSON"),
    "header not an object": (header([1, 2]), "not a JSON object"),
    "bad dtype": (header({"w": {**GOOD_HEADER["w"], "dtype": "X9"}}) + b"\0" * 8, "invalid"),
    "shape vs bytes": (header({"w": {**GOOD_HEADER["w"], "shape": [3]}}) + b"\0" * 8, "invalid"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_safetensors_give_a_clean_error(tmp_path, case):
    data, message = MALFORMED[case]
    file = tmp_path / "model.safetensors"
    file.write_bytes(data)
    with pytest.raises(CheckpointError, match=message):
        read_safetensors(file)
    path = save(tmp_path / "run", 3)
    (path / "model.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match="size|checksum"):
        load_checkpoint(path)
    rewrite_manifest(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=2), "unknown format_version 2"),
        (lambda m: m.pop("files"), "missing required key 'files'"),
        (lambda m: m.pop("step"), "missing required key 'step'"),
        (lambda m: m.update(step=41), "records step 41"),
        (lambda m: m["files"].pop("vocab.json"), "must list exactly"),
        (lambda m: m["files"].update({"../../etc/passwd": {"sha256": "", "size": 0}}), "exactly"),
        (lambda m: m["aliases"].update({"model.safetensors": {"x": "missing"}}), "bad alias"),
    ],
)
def test_bad_manifest_is_refused(tmp_path, edit, message):
    path = save(tmp_path, 40)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_manifest_that_is_not_json_is_refused(tmp_path):
    path = save(tmp_path, 1)
    (path / "manifest.json").write_bytes(b"{NaN")
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        load_checkpoint(path)


def test_config_schema_missing_and_extra_keys(tmp_path):
    path = save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="config.json: missing required key.*dropout"):
        load_checkpoint(path, required_config_keys=[*CONFIG, "dropout"])
    with pytest.warns(UserWarning, match="unknown key.*num_layers"):
        loaded = load_checkpoint(path, required_config_keys=["cell", "hidden_size"])
    assert loaded.config == CONFIG  # the extra key is kept


# --- atomicity, retention, ordering --------------------------------------------------------------


def test_keep_last_three_plus_best(tmp_path):
    for step in range(0, 60, 10):
        save(tmp_path, step, keep_last=3, is_best=step == 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step-30", "step-40", "step-50"]
    assert load_checkpoint(resolve_checkpoint(tmp_path, which="best")).step == 10
    assert list_checkpoints(tmp_path) == [tmp_path / f"step-{s}" for s in (30, 40, 50)]


def test_failed_save_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
    for step in range(0, 50, 10):
        save(tmp_path, step, keep_last=3)
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:  # after two files are on disk
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        save(tmp_path, 50, keep_last=3)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-20", "step-30", "step-40"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-40"
    for p in list_checkpoints(tmp_path):
        load_checkpoint(p)


def test_resume_source_survives_until_the_next_checkpoint_is_complete(tmp_path, monkeypatch):
    save(tmp_path, 10)

    def broken(*args, **kwargs):
        raise RuntimeError("serializer crashed")

    monkeypatch.setattr(ckpt_mod.safetensors.torch, "save", broken)
    with pytest.raises(RuntimeError):
        save(tmp_path, 20, keep_last=1)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-10"]
    save(tmp_path, 20, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-20"]


def test_leftover_temp_dirs_are_ignored_then_removed(tmp_path):
    save(tmp_path, 10)
    killed = tmp_path / ".tmp-step-20-4242"  # a save killed before its rename
    killed.mkdir()
    for name in FILES:  # complete-looking, still never used
        (killed / name).write_bytes((tmp_path / "step-10" / name).read_bytes())
    (tmp_path / ".tmp-old-step-5-4242").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    assert list_checkpoints(tmp_path) == [tmp_path / "step-10"]
    save(tmp_path, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-10", "step-30"]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 10, model={"w": torch.zeros(2)}, is_best=True)
    save(tmp_path, 10, model={"w": torch.ones(2)}, is_best=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step-10"]
    for which in ("latest", "best"):
        assert torch.equal(
            load_checkpoint(resolve_checkpoint(tmp_path, which)).model["w"], torch.ones(2)
        )


def test_latest_is_by_integer_step_not_name_or_mtime(tmp_path):
    steps = [900, 1000, 9900, 10000]
    for step in steps:
        save(tmp_path, step, keep_last=None)
    now = time.time()
    for i, step in enumerate(steps):  # the oldest step gets the newest mtime
        os.utime(tmp_path / f"step-{step}", (now - 100 * i, now - 100 * i))
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10000"
    assert list_checkpoints(tmp_path) == [tmp_path / f"step-{s}" for s in steps]


@pytest.mark.parametrize("damage", ["manifest", "file", "truncate"])
def test_incomplete_latest_is_skipped_with_a_warning(tmp_path, damage):
    save(tmp_path, 10)
    newest = save(tmp_path, 20)
    if damage == "manifest":
        (newest / "manifest.json").unlink()
    elif damage == "file":
        (newest / "trainer.json").unlink()
    else:
        (newest / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning, match="step-20"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    with pytest.warns(UserWarning):
        assert resolve_checkpoint(tmp_path) == tmp_path / "step-10"
    with pytest.raises(CheckpointError, match="step-20"):
        resolve_checkpoint(newest)
    if damage == "manifest":
        with pytest.raises(CheckpointError, match="incomplete checkpoint"):
            load_checkpoint(newest)


def test_resolve_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no complete step-N checkpoint"):
        resolve_checkpoint(tmp_path)
    save(tmp_path, 3)
    with pytest.raises(CheckpointError, match="no best/"):
        resolve_checkpoint(tmp_path, which="best")
    assert resolve_checkpoint(tmp_path / "step-3") == tmp_path / "step-3"


def test_fsync_reaches_every_file_and_the_directories(tmp_path, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name file descriptors")
    synced, real_fsync = [], os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save(tmp_path, 7)
    tmp = str(tmp_path / f".tmp-step-7-{os.getpid()}")
    assert {f"{tmp}/{name}" for name in FILES} <= set(synced)
    assert tmp in synced  # the directory holding the new files
    assert str(tmp_path) in synced  # the run directory, after the rename
    assert synced.index(f"{tmp}/manifest.json") == len(FILES) - 1  # the marker comes last


def test_save_ignores_a_read_only_tmpdir(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    monkeypatch.setenv("TMPDIR", str(ro))
    monkeypatch.setattr(tempfile, "tempdir", None)

    def no_tmp(*args, **kwargs):
        raise PermissionError("TMPDIR is read-only")

    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, no_tmp)
    path = save(tmp_path / "run", 1, is_best=True)
    assert load_checkpoint(path).step == 1
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_model_is_never_persisted(tmp_path, bad):
    save(tmp_path, 10)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step-10").iterdir()}
    model = small_model()
    model["weight"][1, 2] = bad
    with pytest.raises(CheckpointError, match="'weight' contains NaN or inf"):
        save(tmp_path, 20, model=model)
    assert [p.name for p in tmp_path.iterdir()] == ["step-10"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "step-10").iterdir()} == before


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"trainer": {"state": {0: 1}}}, TypeError),  # JSON would turn 0 into "0"
        ({"trainer": {"t": torch.ones(1)}}, TypeError),
        ({"trainer": {"loss": float("nan")}}, ValueError),
        ({"trainer_tensors": {"x": [1.0]}}, TypeError),
        ({"step": -1}, ValueError),
        ({"keep_last": 0}, ValueError),
        ({"trainer_tensors": {"z": torch.zeros(2, dtype=torch.complex128)}}, TypeError),
    ],
)
def test_bad_inputs_are_refused_before_writing(tmp_path, kwargs, error):
    step = kwargs.pop("step", 1)
    with pytest.raises(error):
        save(tmp_path, step, **kwargs)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_no_unsafe_loaders_in_the_source():
    src = Path(ckpt_mod.__file__).parents[1]  # all of rnnlab
    forbidden = [  # safetensors.torch.load (bytes -> tensors) is fine; torch's own loader is not
        r"pickle\.load",
        r"weights_only\s*=\s*False",
        r"(?<![\w.])torch\.load\(",
        r"yaml\.load\(",
    ]
    files = sorted(src.rglob("*.py"))
    assert Path(ckpt_mod.__file__) in files
    offenders = [
        f"{f.relative_to(src)}: {pattern}"
        for f in files
        for pattern in forbidden
        if re.search(pattern, f.read_text(encoding="utf-8"))
    ]
    assert offenders == []


# --- kill -9 during save -------------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys, torch
    from rnnlab.checkpoint import save_checkpoint
    run_dir, start = sys.argv[1], int(sys.argv[2])
    for step in range(start, start + 1000):
        model = {"w": torch.full((3_000_000,), float(step)), "tied": None}
        model["tied"] = model["w"]
        save_checkpoint(run_dir, step, model=model, config={"step": step}, vocab={},
                        keep_last=2, is_best=step % 2 == 0)
    """
)


@pytest.mark.slow
def test_kill_9_during_save_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(0)
    run_dir, start = tmp_path / "run", 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(run_dir), str(start)])
        deadline = time.time() + 120
        while (latest := latest_checkpoint(run_dir)) is None or int(latest.name[5:]) < start:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))  # the kill lands anywhere in the save loop
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # never a partial step-N directory
            loaded = load_checkpoint(resolve_checkpoint(run_dir))
        assert loaded.model["w"] is loaded.model["tied"]
        assert bool((loaded.model["w"] == float(loaded.step)).all())
        assert loaded.config == {"step": loaded.step}
        start = loaded.step + 1
