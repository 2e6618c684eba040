"""IndRNN (Li et al. 2018) and the LayerNorm LSTM / GRU (Ba et al. 2016, haste's forms): every
backend of ``Recurrent`` against naive per-equation loops written here (values and gradients in
float64, sequence by sequence, each at its own length, both directions, conditioning), gradcheck,
``step`` against ``forward``, ``trace``'s gates, IndRNN's recurrent-weight bound, and a char-LM
trained through ``rnnlab train`` that resumes bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnlab.analysis.gradients import largest_singular_values
from rnnlab.cells import (
    CELLS,
    IndRNNCell,
    indrnn_recurrent_bound,
)
from rnnlab.cli import main
from rnnlab.kernels import choose_backend, extension_status
from rnnlab.recurrent import Recurrent
from rnnlab.runs import load_run

NEW_CELLS = ("indrnn", "layernorm_lstm", "layernorm_gru")
BACKENDS = ("reference", "fused", "auto")
EPS = 1e-5
D64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the naive loops: one sequence (T, I), one step at a time, every equation written out ------


def sigmoid(a):
    return 1 / (1 + torch.exp(-a))


def layer_norm(a, gain, shift=None):
    """(a - mean) / sqrt(var + eps) * gain + shift over the last dimension, biased variance."""
    mean = a.mean(-1, keepdim=True)
    var = ((a - mean) ** 2).mean(-1, keepdim=True)
    y = (a - mean) / torch.sqrt(var + EPS) * gain
    return y if shift is None else y + shift


def naive_indrnn(x, h, p, extra, nonlinearity):
    """h_t = act(W x_t + u * h_{t-1} + b), u a vector."""
    outs = []
    for t in range(x.shape[0]):
        a = p["weight_ih"] @ x[t] + extra + p["weight_hh"] * h + p["bias"]
        h = torch.relu(a) if nonlinearity == "relu" else torch.tanh(a)
        outs.append(h)
    return torch.stack(outs), h


def naive_layernorm_lstm(x, state, p, extra):
    h, c = state
    H = h.shape[-1]
    outs = []
    for t in range(x.shape[0]):
        a = (layer_norm(p["weight_ih"] @ x[t] + extra, p["ln_ih_weight"])
             + layer_norm(p["weight_hh"] @ h, p["ln_hh_weight"]) + p["bias"])  # fmt: skip
        i, f = sigmoid(a[:H]), sigmoid(a[H : 2 * H])
        g, o = torch.tanh(a[2 * H : 3 * H]), sigmoid(a[3 * H :])
        c = f * c + i * g
        h = o * torch.tanh(layer_norm(c, p["ln_c_weight"], p["ln_c_bias"]))
        outs.append(h)
    return torch.stack(outs), (h, c)


def naive_layernorm_gru(x, h, p, extra):
    H = h.shape[-1]
    outs = []
    for t in range(x.shape[0]):
        ax = layer_norm(p["weight_ih"] @ x[t] + extra, p["ln_ih_weight"]) + p["bias_ih"]
        ah = layer_norm(p["weight_hh"] @ h, p["ln_hh_weight"]) + p["bias_hh"]
        r = sigmoid(ax[:H] + ah[:H])
        z = sigmoid(ax[H : 2 * H] + ah[H : 2 * H])
        n = torch.tanh(ax[2 * H :] + r * ah[2 * H :])
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def naive_recurrent(m: Recurrent, x, state, lengths, condition):
    """The whole stack, sequence by sequence at its own length (time-major x (T, B, I))."""
    T, B = x.shape[:2]
    D, L = m.num_directions, m.num_layers
    lstm = m.cell == "layernorm_lstm"
    outputs, finals_h, finals_c = [], [], []
    for b in range(B):
        n = int(lengths[b]) if lengths is not None else T
        seq = x[:n, b]
        hs, cs = {}, {}
        for k in range(L):
            outs = []
            for d in range(D):
                j = k * D + d
                p = m.layer_params(k, d)
                extra = (p["weight_ch"] @ condition[b] if k == 0 and condition is not None
                         else torch.zeros(p["weight_ih"].shape[0], dtype=x.dtype))  # fmt: skip
                s0 = (state[0][j, b], state[1][j, b]) if lstm else state[j, b]
                inp = seq if d == 0 else seq.flip(0)
                if m.cell == "indrnn":
                    out, fin = naive_indrnn(inp, s0, p, extra, m.nonlinearity)
                elif lstm:
                    out, fin = naive_layernorm_lstm(inp, s0, p, extra)
                else:
                    out, fin = naive_layernorm_gru(inp, s0, p, extra)
                outs.append(out if d == 0 else out.flip(0))
                hs[j], cs[j] = fin if lstm else (fin, None)
            seq = torch.cat(outs, -1)
        outputs.append(torch.cat([seq, seq.new_zeros(T - n, seq.shape[-1])]))
        finals_h.append(torch.stack([hs[j] for j in range(L * D)]))
        if lstm:
            finals_c.append(torch.stack([cs[j] for j in range(L * D)]))
    out = torch.stack(outputs, 1)
    h_n = torch.stack(finals_h, 1)
    return out, ((h_n, torch.stack(finals_c, 1)) if lstm else h_n)


def parts(state):
    return state if isinstance(state, tuple) else (state,)


def build(cell, backend, **options):
    torch.manual_seed(0)
    m = Recurrent(cell, 3, 5, backend=backend, dtype=D64, **options)
    with torch.no_grad():  # move every parameter off its init (gains 1, biases 0) for the test
        for w in m.parameters():
            w.add_(0.3 * torch.randn_like(w))
    return m


def inputs(m, T=6, B=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, 3, dtype=D64, generator=g, requires_grad=True)
    LD = m.num_layers * m.num_directions
    h = 0.5 * torch.randn(LD, B, 5, dtype=D64, generator=g)
    state = (h, 0.5 * torch.randn(LD, B, 5, dtype=D64, generator=g)) if m.cell.endswith(
        "lstm") else h  # fmt: skip
    cond = torch.randn(B, 2, dtype=D64, generator=g) if m.condition_size else None
    return x, state, cond


# -- Recurrent against the naive loops -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", NEW_CELLS)
@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"num_layers": 2, "bidirectional": True, "lengths": True},
        {"num_layers": 2, "condition_size": 2, "lengths": True},
    ],
)
def test_values_and_gradients_equal_the_naive_loop(cell, backend, layout):
    layout = dict(layout)
    use_lengths = layout.pop("lengths", False)
    m = build(cell, backend, **layout)
    x, state, cond = inputs(m)
    lengths = torch.tensor([6, 2, 4, 1]) if use_lengths else None
    params = list(m.parameters())
    out, fin = m(x, state, lengths=lengths, condition=cond)
    ref_out, ref_fin = naive_recurrent(m, x, state, lengths, cond)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    for a, b in zip(parts(fin), parts(ref_fin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(t.shape, dtype=D64, generator=g) for t in (out, *parts(fin))]

    def grads(outs):
        loss = sum((o * w).sum() for o, w in zip(outs, weights, strict=True))
        return torch.autograd.grad(loss, [x, *params])

    for a, b in zip(grads((out, *parts(fin))), grads((ref_out, *parts(ref_fin))), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", NEW_CELLS)
def test_gradcheck(cell, backend):
    m = build(cell, backend, num_layers=2, bidirectional=cell == "indrnn")
    x, state, _ = inputs(m, T=4, B=3)
    lengths = torch.tensor([4, 1, 3])
    state = tuple(s.requires_grad_() for s in parts(state))

    def f(x, *s):
        out, fin = m(x, s if len(s) == 2 else s[0], lengths=lengths)
        return (out, *parts(fin))

    assert torch.autograd.gradcheck(f, (x, *state))
    p = dict(m.named_parameters())

    def f_params(*ws):
        out, fin = torch.func.functional_call(m, dict(zip(p, ws, strict=True)), (x.detach(),))
        return (out, *parts(fin))

    assert torch.autograd.gradcheck(f_params, tuple(p.values()))


def test_the_fused_indrnn_has_second_derivatives():
    m = build("indrnn", "fused", nonlinearity="tanh")
    x, h, _ = inputs(m, T=4, B=3)
    assert m.resolved_backend() == "fused" or not extension_status().available
    assert torch.autograd.gradgradcheck(lambda x: m(x, h)[0], (x,))


@pytest.mark.parametrize("cell", NEW_CELLS)
def test_step_equals_forward_and_the_cell_module(cell):
    m = build(cell, "auto", num_layers=2)
    x, state, _ = inputs(m, T=5, B=3)
    x = x.detach()
    out, fin = m(x, state)
    s = state
    with torch.no_grad():
        for t in range(5):
            y, s = m.step(x[t], s)
            torch.testing.assert_close(y, out[t], rtol=1e-12, atol=1e-12)
    for a, b in zip(parts(s), parts(fin), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The single-cell module runs the same equations with the same parameters.
    cls = CELLS[cell]
    single = Recurrent(cell, 3, 5, dtype=D64)
    one = cls(3, 5).double()
    one.load_state_dict({n: getattr(single, f"{n}_l0") for n in dict(one.named_parameters())})
    s0 = tuple(t[0] for t in parts(inputs(single, B=3)[1]))
    s0 = s0 if len(s0) == 2 else s0[0]
    got = one(x[0], s0)
    want = single(x[:1], tuple(t.unsqueeze(0) for t in parts(s0)) if len(parts(s0)) == 2
                  else s0.unsqueeze(0))[1]  # fmt: skip
    for a, b in zip(parts(got), parts(want), strict=True):
        torch.testing.assert_close(a, b[0])


@pytest.mark.parametrize("cell", NEW_CELLS)
def test_trace_records_the_naive_gates(cell):
    m = build(cell, "auto")
    x, state, _ = inputs(m, T=4, B=2)
    x = x.detach()
    with torch.no_grad():
        out, _, gates = m.trace(x, state)
    names = {"indrnn": ["h"], "layernorm_lstm": ["i", "f", "g", "o", "c", "h"],
             "layernorm_gru": ["r", "z", "n", "h"]}[cell]  # fmt: skip
    assert list(gates[0]) == names
    torch.testing.assert_close(gates[0]["h"], out)
    p = m.layer_params(0)
    if cell == "layernorm_gru":  # z at step 0 of stream 0, written out
        h0 = state[0, 0]
        ax = layer_norm(p["weight_ih"] @ x[0, 0], p["ln_ih_weight"]) + p["bias_ih"]
        ah = layer_norm(p["weight_hh"] @ h0, p["ln_hh_weight"]) + p["bias_hh"]
        torch.testing.assert_close(gates[0]["z"][0, 0], sigmoid(ax[5:10] + ah[5:10]))
    if cell == "layernorm_lstm":  # f at step 0 and the unnormalised c
        h0, c0 = state[0][0, 0], state[1][0, 0]
        a = (layer_norm(p["weight_ih"] @ x[0, 0], p["ln_ih_weight"])
             + layer_norm(p["weight_hh"] @ h0, p["ln_hh_weight"]) + p["bias"])  # fmt: skip
        f = sigmoid(a[5:10])
        torch.testing.assert_close(gates[0]["f"][0, 0], f)
        c = f * c0 + sigmoid(a[:5]) * torch.tanh(a[10:15])
        torch.testing.assert_close(gates[0]["c"][0, 0], c)


# -- parameters, init, backends ----------------------------------------------------------------


def test_parameter_names_shapes_and_init():
    H, I = 6, 4
    ind = Recurrent("indrnn", I, H)
    assert {n: tuple(p.shape) for n, p in ind.named_parameters()} == {
        "weight_ih_l0": (H, I), "weight_hh_l0": (H,), "bias_l0": (H,)}  # fmt: skip
    assert ind.nonlinearity == "relu"  # the paper's default
    assert bool((ind.weight_hh_l0 >= 0).all() and (ind.weight_hh_l0 <= 1).all())  # U(0, 1)
    lstm = Recurrent("layernorm_lstm", I, H)
    shapes = {n: tuple(p.shape) for n, p in lstm.named_parameters()}
    assert shapes == {"weight_ih_l0": (4 * H, I), "weight_hh_l0": (4 * H, H), "bias_l0": (4 * H,),
                      "ln_ih_weight_l0": (4 * H,), "ln_hh_weight_l0": (4 * H,),
                      "ln_c_weight_l0": (H,), "ln_c_bias_l0": (H,)}  # fmt: skip
    b = lstm.bias_l0.detach()
    assert torch.equal(b[H : 2 * H], torch.ones(H)) and not b[:H].any() and not b[2 * H :].any()
    assert torch.equal(lstm.ln_ih_weight_l0.detach(), torch.ones(4 * H))
    block = lstm.weight_hh_l0.detach()[:H]  # orthogonal per gate block
    torch.testing.assert_close(block @ block.T, torch.eye(H), atol=1e-5, rtol=0)
    gru = Recurrent("layernorm_gru", I, H, bias=False)
    assert sorted(n for n, _ in gru.named_parameters()) == [
        "ln_hh_weight_l0", "ln_ih_weight_l0", "weight_hh_l0", "weight_ih_l0"]  # fmt: skip
    assert not hasattr(Recurrent("layernorm_lstm", I, H, bias=False), "ln_c_bias_l0")


@pytest.mark.parametrize("cell", NEW_CELLS)
def test_native_is_refused_and_auto_is_what_was_measured(cell):
    with pytest.raises(ValueError, match="native"):
        Recurrent(cell, 3, 5, backend="native")
    want = "fused" if cell == "indrnn" and extension_status().available else "reference"
    assert choose_backend(cell, 256, "cpu") == want
    assert choose_backend(cell, 256, "cpu", lookup_input=True) == want
    with pytest.raises(ValueError, match="nonlinearity"):
        Recurrent("layernorm_gru", 3, 5, nonlinearity="relu")


# -- IndRNN's bound -------------------------------------------------------------------------------


def test_the_papers_bound():
    assert indrnn_recurrent_bound(100) == pytest.approx(2 ** (1 / 100))
    assert indrnn_recurrent_bound(10, largest_gradient=10.0) == pytest.approx(10**0.1)
    with pytest.raises(ValueError, match="steps"):
        indrnn_recurrent_bound(0)
    with pytest.raises(ValueError, match="recurrent_max_abs"):
        Recurrent("gru", 3, 5, recurrent_max_abs=1.0)
    with pytest.raises(ValueError, match="recurrent_max_abs"):
        Recurrent("indrnn", 3, 5, recurrent_max_abs=-1.0)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_the_bound_holds_after_every_optimizer_step(backend):
    """|u| <= bound at init and in every forward, however far SGD pushes u (projected gradient
    descent: the weight is clamped in place before use)."""
    bound = 0.5
    torch.manual_seed(0)
    m = Recurrent("indrnn", 3, 8, num_layers=2, recurrent_max_abs=bound, backend=backend)
    assert all(float(w.detach().abs().max()) <= bound for w in (m.weight_hh_l0, m.weight_hh_l1))
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    x = torch.randn(5, 2, 3)
    for _ in range(3):
        opt.zero_grad()
        out, _ = m(x)
        (-out.sum()).backward()  # pushes u up
        opt.step()
        with torch.no_grad():
            m(x)
            seen = [float(w.abs().max()) for w in (m.weight_hh_l0, m.weight_hh_l1)]
        assert max(seen) <= bound
    assert max(seen) == pytest.approx(bound)  # it was pushed to the bound and kept there
    cell = IndRNNCell(3, 4, recurrent_max_abs=0.25)
    with torch.no_grad():
        cell.weight_hh.fill_(3.0)
    cell(torch.randn(2, 3))
    assert float(cell.weight_hh.detach().abs().max()) == 0.25


def test_indrnn_gradient_through_time_is_u_to_the_power_t():
    """The property the bound rests on: for one active ReLU unit, dh_T/dh_0 = u^T."""
    m = Recurrent("indrnn", 1, 1, backend="fused", dtype=D64)
    with torch.no_grad():
        m.weight_ih_l0.zero_()
        m.bias_l0.fill_(1.0)  # keeps the unit active
        m.weight_hh_l0.fill_(indrnn_recurrent_bound(50))
    h0 = torch.ones(1, 1, 1, dtype=D64, requires_grad=True)
    _, h = m(torch.zeros(50, 1, 1, dtype=D64), h0)
    (g,) = torch.autograd.grad(h.sum(), h0)
    assert float(g) == pytest.approx(2.0)


# -- analysis --------------------------------------------------------------------------------------


def test_singular_values_of_a_diagonal_recurrence():
    m = Recurrent("indrnn", 3, 4)
    with torch.no_grad():
        m.weight_hh_l0.copy_(torch.tensor([0.1, -0.7, 0.3, 0.2]))
    assert largest_singular_values(m) == [{"W_hh": pytest.approx(0.7)}]
    assert set(largest_singular_values(Recurrent("layernorm_gru", 3, 4))[0]) == {
        "W_hh", "r", "z", "n"}  # fmt: skip


# -- the char-LM through the CLI -------------------------------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 60
TINY = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--sample-length", "8",
        "--threads", "1", "--log-every", "1", "--warmup-steps", "2", "--eval-every", "4",
        "--num-layers", "2", "--decay-steps", "8", "--lr", "0.01"]  # fmt: skip


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines]


@pytest.mark.usefixtures("cache_env")
@pytest.mark.parametrize("cell", NEW_CELLS)
def test_train_cli_learns_and_resumes_exactly(cell, tmp_path, capsys):
    data = tmp_path / "input.txt"
    data.write_text(TEXT)
    common = ["train", "--input", str(data), "--cell", cell, *TINY]
    assert main([*common, "--out-dir", str(tmp_path / "full"), "--max-steps", "8"]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "part"), "--max-steps", "4"]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--max-steps", "8"]) == 0
    out = capsys.readouterr()
    full, part = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert len(full) == 8 and full == part, out.err
    assert full[0] == pytest.approx(math.log(len(set(TEXT))), abs=0.6)
    assert np.isfinite(full).all() and np.mean(full[4:]) < np.mean(full[:4])
    run = load_run(tmp_path / "full" / "step-8")  # the checkpoint rebuilds the same model
    assert run.model.rnn.cell == cell and run.step == 8


def test_the_benchmark_matches_parameter_counts():
    """bench/cells.py's equal-parameter baseline: the hidden size whose char-LM count is
    nearest the new cell's."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "bench" / "cells.py"
    spec = importlib.util.spec_from_file_location("bench_cells", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    target = bench.parameters("indrnn", 65, 128, 1)
    V, H = 65, 128
    assert target == V * H + (H * H + 2 * H) + (H * V + V)  # embedding, IndRNN layer, head
    h = bench.equal_parameters("gru", target, 65, 1)
    gap = abs(bench.parameters("gru", 65, h, 1) - target)
    assert all(gap <= abs(bench.parameters("gru", 65, k, 1) - target) for k in (h - 1, h + 1))
    assert bench.equal_parameters("lstm", bench.parameters("lstm", 65, 200, 2), 65, 2) == 200


@pytest.mark.parametrize("cell", NEW_CELLS)
def test_reduced_precision_sampling_is_refused_by_name(cell):
    m = Recurrent(cell, 3, 4)
    with torch.no_grad(), pytest.raises(ValueError, match=f"the {cell} cell has no engine step"):
        m.step(torch.randn(2, 3), weight_dtype=torch.bfloat16)
