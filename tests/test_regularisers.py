"""The regularisers (rnnlab.regularisers, Recurrent's zoneout/weight_drop/locked_dropout, the
char-LM's flags), each held to what it promises: zoneout at rate 0 is no zoneout and at rate 1
keeps the state, its engine equals the reference loop (values and gradients) and its eval is the
expectation; weight drop uses one mask for every step of a forward and a new one per forward;
locked dropout's mask is the same at every step; eval mode drops nothing; resume stays bit-exact
with each one on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rnnlab import kernels
from rnnlab.cells import input_projection, unroll
from rnnlab.cli import main
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.recurrent import Recurrent
from rnnlab.regularisers import embedding_dropout, locked_dropout

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh"), ("mut1", "tanh"),
         ("mut2", "tanh"), ("mut3", "tanh")]  # fmt: skip
IDS = [f"{c}-{n}" if c == "rnn" else c for c, n in CELLS]
D64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ext():
    if not kernels.extension_status().available:
        pytest.skip(f"C++ engine unavailable: {kernels.extension_status().reason}")


def _layer(cell: str, nonlinearity: str, T=5, B=3, H=6, seed=0):
    """One layer's params, input, state and per-part random keep masks, float64."""
    g = torch.Generator().manual_seed(seed)
    rnn = Recurrent(cell, 4 if cell not in ("mut1", "mut2") else H, H, dtype=D64,
                    nonlinearity=nonlinearity)  # fmt: skip
    p = {k: v.detach().clone().requires_grad_() for k, v in rnn.layer_params(0).items()}
    x = torch.randn(T, B, rnn.input_size, dtype=D64, generator=g, requires_grad=True)
    parts = [torch.randn(B, H, dtype=D64, generator=g, requires_grad=True)
             for _ in range(2 if cell == "lstm" else 1)]  # fmt: skip
    masks = tuple((torch.rand(T, B, H, dtype=D64, generator=g) < 0.4).to(D64) for _ in parts)
    return p, x, parts, masks


def _state(parts):
    return tuple(parts) if len(parts) == 2 else parts[0]


def _flat(state):
    return state if isinstance(state, tuple) else (state,)


# -- zoneout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS, ids=IDS)
@pytest.mark.parametrize("eval_rate", [False, True], ids=["bernoulli", "rate"])
def test_zoneout_on_the_engine_equals_the_reference_loop_in_values_and_gradients(
    ext, cell, nonlinearity, eval_rate
):
    p, x, parts, masks = _layer(cell, nonlinearity)
    if eval_rate:  # the eval expectation: a constant, fractional mask
        masks = tuple(torch.full_like(m, 0.3) for m in masks)
    weights = kernels.layer_weights(cell, p)
    ref = unroll(cell, input_projection(cell, x, p), _state(parts), p, nonlinearity,
                 zoneout=masks)  # fmt: skip
    eng = kernels.run_layer(cell, nonlinearity, x, _state(parts), weights, zoneout=masks)
    outs_ref, outs_eng = [ref[0], *_flat(ref[1])], [eng[0], *_flat(eng[1])]
    for a, b in zip(outs_ref, outs_eng, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    wanted = [x, *parts, *p.values()]
    g = [torch.randn_like(t) for t in outs_ref]
    grads_ref = torch.autograd.grad(outs_ref, wanted, g)
    grads_eng = torch.autograd.grad(outs_eng, wanted, g)
    for a, b in zip(grads_ref, grads_eng, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_zoneout_on_the_engine_with_lengths_and_a_folded_lookup_equals_the_reference(ext, cell):
    torch.manual_seed(0)
    kw = dict(num_layers=2, zoneout=0.3, zoneout_cell=0.5 if cell == "lstm" else None)
    ref = Recurrent(cell, 5, 16, backend="reference", dtype=D64, **kw)
    eng = Recurrent(cell, 5, 16, backend="fused", dtype=D64, **kw)
    eng.load_state_dict(ref.state_dict())
    table = torch.randn(4, 5, dtype=D64, requires_grad=True)
    ids = torch.randint(0, 4, (7, 20))
    lengths = torch.randint(1, 8, (20,))
    results = []
    for module in (ref, eng):
        torch.manual_seed(1)  # the same masks: drawn in the same order by both backends
        out, state = module(ids, lengths=lengths, embedding=table)
        loss = out.square().sum() + sum(s.square().sum() for s in _flat(state))
        grads = torch.autograd.grad(loss, [table, *module.parameters()])
        results.append((out, *_flat(state), *grads))
    assert eng.folds_lookup(ids.numel(), 4)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("cell", "nonlinearity"), CELLS, ids=IDS)
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_zoneout_at_rate_0_equals_no_zoneout_and_at_rate_1_keeps_the_state(
    ext, cell, nonlinearity, backend
):
    torch.manual_seed(0)
    size = 6 if cell in ("mut1", "mut2") else 4
    plain = Recurrent(cell, size, 6, num_layers=2, backend=backend, nonlinearity=nonlinearity)
    zero = Recurrent(cell, size, 6, num_layers=2, backend=backend, nonlinearity=nonlinearity,
                     zoneout=0.0, zoneout_cell=0.0 if cell == "lstm" else None)  # fmt: skip
    one = Recurrent(cell, size, 6, num_layers=2, backend=backend, nonlinearity=nonlinearity,
                    zoneout=1.0)  # fmt: skip
    zero.load_state_dict(plain.state_dict())
    one.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, size)
    h0 = plain.initial_state(3, x)
    h0 = tuple(torch.randn_like(t) for t in h0) if cell == "lstm" else torch.randn_like(h0)
    for mode in (True, False):  # training (Bernoulli masks) and eval (the rate itself)
        for m in (plain, zero, one):
            m.train(mode)
        out, state = plain(x, h0)
        out0, state0 = zero(x, h0)
        assert torch.equal(out0, out) and all(
            torch.equal(a, b) for a, b in zip(_flat(state0), _flat(state), strict=True)
        )
        out1, state1 = one(x, h0)
        h_top = _flat(h0)[0][-1]
        assert torch.equal(out1, h_top.expand_as(out1))  # every step hands on h_0
        assert all(torch.equal(a, b) for a, b in zip(_flat(state1), _flat(h0), strict=True))
    # the rate-0 engine mask path itself is exact too (m = 0: the candidate, bit for bit)
    p, xx, parts, masks = _layer(cell, nonlinearity)
    zeros = tuple(torch.zeros_like(m) for m in masks)
    with torch.no_grad():
        a = kernels.run_layer(cell, nonlinearity, xx, _state(parts), kernels.layer_weights(cell, p))
        b = kernels.run_layer(cell, nonlinearity, xx, _state(parts), kernels.layer_weights(cell, p),
                              zoneout=zeros)  # fmt: skip
    assert torch.equal(a[0], b[0])


def _naive_zoneout_eval(torch_cell, x, h, c, rate_h, rate_c):
    """Zoneout's eval recurrence written out over a torch.nn cell: each step's candidate from the
    previous (zoned) state, then state = rate * previous + (1 - rate) * candidate."""
    outs = []
    for t in range(x.shape[0]):
        if c is None:
            new_h = torch_cell(x[t], h)
        else:
            new_h, new_c = torch_cell(x[t], (h, c))
            c = rate_c * c + (1 - rate_c) * new_c
        h = rate_h * h + (1 - rate_h) * new_h
        outs.append(h)
    return torch.stack(outs), h, c


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("backend", ["reference", "fused", "auto"])
def test_zoneout_at_eval_is_the_expectation_against_a_naive_loop_over_torch_cells(
    ext, cell, backend
):
    torch.manual_seed(0)
    rates = (0.2, 0.6)
    rnn = Recurrent(cell, 4, 8, backend=backend, dtype=D64, forget_bias=None, zoneout=rates[0],
                    zoneout_cell=rates[1] if cell == "lstm" else None).eval()  # fmt: skip
    torch_cell = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[
        cell
    ](4, 8, dtype=D64)
    torch_cell.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
    x = torch.randn(9, 2, 4, dtype=D64)
    h0 = torch.randn(2, 8, dtype=D64)
    c0 = torch.randn(2, 8, dtype=D64) if cell == "lstm" else None
    want_out, want_h, want_c = _naive_zoneout_eval(torch_cell, x, h0, c0, *rates)
    hx = (h0[None], c0[None]) if cell == "lstm" else h0[None]
    with torch.no_grad():
        out, state = rnn(x, hx)
        stepped, step_state = [], hx
        for t in range(x.shape[0]):  # step(): one C++ call per character under no_grad
            y, step_state = rnn.step(x[t], step_state)
            stepped.append(y)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(torch.stack(stepped), want_out)
    torch.testing.assert_close(_flat(state)[0][0], want_h)
    if cell == "lstm":
        torch.testing.assert_close(state[1][0], want_c)
        torch.testing.assert_close(step_state[1][0], want_c)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_zoned_models_trace_and_export_follow_the_eval_expectation(ext, cell):
    """Analysis (``trace``: the engine under no_grad, the reference loop with grad) and the
    exported one-step function compute what ``forward`` does at eval."""
    from rnnlab.export import OneStep

    torch.manual_seed(0)
    config = CharLMConfig(9, cell=cell, hidden_size=8, num_layers=2, zoneout=0.3,
                          zoneout_cell=0.6 if cell == "lstm" else 0.0)  # fmt: skip
    model = CharLM(config).eval()
    idx = torch.randint(0, 9, (3, 6))
    x = model.embedding(idx).detach()
    with torch.no_grad():
        out_engine, _, gates_engine = model.rnn.trace(x)
        out_forward, _ = model.rnn(x)
    out_ref, _, gates_ref = model.rnn.trace(x)
    torch.testing.assert_close(out_engine, out_forward)
    torch.testing.assert_close(out_ref.detach(), out_forward)
    for name in gates_engine[1]:
        torch.testing.assert_close(gates_engine[1][name], gates_ref[1][name].detach())
    step = OneStep(model)
    state = step.example_inputs(3)[1:]
    state = tuple(torch.zeros_like(t) for t in state)
    with torch.no_grad():
        logits, _ = model(idx)
        for t in range(idx.shape[1]):
            got, *state = step(idx[:, t], *state)
            torch.testing.assert_close(got, logits[:, t])


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_zoneout_in_training_keeps_each_unit_with_its_probability(ext, backend):
    """d ~ Bernoulli(rate) per unit per step: a rate-0.3 layer hands on exactly its previous
    value (bit for bit) in about 30% of units and the candidate elsewhere."""
    torch.manual_seed(0)
    rnn = Recurrent("gru", 8, 32, backend=backend, zoneout=0.3)
    x = torch.randn(50, 40, 8)
    out, _ = rnn(x)
    prev = torch.cat([torch.zeros(1, 40, 32), out[:-1]])
    kept = (out == prev).double().mean().item()
    assert 0.27 < kept < 0.33, kept
    rnn.eval()
    out_eval, _ = rnn(x)
    assert (out_eval == torch.cat([torch.zeros(1, 40, 32), out_eval[:-1]])).double().mean() < 0.01


# -- weight drop -----------------------------------------------------------------------------------


def _recovered_matrices(rnn: Recurrent, B: int = 24, H: int = 8) -> list[torch.Tensor]:
    """From one training-mode forward of an input-free, bias-free tanh RNN, the recurrent matrix
    each of its two steps used: atanh(h_t) = h_{t-1} W'^T, solved by least squares per step."""
    h0 = torch.randn(1, B, H, dtype=D64) * 2
    x = torch.zeros(2, B, 1, dtype=D64)
    out, _ = rnn(x, h0)
    prevs = [h0[0], out[0]]
    return [torch.linalg.lstsq(p, torch.atanh(out[t])).solution.T for t, p in enumerate(prevs)]


@pytest.mark.parametrize("backend", ["reference", "fused", "native"])
def test_weight_drop_uses_one_mask_for_every_step_and_a_new_one_per_forward(ext, backend):
    torch.manual_seed(0)
    rnn = Recurrent("rnn", 1, 8, bias=False, backend=backend, dtype=D64, weight_drop=0.5)
    with torch.no_grad():
        rnn.weight_ih_l0.zero_()
        rnn.weight_hh_l0.uniform_(0.1, 0.4)  # no zeros of its own; tanh far from saturation
    W = rnn.weight_hh_l0.detach()
    first = _recovered_matrices(rnn)
    torch.testing.assert_close(first[1], first[0], rtol=1e-8, atol=1e-8)  # one mask, both steps
    kept = first[0].abs() > 1e-6
    assert 0.3 < kept.double().mean() < 0.7  # DropConnect at p = 0.5 ...
    torch.testing.assert_close(first[0][kept], W[kept] * 2, rtol=1e-8, atol=1e-8)  # ... inverted
    second = _recovered_matrices(rnn)
    assert not torch.equal(second[0].abs() > 1e-6, kept)  # a new mask for a new forward
    rnn.eval()
    evals = _recovered_matrices(rnn)
    torch.testing.assert_close(evals[0], W, rtol=1e-8, atol=1e-8)  # nothing dropped at eval


def test_weight_drop_masks_are_the_same_on_every_backend_and_train_the_raw_weight(ext):
    outs, grads = [], []
    for backend in ("reference", "fused", "native"):
        torch.manual_seed(0)
        rnn = Recurrent("lstm", 3, 6, num_layers=2, backend=backend, weight_drop=0.4)
        torch.manual_seed(1)
        out, _ = rnn(torch.ones(4, 2, 3))
        out.sum().backward()
        outs.append(out.detach())
        grads.append(rnn.weight_hh_l1.grad)
    for out, grad in zip(outs[1:], grads[1:], strict=True):
        torch.testing.assert_close(out, outs[0])
        torch.testing.assert_close(grad, grads[0])
    assert (grads[0] == 0).any()  # dropped entries get no gradient


# -- locked dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "fused", "native"])
@pytest.mark.parametrize("locked", [True, False])
def test_locked_dropout_between_layers_keeps_one_mask_over_time(ext, backend, locked):
    """Two pass-through ReLU layers (W_ih = I, W_hh = 0, no bias) make layer 1's output its input
    times the dropout mask between the layers, so the mask can be read off."""
    torch.manual_seed(0)
    rnn = Recurrent("rnn", 6, 6, num_layers=2, nonlinearity="relu", bias=False, dropout=0.5,
                    locked_dropout=locked, backend=backend)  # fmt: skip
    with torch.no_grad():
        for k in range(2):
            getattr(rnn, f"weight_ih_l{k}").copy_(torch.eye(6))
            getattr(rnn, f"weight_hh_l{k}").zero_()
    x = torch.rand(30, 4, 6) + 0.5
    mask = rnn(x)[0] / x  # (T, B, F): 0 or 2
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert (mask == mask[:1]).all().item() is locked  # the same at every step only when locked
    rnn.eval()
    torch.testing.assert_close(rnn(x)[0], x)  # nothing dropped at eval


def test_locked_and_embedding_dropout_functions():
    torch.manual_seed(0)
    x = torch.ones(20, 5, 7)
    y = locked_dropout(x, 0.5, True)
    assert (y == y[:1]).all() and set(y.unique().tolist()) == {0.0, 2.0}
    yb = locked_dropout(x.transpose(0, 1), 0.5, True, time_dim=1)
    assert (yb == yb[:, :1]).all()
    w = torch.randn(50, 4)
    e = embedding_dropout(w, 0.5, True)
    dropped = (e == 0).all(1)
    assert 0 < dropped.sum() < 50  # whole rows, a token's vector at a time
    torch.testing.assert_close(e[~dropped], w[~dropped] * 2)
    assert not torch.equal(embedding_dropout(w, 0.5, True) == 0, e == 0)  # a new mask per call
    for f in (locked_dropout, embedding_dropout):
        assert f(w, 0.5, False) is w and f(w, 0.0, True) is w


REGULARISED = dict(dropout=0.3, weight_drop=0.4, locked_dropout=True, dropout_input=0.3,
                   embedding_dropout=0.2)  # fmt: skip


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_char_lm_drops_nothing_in_eval_mode(ext, cell):
    torch.manual_seed(0)
    plain = CharLM(CharLMConfig(11, cell=cell, hidden_size=12, num_layers=2))
    regular = CharLM(CharLMConfig(11, cell=cell, hidden_size=12, num_layers=2, **REGULARISED))
    regular.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 11, (3, 40))
    plain.eval(), regular.eval()
    torch.testing.assert_close(regular(idx)[0], plain(idx)[0])
    regular.train()
    a, b = regular(idx)[0], regular(idx)[0]
    assert not torch.allclose(a, b)  # training draws masks, new ones per forward


def test_the_char_lm_locks_its_input_and_output_masks_over_time(ext):
    """An identity embedding, a recurrence whose output is 0 and a head that reads h alone: the
    head then sees 0 whatever the masks, so use the input side through a zero-recurrent ReLU RNN
    whose output is its input: logits / expected = the product of both masks, constant in t."""
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(6, cell="rnn", hidden_size=6, num_layers=1, dropout=0.5,
                                locked_dropout=True, dropout_input=0.5))  # fmt: skip
    model.rnn.nonlinearity = "relu"
    with torch.no_grad():
        model.embedding.weight.copy_(torch.eye(6) + 1)  # positive rows
        model.rnn.weight_ih_l0.copy_(torch.eye(6))
        model.rnn.weight_hh_l0.zero_()
        model.rnn.bias_ih_l0.zero_(), model.rnn.bias_hh_l0.zero_()
        model.head.weight.copy_(torch.eye(6)), model.head.bias.zero_()
    idx = torch.randint(0, 6, (4, 25))
    logits, _ = model(idx)
    masks = logits / (torch.eye(6) + 1)[idx]  # (B, T, 6): input mask * output mask
    assert (masks == masks[:, :1]).all()
    assert set(masks.unique().tolist()) <= {0.0, 2.0, 4.0} and (masks == 4.0).any()


# -- the fast path and what is said when it is left ----------------------------------------------


def test_regularisers_keep_the_fast_path_and_a_fallback_is_said(ext):
    zoned = Recurrent("lstm", 4, 8, zoneout=0.1)
    assert zoned.resolved_backend("cpu") == "fused"  # auto would pick oneDNN: zoneout is engine
    assert kernels.regulariser_fallback(zoned, "cpu") == ""
    for kw in (dict(weight_drop=0.3), dict(dropout=0.2, locked_dropout=True, num_layers=2)):
        assert Recurrent("gru", 4, 8, **kw).resolved_backend("cpu") == "fused"
    # where the engine cannot run it, zoneout falls back to the Python loop, and says so
    projected = Recurrent("lstm", 4, 8, proj_size=3, zoneout=0.1)
    assert projected.resolved_backend("cpu") == "reference"
    assert "zoneout runs the Python loop" in kernels.describe_backend(projected, "cpu")
    on_gpu = kernels.describe_backend(zoned, "cuda")
    assert "cuDNN" not in on_gpu.split(";")[0] and "zoneout runs the hoisted Python loop" in on_gpu
    assert kernels.regulariser_fallback(Recurrent("lstm", 4, 8), "cuda") == ""
    with pytest.raises(ValueError, match="native"):
        Recurrent("lstm", 4, 8, zoneout=0.1, backend="native")
    with pytest.raises(ValueError, match="zoneout_cell"):
        Recurrent("gru", 4, 8, zoneout_cell=0.1)
    for bad in (dict(zoneout=1.5), dict(weight_drop=1.0), dict(weight_drop=-0.1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Recurrent("gru", 4, 8, **bad)


def test_doctor_reports_the_regularised_backend(ext):
    from rnnlab.doctor import report

    info = report(build=True)
    line = next(v for k, v in info.items() if k.startswith("regularisers"))
    assert line == "fused; no fallback"


# -- the char-LM's flags: trained, interrupted and resumed bit for bit -----------------------------

TEXT = "It was the best of times, it was the worst of times.\n" * 40
FLAGS = {
    "zoneout": ["--cell", "lstm", "--zoneout", "0.1", "--zoneout-cell", "0.4"],
    "weight-drop": ["--weight-drop", "0.3"],
    "locked-dropout": ["--dropout", "0.3", "--locked-dropout"],
    "dropout-input": ["--dropout-input", "0.3"],
    "embedding-dropout": ["--embedding-dropout", "0.2"],
}
TINY = ["--hidden-size", "12", "--num-layers", "2", "--batch-size", "4", "--seq-len", "12",
        "--sample-length", "0", "--threads", "1", "--log-every", "1", "--warmup-steps", "0",
        "--eval-every", "2", "--eval-batches", "2", "--decay-steps", "6"]  # fmt: skip


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines]


@pytest.mark.usefixtures("cache_env")
@pytest.mark.parametrize("name", list(FLAGS))
def test_train_with_each_regulariser_resumes_bit_exact(ext, name, tmp_path, capsys):
    text = tmp_path / "in.txt"
    text.write_text(TEXT, encoding="utf-8")
    common = ["train", str(text), *TINY, *FLAGS[name]]
    assert main([*common, "--out-dir", str(tmp_path / "a"), "--max-steps", "6"]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "b"), "--max-steps", "3"]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--max-steps", "6"]) == 0
    err = capsys.readouterr().err
    assert "backend fused" in err  # every regulariser trains on the engine
    straight, resumed = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(straight) == 6 and straight == resumed  # bit for bit
    saved = json.loads((tmp_path / "b" / "best" / "config.json").read_text())["model"]
    flag = FLAGS[name][-2] if FLAGS[name][-1][0].isdigit() else FLAGS[name][-1]
    assert saved[flag.removeprefix("--").replace("-", "_")] not in (0, 0.0, False)


@pytest.mark.usefixtures("cache_env")
def test_a_regularised_run_differs_from_a_plain_one_and_old_configs_load(ext, tmp_path, capsys):
    from rnnlab.tasks.char_lm import read_model_config

    text = tmp_path / "in.txt"
    text.write_text(TEXT, encoding="utf-8")
    common = ["train", str(text), *TINY, "--max-steps", "2"]
    assert main([*common, "--out-dir", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "reg"), "--weight-drop", "0.5"]) == 0
    assert _losses(tmp_path / "plain") != _losses(tmp_path / "reg")
    old = {"vocab_size": 9, "cell": "gru", "hidden_size": 8, "num_layers": 1, "embedding_size": 8,
           "dropout": 0.0, "tie_weights": False, "backend": "auto"}  # fmt: skip
    config = read_model_config(old, "config.json")  # a checkpoint from before the regularisers
    assert (config.zoneout, config.weight_drop, config.locked_dropout) == (0.0, 0.0, False)
    capsys.readouterr()
    assert main(["train", str(text), "--cell", "gru", "--zoneout-cell", "0.5"]) == 2
    assert "zoneout_cell" in capsys.readouterr().err
    # resume: a dropout may change (inexact), zoneout may not (it defines the eval function)
    resume = ["train", "--resume", str(tmp_path / "reg"), "--max-steps", "3"]
    assert main([*resume, "--zoneout", "0.2"]) == 2
    assert "zoneout" in capsys.readouterr().err
    assert main([*resume, "--weight-drop", "0.1"]) == 0
    assert "weight_drop: 0.5 -> 0.1 (resume no longer bit-exact)" in capsys.readouterr().err


# -- the newer cells ---------------------------------------------------------------------------

NEWER = ["mingru", "minlstm", "indrnn", "layernorm_lstm", "layernorm_gru"]


@pytest.mark.parametrize("cell", NEWER)
@pytest.mark.parametrize("backend", ["reference", "fused", "auto"])
def test_the_newer_cells_take_zoneout_at_rates_0_and_1_on_every_backend(ext, cell, backend):
    torch.manual_seed(0)
    has_c = cell == "layernorm_lstm"
    plain = Recurrent(cell, 4, 6, num_layers=2, backend=backend)
    zero = Recurrent(cell, 4, 6, num_layers=2, backend=backend, zoneout=0.0)
    one = Recurrent(cell, 4, 6, num_layers=2, backend=backend, zoneout=1.0)
    zero.load_state_dict(plain.state_dict())
    one.load_state_dict(plain.state_dict())
    x = torch.randn(5, 3, 4)
    h0 = plain.initial_state(3, x)
    h0 = tuple(torch.randn_like(t) for t in h0) if has_c else torch.randn_like(h0)
    lengths = torch.tensor([5, 2, 4])
    for mode in (True, False):
        for m in (plain, zero, one):
            m.train(mode)
        out, state = plain(x, h0, lengths=lengths)
        out0, state0 = zero(x, h0, lengths=lengths)
        torch.testing.assert_close(out0, out, rtol=1e-6, atol=1e-6)
        for a, b in zip(_flat(state0), _flat(state), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        out1, state1 = one(x, h0)
        assert torch.equal(out1, _flat(h0)[0][-1].expand_as(out1))
        assert all(torch.equal(a, b) for a, b in zip(_flat(state1), _flat(h0), strict=True))


@pytest.mark.parametrize("cell", NEWER)
def test_the_newer_cells_zoned_on_their_fast_path_equal_the_reference_loop(ext, cell):
    """A zoned layer whose fast path has no zoneout (the scan, IndRNN's C++ loop) runs the loop
    with the same masks: fused and reference agree, values and gradients."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, zoneout=0.3, dtype=D64)
    if cell not in ("mingru", "minlstm"):
        kw["weight_drop"] = 0.25
    fused = Recurrent(cell, 4, 6, backend="fused", **kw)
    ref = Recurrent(cell, 4, 6, backend="reference", **kw)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(7, 3, 4, dtype=D64)
    outs, grads = [], []
    for m in (fused, ref):
        torch.manual_seed(1)
        out, _ = m(x)
        out.square().sum().backward()
        outs.append(out)
        grads.append([p.grad for p in m.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_a_newer_cells_zoneout_fallback_is_said_and_impossible_options_refused(ext):
    indrnn = Recurrent("indrnn", 4, 6, zoneout=0.1)
    assert "zoneout runs the Python loop" in kernels.describe_backend(indrnn)
    assert kernels.regulariser_fallback(Recurrent("indrnn", 4, 6)) == ""
    with pytest.raises(ValueError, match="no recurrent weight_hh"):
        Recurrent("minlstm", 4, 6, weight_drop=0.1)
    with pytest.raises(ValueError, match="no cell state c"):
        Recurrent("mingru", 4, 6, zoneout_cell=0.1)
    zoned_c = Recurrent("layernorm_lstm", 4, 6, zoneout=0.0, zoneout_cell=1.0)
    x = torch.randn(3, 2, 4)
    h0 = tuple(torch.randn(1, 2, 6) for _ in range(2))
    _, (_, c) = zoned_c(x, h0)
    assert torch.equal(c, h0[1])  # rate 1 on c keeps the LayerNorm LSTM's c
