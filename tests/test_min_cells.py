"""minGRU and minLSTM (Feng et al. 2024): every backend against a naive per-equation loop written
here (float64 values and gradients, gradcheck), the parallel scan against the one-step recurrence
(non-zero state, TBPTT chunks, lengths, float32 < 1e-5), and the char-LM training and resuming."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rnnlab import Recurrent
from rnnlab.cells import SCAN_CELLS, cell_class
from rnnlab.scan import linear_scan
from rnnlab.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("cache_env")  # tests/conftest.py
BACKENDS = ["reference", "fused", "auto"]


# ---------------------------------------------------------------------------------------------
# The paper's equations, written out per element of the step, independently of rnnlab.cells.
# ---------------------------------------------------------------------------------------------


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def g(v: float) -> float:  # Feng et al. 2024, appendix B: positive, a + 0.5 above zero
    return v + 0.5 if v >= 0 else sigmoid(v)


def naive_layer(cell, x, h0, weight, bias):
    """x (T, B, I), h0 (B, H), weight (G, I), bias (G,) -> outputs (T, B, H): loops over every
    time step, sequence and unit, one scalar equation at a time (differentiable through torch)."""
    T, B, _ = x.shape
    H = h0.shape[1]
    h = [[h0[b, j] for j in range(H)] for b in range(B)]
    out = []
    for t in range(T):
        a = x[t] @ weight.T + bias  # (B, G): every gate's pre-activation, of x alone
        for b in range(B):
            for j in range(H):
                if cell == "mingru":
                    z = 1 / (1 + torch.exp(-a[b, j]))
                    n = a[b, H + j] + 0.5 if a[b, H + j] >= 0 else 1 / (1 + torch.exp(-a[b, H + j]))
                    h[b][j] = (1 - z) * h[b][j] + z * n
                else:
                    f = 1 / (1 + torch.exp(-a[b, j]))
                    i = 1 / (1 + torch.exp(-a[b, H + j]))
                    c = a[b, 2 * H + j]
                    cand = c + 0.5 if c >= 0 else 1 / (1 + torch.exp(-c))
                    h[b][j] = f / (f + i) * h[b][j] + i / (f + i) * cand
        out.append(torch.stack([torch.stack(row) for row in h]))
    return torch.stack(out)


def scaled(module: Recurrent, factor: float) -> Recurrent:
    """Weights scaled up, so gates saturate and candidates take both branches of g."""
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)
    return module


# ---------------------------------------------------------------------------------------------
# Every backend against the naive loop, float64.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", SCAN_CELLS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_equals_the_naive_loop_in_values_and_gradients(cell, backend):
    torch.manual_seed(0)
    rnn = scaled(Recurrent(cell, 3, 4, num_layers=2, backend=backend, dtype=torch.float64), 3.0)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)  # either sign
    out, h_n = rnn(x, h0)
    layer0 = naive_layer(cell, x, h0[0], rnn.weight_ih_l0, rnn.bias_ih_l0)
    expected = naive_layer(cell, layer0, h0[1], rnn.weight_ih_l1, rnn.bias_ih_l1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n, torch.stack([layer0[-1], expected[-1]]))
    weights = list(rnn.parameters())
    probe = torch.randn_like(out)
    got = torch.autograd.grad((out * probe).sum() + h_n.sum(), [x, h0, *weights])
    want = torch.autograd.grad(
        (expected * probe).sum() + layer0[-1].sum() + expected[-1].sum(), [x, h0, *weights]
    )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", SCAN_CELLS)
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_gradcheck_with_lengths_bidirectional_and_condition(cell, backend):
    torch.manual_seed(1)
    rnn = Recurrent(cell, 3, 2, bidirectional=True, condition_size=2, backend=backend,
                    dtype=torch.float64)  # fmt: skip
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    names = [n for n, _ in rnn.named_parameters()]

    def f(x, h0, v, *params):
        p = dict(zip(names, params, strict=True))
        out, h_n = torch.func.functional_call(rnn, p, (x, h0), {"lengths": lengths,
                                                                "condition": v})  # fmt: skip
        return out, h_n

    assert torch.autograd.gradcheck(f, (x, h0, v, *rnn.parameters()))


def test_native_is_refused_and_auto_runs_the_loop_on_cpu():
    for cell in SCAN_CELLS:
        with pytest.raises(ValueError, match="'native' supports"):
            Recurrent(cell, 3, 4, backend="native")
        assert Recurrent(cell, 3, 4).resolved_backend("cpu") == "reference"
        assert Recurrent(cell, 3, 4).resolved_backend("cuda") == "fused"
        assert Recurrent(cell, 3, 4, backend="fused").resolved_backend("cuda") == "fused"
    assert set(cell_class("mingru")(3, 4).state_dict()) == {"weight_ih", "bias_ih"}
    assert cell_class("minlstm")(3, 4).weight_ih.shape == (12, 3)
    assert set(dict(Recurrent("mingru", 3, 4, bias=False).named_parameters())) == {"weight_ih_l0"}


# ---------------------------------------------------------------------------------------------
# The parallel scan against the one-step recurrence, float32.
# ---------------------------------------------------------------------------------------------


def pair(cell, factor=1.0, **options):
    torch.manual_seed(2)
    scan = scaled(Recurrent(cell, 8, 16, backend="fused", **options), factor)
    loop = Recurrent(cell, 8, 16, backend="reference", **options)
    loop.load_state_dict(scan.state_dict())
    return scan, loop


@pytest.mark.parametrize("cell", SCAN_CELLS)
@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_scan_equals_step_by_step_from_a_nonzero_state_across_chunks(cell, factor):
    """The scan, run in TBPTT chunks of 40 steps with the state carried, equals ``step`` called
    200 times from the same non-zero state (float32, < 1e-5), and so does its gradient."""
    scan, _ = pair(cell, factor, num_layers=2)
    x = torch.randn(200, 4, 8)
    h0 = 3 * torch.randn(2, 4, 16)  # large, both signs
    with torch.no_grad():
        state, outputs = h0, []
        for x_t in x:
            y, state = scan.step(x_t, state)
            outputs.append(y)
        stepped, stepped_state = torch.stack(outputs), state
        state, chunks = h0, []
        for chunk in x.split(40):
            y, state = scan(chunk, state)
            chunks.append(y)
    assert (torch.cat(chunks) - stepped).abs().max() < 1e-5
    assert (state - stepped_state).abs().max() < 1e-5


@pytest.mark.parametrize("cell", SCAN_CELLS)
def test_scan_and_loop_agree_in_float32_values_and_gradients(cell):
    scan, loop = pair(cell, 2.0, num_layers=2, bidirectional=True)
    x = torch.randn(150, 5, 8)
    h0 = torch.randn(4, 5, 16)
    lengths = torch.tensor([150, 1, 77, 149, 33])
    results = []
    for m in (scan, loop):
        xs, hs = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, h_n = m(xs, hs, lengths=lengths)
        (out.sin().sum() + h_n.cos().sum()).backward()
        results.append((out, h_n, xs.grad, hs.grad, *(p.grad for p in m.parameters())))
    for a, b in zip(*results, strict=True):
        a, b = a.detach(), b.detach()
        assert (a - b).abs().max() < 1e-5 * max(1.0, float(b.abs().max()))


def test_linear_scan_is_the_recurrence_for_any_length_and_sign():
    torch.manual_seed(3)
    log_a = -torch.rand(70, 2, 3, dtype=torch.float64) * 5
    log_b = torch.randn(70, 2, 3, dtype=torch.float64)
    h0 = torch.randn(2, 3, dtype=torch.float64) * 10
    h, expected = h0, []
    for la, lb in zip(log_a, log_b, strict=True):
        h = la.exp() * h + lb.exp()
        expected.append(h)
    for T in (1, 2, 3, 64, 70):  # powers of two and not
        torch.testing.assert_close(linear_scan(log_a[:T], log_b[:T], h0), torch.stack(expected[:T]))


# ---------------------------------------------------------------------------------------------
# Step, trace, condition.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", SCAN_CELLS)
def test_step_and_trace_on_every_path(cell):
    scan, loop = pair(cell, num_layers=2, condition_size=3)
    x, v = torch.randn(9, 2, 8), torch.randn(2, 3)
    out, h_n = loop(x, condition=v)
    state, ys = None, []
    with torch.no_grad():
        for x_t in x:
            y, state = scan.step(x_t, state, condition=v)
            ys.append(y)
    torch.testing.assert_close(torch.stack(ys), out.detach())
    names = {"mingru": {"z", "n", "h"}, "minlstm": {"f", "i", "g", "h"}}[cell]
    traced = []
    for m, grad in ((scan, False), (scan, True), (loop, True)):
        with torch.set_grad_enabled(grad):
            o, _, gates = m.trace(x, condition=v, lengths=torch.tensor([9, 4]))
        assert [set(layer) for layer in gates] == [names, names]
        torch.testing.assert_close(gates[-1]["h"], o)
        assert gates[0]["h"][4:, 1].abs().max() == 0  # past the second sequence's end
        traced.append(gates)
    for gates in traced[1:]:
        for a, b in zip(traced[0], gates, strict=True):
            for n in names:
                torch.testing.assert_close(a[n], b[n])
    if cell == "minlstm":  # the traced gates are the normalised ones
        torch.testing.assert_close(traced[0][0]["f"] + traced[0][0]["i"],
                                   (torch.arange(9) < torch.tensor([[9], [4]])).T.float()
                                   .unsqueeze(-1).expand(9, 2, 16))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The char-LM: trains, resumes exactly, samples.
# ---------------------------------------------------------------------------------------------


def read_losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if "train_loss" in line]


@pytest.mark.parametrize("cell,backend", [("mingru", "fused"), ("minlstm", "auto")])
def test_char_lm_trains_and_resumes_exactly(cell, backend, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 80)
    base = dict(input=str(text), cell=cell, backend=backend, hidden_size=16, num_layers=2,
                batch_size=4, seq_len=16, eval_every=4, sample_length=10, threads=1,
                log_every=1, warmup_steps=2, max_steps=8, decay_steps=8, dropout=0.2,
                lr=2e-2)  # fmt: skip
    train(TrainConfig(**base, out_dir=str(tmp_path / "full")))
    train(TrainConfig(**{**base, "max_steps": 4}, out_dir=str(tmp_path / "part")))
    train(resume=str(tmp_path / "part"), changes={"max_steps": 8})
    full, part = read_losses(tmp_path / "full"), read_losses(tmp_path / "part")
    assert len(full) == 8 and full == part
    assert full[-1] < full[0]  # it learns


def test_cells_and_gradients_commands_read_a_mingru_run(tmp_path, capsys):
    from rnnlab.cli import main

    text = "".join(f'if (x > {i}) {{ return "s{i}"; }}\n' for i in range(300))
    (tmp_path / "train.txt").write_text(text[:6000])
    (tmp_path / "held.txt").write_text(text[6000:])
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", str(tmp_path / "train.txt"), "--out-dir", str(run), "--cell", "mingru",
                 "--hidden-size", "8", "--batch-size", "4", "--seq-len", "16", "--max-steps", "8",
                 "--eval-every", "4", "--sample-length", "0", "--threads", "1"]) == 0  # fmt: skip
    assert main(["cells", str(run), "--text", str(tmp_path / "held.txt"), "--out", str(out),
                 "--view-chars", "200"]) == 0  # fmt: skip
    payload = json.loads((out / "cells.json").read_text())
    assert set(payload["saturation"]["layers"]["L0"]) == {"z"}  # its one sigmoid gate
    assert (out / "saturation.png").stat().st_size > 1000
    assert main(["gradients", str(run), "--steps", "10", "--out", str(out)]) == 0
    report = json.loads((out / "gradients.json").read_text())
    assert [h["layers"] for h in report["singular_values"]] == [[{"W_hh": 0.0}]] * 2
    assert main(["gradients", "--cells", "mingru,minlstm", "--steps", "10", "--hidden-size", "8",
                 "--out", str(out)]) == 0  # fmt: skip
    assert set(json.loads((out / "gradients.json").read_text())["fresh"]) == set(SCAN_CELLS)
    assert "trained mingru" in capsys.readouterr().out
