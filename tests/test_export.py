"""Exported one-step functions (ONNX through onnxruntime, torch.export) against the PyTorch model,
over a few hundred sampled characters with the state carried; the CLI and the NumPy-only example."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnlab.cells import CELLS
from rnnlab.cli import main
from rnnlab.data.vocab import Vocab
from rnnlab.export import ExportError, OneStep, export_model
from rnnlab.models import CharLM, CharLMConfig

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parent.parent
VOCAB = Vocab(tokens=sorted("abcdefgh \n"), kind="text")


def model_for(cell, num_layers=2):
    torch.manual_seed(0)
    return CharLM(CharLMConfig(len(VOCAB), cell=cell, hidden_size=12, num_layers=num_layers)).eval()


def walk(model, step_fn, steps=200, streams=3, seed=0):
    """Sample ``steps`` characters from the PyTorch model; feed the same tokens to ``step_fn``
    (state carried in both) and return the largest logit difference seen."""
    gen = torch.Generator().manual_seed(seed)
    token = torch.zeros(streams, dtype=torch.long)
    state = model.initial_state(streams)
    other = [*(state if isinstance(state, tuple) else (state,))]
    worst = 0.0
    with torch.no_grad():
        for _ in range(steps):
            logits, state = model.step(token, state)
            got, *other = step_fn(token, *other)
            worst = max(worst, float((torch.as_tensor(got) - logits).abs().max()))
            token = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
    return worst


@pytest.mark.parametrize(
    "cell", ["lstm", "gru", "mingru", "minlstm", "indrnn", "layernorm_lstm", "layernorm_gru"]
)
def test_onnx_step_equals_the_pytorch_step(cell, tmp_path):
    model = model_for(cell)
    written = export_model(model, VOCAB, tmp_path, "onnx")
    session = ort.InferenceSession(str(written.model))
    names = json.loads(written.description.read_text())["order"]["inputs"]
    assert [i.name for i in session.get_inputs()] == names

    def onnx_step(token, *state):
        feed = {
            "token": token.numpy(),
            **{
                n: s.numpy() if torch.is_tensor(s) else s
                for n, s in zip(names[1:], state, strict=True)
            },
        }
        return [torch.from_numpy(a) for a in session.run(None, feed)]  # fmt: skip

    assert walk(model, onnx_step) < 1e-5
    assert Vocab.load(written.vocab) == VOCAB


@pytest.mark.parametrize("cell", list(CELLS))
def test_torch_export_step_equals_the_pytorch_step(cell, tmp_path):
    model = model_for(cell)
    written = export_model(model, VOCAB, tmp_path, "torch")
    program = torch.export.load(str(written.model)).module()
    assert walk(model, lambda *args: program(*args), steps=50) < 1e-5


def test_the_callers_model_is_left_as_it_was(tmp_path):
    model = model_for("gru").double().train()
    export_model(model, VOCAB, tmp_path, "torch")
    assert model.training and model.head.weight.dtype == torch.float64


def test_bad_format_and_bidirectional():
    with pytest.raises(ExportError, match="format: expected one of onnx|torch"):
        export_model(model_for("gru"), VOCAB, "unused", "tflite")
    model = model_for("gru")
    model.rnn.bidirectional = True
    with pytest.raises(ExportError, match="bidirectional"):
        OneStep(model)


@pytest.mark.slow
def test_cli_export_and_the_numpy_only_example(tmp_path, cache_env, capsys):
    text = tmp_path / "in.txt"
    text.write_text("It was the best of times, it was the worst of times.\n" * 40)
    run = tmp_path / "run"
    fast = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--threads", "1"]
    assert main(["train", str(text), "--out-dir", str(run), "--max-steps", "5", *fast]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip()) == run / "export-onnx" / "model.onnx" and out.count("\n") == 1
    example = ROOT / "examples" / "sample_onnx.py"
    imported = {
        n.names[0].name.split(".")[0]
        for n in ast.walk(ast.parse(example.read_text()))
        if isinstance(n, ast.Import | ast.ImportFrom) and getattr(n, "names", None)
    }
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(example.read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert not imported & {"rnnlab", "torch"}  # onnxruntime and NumPy alone
    done = subprocess.run(
        [sys.executable, str(example), str(run / "export-onnx"), "--prime", "It was",
         "--length", "40"], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("It was") and len(done.stdout.rstrip("\n")) >= 40
    for temperature, rc in (("0", 0), ("-1", 2), ("nan", 2)):  # 0 is greedy (was: NaN probs)
        done = subprocess.run([sys.executable, str(example), str(run / "export-onnx"), "--prime",
                               "It", "--length", "5", "--temperature", temperature],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == rc and "Traceback" not in done.stderr, done.stderr
    assert main(["export", str(tmp_path / "nothing"), "--format", "torch"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    # a run directory may come from someone else: its links are refused, never followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.pt2").write_text("keep me")
    (run / "export-torch").symlink_to(outside)
    assert main(["export", str(run), "--format", "torch"]) == 2
    (run / "export-onnx" / "model.onnx").unlink()
    (run / "export-onnx" / "model.onnx").symlink_to(outside / "model.pt2")
    assert main(["export", str(run), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("symbolic link") == 2 and err.count("\n") == 2
    assert [p.read_text() for p in outside.iterdir()] == ["keep me"]


def test_export_model_stays_inside_its_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "export-torch").symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        export_model(model_for("gru"), VOCAB, tmp_path / "run" / "export-torch", "torch",
                     root=tmp_path / "run")  # fmt: skip
    assert list(outside.iterdir()) == []
