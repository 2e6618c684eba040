"""Hostile and damaged run directories (issue 9): every load path (sample, eval, train --resume)
refuses them with one line naming the file and the field, exit non-zero, no traceback, nothing
built from an unchecked config, and memory bounded for the size cases."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnlab.checkpoint import latest_checkpoint
from rnnlab.cli import main
from rnnlab.train import TrainConfig, train

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 120


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loading")
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLAB_CACHE", str(tmp / "cache"))
    (tmp / "in.txt").write_text(TEXT, encoding="utf-8")
    train(TrainConfig(input=str(tmp / "in.txt"), out_dir=str(tmp / "run"), hidden_size=16,
                      batch_size=4, seq_len=16, max_steps=4, eval_every=4, sample_length=0,
                      threads=1, warmup_steps=1))  # fmt: skip
    yield tmp / "run"
    mp.undo()


@pytest.fixture
def copy(run, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(run.parent / "cache"))
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def fix_manifest(checkpoint: Path, name: str) -> None:
    raw = (checkpoint / name).read_bytes()
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def edit_json(checkpoint: Path, name: str, edit) -> None:
    data = json.loads((checkpoint / name).read_text())
    edit(data)
    (checkpoint / name).write_text(json.dumps(data))
    fix_manifest(checkpoint, name)


def edit_safetensors(checkpoint: Path, edit_header=None, edit_tensors=None) -> None:
    """Rewrite model.safetensors: tensors edited as a dict, or the raw header edited as JSON."""
    file = checkpoint / "model.safetensors"
    if edit_tensors is not None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(file)
        edit_tensors(tensors)
        save_file(tensors, file)
    if edit_header is not None:
        data = file.read_bytes()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + n])
        edit_header(header)
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        file.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    fix_manifest(checkpoint, "model.safetensors")


def every_command(run_dir: Path, capsys, *fragments: str) -> None:
    """sample, eval and train --resume each give one line containing every fragment."""
    for args in (["sample", run_dir, "--length", "5"], ["eval", run_dir],
                 ["train", "--resume", run_dir, "--max-steps", "6"]):  # fmt: skip
        code = main([str(a) for a in args])
        _, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code != 0 and "Traceback" not in err, err
        errors = [line for line in lines if line.startswith("rnnlab: error:")]
        assert len(errors) == 1 and all(not line.startswith(" ") for line in lines), err
        for fragment in fragments:
            assert fragment in errors[0], (args[0], errors[0])


def latest(run_dir: Path) -> Path:
    return latest_checkpoint(run_dir)


def test_the_valid_run_loads_everywhere(copy, capsys):
    for args in (["sample", copy, "--length", "5"], ["eval", copy]):
        assert main([str(a) for a in args]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "field,value,expected",
    [("hidden_size", 10**12, "hidden_size: expected an integer in"),
     ("vocab_size", 10**12, "vocab_size: expected an integer in"),
     ("num_layers", 10**6, "num_layers: expected an integer in"),
     ("hidden_size", 8000, "expected shape"),
     ("hidden_size", "16", "hidden_size: expected an integer"),
     ("cell", "lstmx", "cell: expected one of"),
     ("bogus", 1, "bogus: expected a CharLMConfig field")],
)  # fmt: skip
def test_the_model_config_is_checked_before_anything_is_built(copy, capsys, field, value,
                                                               expected):  # fmt: skip
    for ckpt in (latest(copy), copy / "best"):
        edit_json(ckpt, "config.json", lambda c: c["model"].update({field: value}))
    every_command(copy, capsys, "config.json" if "shape" not in expected else "model.safetensors",
                  expected)  # fmt: skip


@pytest.mark.parametrize(
    "edit,fragments",
    [(lambda c: c.update(model=[1, 2]), ["config.json", "model: expected an object"]),
     (lambda c: c.pop("model"), ["config.json", "model: expected an object", "None"]),
     (lambda c: c.pop("train"), ["config.json", "train: expected an object"]),
     (lambda c: c["train"].update(batch_size="4"), ["config.json (train)", "batch_size"]),
     (lambda c: c["train"].update(lr=-1), ["config.json (train)", "lr: expected"])],
)  # fmt: skip
def test_config_schema_errors_name_file_and_field(copy, capsys, edit, fragments):
    for ckpt in (latest(copy), copy / "best"):
        edit_json(ckpt, "config.json", edit)
    if "train" in fragments[1] or "(train)" in fragments[0]:  # sample/eval need no train config
        code = main(["train", "--resume", str(copy), "--max-steps", "6"])
        _, err = capsys.readouterr()
        assert code == 2 and all(f in err for f in fragments) and len(err.splitlines()) == 1, err
    else:
        every_command(copy, capsys, *fragments)


def test_trainer_state_with_wrong_types_is_refused(copy, capsys):
    def edit(trainer):
        trainer["state"]["$dict"]["step"] = "four"

    edit_json(latest(copy), "trainer.json", edit)
    code = main(["train", "--resume", str(copy), "--max-steps", "6"])
    _, err = capsys.readouterr()
    assert code == 2 and "trainer.json: step: expected int, found 'four'" in err, err


@pytest.mark.parametrize(
    "tensors,fragments",
    [(lambda t: t.pop("head.bias"), ["model.safetensors", "head.bias: expected a tensor"]),
     (lambda t: t.update(extra=torch.zeros(2)), ["model.safetensors", "extra: expected no such"]),
     (lambda t: t.update({"head.bias": torch.zeros(3)}), ["head.bias: expected shape"]),
     (lambda t: t["head.bias"].fill_(float("nan")), ["head.bias: expected finite weights"]),
     (lambda t: t.update({"head.bias": t["head.bias"].double()}), ["expected dtype F32"])],
)  # fmt: skip
def test_tensors_are_checked_against_the_config(copy, capsys, tensors, fragments):
    for ckpt in (latest(copy), copy / "best"):
        edit_safetensors(ckpt, edit_tensors=tensors)
    every_command(copy, capsys, *fragments)


def test_f32_relabelled_i32_is_refused(copy, capsys):
    def relabel(header):
        for name, info in header.items():
            if name != "__metadata__":
                info["dtype"] = "I32"

    for ckpt in (latest(copy), copy / "best"):
        edit_safetensors(ckpt, edit_header=relabel)
    every_command(copy, capsys, "model.safetensors", "expected dtype F32, found I32")


def test_a_wrong_alias_is_refused(copy, capsys):
    for ckpt in (latest(copy), copy / "best"):
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["aliases"]["model.safetensors"] = {"head.weight": "nope"}
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    every_command(copy, capsys, "model.safetensors", "bad alias 'head.weight'")


@pytest.mark.parametrize("size", [20, 40])
def test_vocabulary_size_must_match_the_embedding(copy, capsys, size):
    def edit(vocab):
        vocab["tokens"] = [chr(c) for c in range(0x41, 0x41 + size)]
        vocab.pop("counts", None)

    for ckpt in (latest(copy), copy / "best"):
        edit_json(ckpt, "vocab.json", edit)
    every_command(copy, capsys, "vocab.json", "tokens: expected 29", f"found {size}")


def test_a_lone_surrogate_in_the_vocabulary_is_refused(copy, capsys):
    def edit(vocab):
        vocab["tokens"][-1] = "\ud800"

    for ckpt in (latest(copy), copy / "best"):
        edit_json(ckpt, "vocab.json", edit)
    every_command(copy, capsys, "vocab.json", "surrogate")


def test_a_huge_garbage_file_is_refused_from_its_header(copy, capsys):
    """A sparse 3 GB model.safetensors whose size matches the manifest: refused after reading
    8 bytes (the old loader read it all: 3.3 GB resident)."""
    for ckpt in (latest(copy), copy / "best"):
        file = ckpt / "model.safetensors"
        with open(file, "wb") as f:
            f.write(struct.pack("<Q", 2**40))
            f.truncate(3 * 10**9)
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"]["model.safetensors"]["size"] = 3 * 10**9
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    every_command(copy, capsys, "model.safetensors", "header length")


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_eval_refuses_what_is_not_a_regular_file(copy, capsys, tmp_path, target):
    if target == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    code = main(["eval", str(copy), str(target)])
    _, err = capsys.readouterr()
    assert code == 2 and "not a regular file" in err and len(err.splitlines()) == 1, err


def test_eval_after_the_training_file_was_edited_uses_the_original(copy, capsys):
    source = json.loads((latest(copy) / "config.json").read_text())["corpus"]["source"]
    assert main(["eval", str(copy)]) == 0
    before, _ = capsys.readouterr()
    original = Path(source).read_text(encoding="utf-8")
    try:
        Path(source).write_text("Zebras! " * 500 + original, encoding="utf-8")  # ids would shift
        assert main(["eval", str(copy)]) == 0
        after, err = capsys.readouterr()
        assert after == before and "changed since training" in err
    finally:
        Path(source).write_text(original, encoding="utf-8")


def test_eval_file_with_unseen_characters_suggests_nothing_eval_lacks(copy, capsys, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("héllo ☃ world", encoding="utf-8")
    code = main(["eval", str(copy), str(other)])
    _, err = capsys.readouterr()
    assert code == 2 and "'é'" in err and "--unknown" not in err, err


PEAK = """
import resource, sys
from rnnlab.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, code)
"""


@pytest.mark.slow
def test_peak_memory_of_hostile_configs_stays_near_a_valid_load(copy, tmp_path):
    """Measured: loading a hostile run costs at most 200 MB more than loading the valid one."""
    env = {**os.environ, "RNNLAB_CACHE": str(copy.parent / "cache"), "RNNLAB_NO_EXTENSION": "1"}

    def peak(run_dir):
        out = subprocess.run([sys.executable, "-c", PEAK, "eval", str(run_dir)], env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        mb, code = out.stdout.split()[-2:]
        return int(mb), int(code)

    valid, code = peak(copy)
    assert code == 0
    for field, value in [("hidden_size", 8000), ("num_layers", 64), ("hidden_size", 10**12),
                         ("vocab_size", 10**12)]:  # fmt: skip
        hostile = tmp_path / f"{field}-{value}"
        shutil.copytree(copy, hostile)
        for ckpt in (latest(hostile), hostile / "best"):
            edit_json(ckpt, "config.json", lambda c, f=field, v=value: c["model"].update({f: v}))
        mb, code = peak(hostile)
        assert code == 2 and mb <= valid + 200, (field, value, mb, valid)
