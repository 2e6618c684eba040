"""The hand-written BPTT against central differences and torch autograd; clipping; the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rnnlab import bptt
from rnnlab.cells import CELLS, gru_step

T, B, I, H, V = 5, 2, 4, 4, 5


def make_problem(cell: str, seed: int, input_size: int = I):
    """Random float64 params with a nonzero h0 (and c0), inputs x (T, B, I) and targets (T, B)."""
    rng = np.random.default_rng(seed)
    arrays = bptt.init_params(cell, input_size, H, V, rng)
    arrays["h0"] = rng.uniform(-0.5, 0.5, (B, H))
    if cell == "lstm":
        arrays["c0"] = rng.uniform(-0.5, 0.5, (B, H))
    x = rng.normal(size=(T, B, input_size))
    targets = rng.integers(0, V, size=(T, B))
    return arrays, x, targets


def forward(cell, arrays, x, targets):
    if cell == "lstm":
        return bptt.lstm_forward(arrays, x, targets, arrays["h0"], arrays["c0"])
    return bptt.rnn_forward(arrays, x, targets, arrays["h0"])


def backward(cell, arrays, cache):
    return (bptt.lstm_backward if cell == "lstm" else bptt.rnn_backward)(arrays, cache)


def numpy_grads(cell, arrays, x, targets):
    return backward(cell, arrays, forward(cell, arrays, x, targets)[1])


def autograd_grads(cell, arrays, x, targets):
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    loss = bptt.torch_loss(cell, tensors, torch.from_numpy(x), torch.from_numpy(targets))
    loss.backward()
    return loss.item(), {k: t.grad.numpy() for k, t in tensors.items()}


def worst_error(a, b):
    assert a.keys() == b.keys()
    return max(bptt.relative_error(a[k], b[k]) for k in a)


# --- BPTT is right -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bptt_matches_finite_differences(cell, seed):
    arrays, x, targets = make_problem(cell, seed)
    grads = numpy_grads(cell, arrays, x, targets)
    expected_keys = set(bptt.PARAM_NAMES) | {"h0"} | ({"c0"} if cell == "lstm" else set())
    assert set(grads) == expected_keys
    fd = bptt.finite_difference_grads(lambda a: forward(cell, a, x, targets)[0], arrays)
    assert worst_error(grads, fd) < 1e-6
    assert np.abs(grads["h0"]).max() > 1e-3  # the h0 path is exercised, not trivially zero


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bptt_matches_torch_autograd_through_cells(cell, seed):
    arrays, x, targets = make_problem(cell, seed)
    loss, cache = forward(cell, arrays, x, targets)
    torch_loss, torch_grads = autograd_grads(cell, arrays, x, targets)
    assert loss == pytest.approx(torch_loss, rel=1e-12)
    assert worst_error(backward(cell, arrays, cache), torch_grads) < 1e-8


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_parameter_layout_is_torch_nn(cell):
    # The same numbers loaded into torch.nn.RNN / LSTM (gate blocks i, f, g, o) give the same loss.
    arrays, x, targets = make_problem(cell, 4)
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(I, H).double()
    module.load_state_dict({f"{k}_l0": torch.from_numpy(arrays[k]) for k in bptt.PARAM_NAMES[:4]})
    state = tuple(torch.from_numpy(arrays[k])[None] for k in ("h0", "c0") if k in arrays)
    with torch.no_grad():
        out, _ = module(torch.from_numpy(x), state if cell == "lstm" else state[0])  # (T, B, H)
        y = out @ torch.from_numpy(arrays["weight_ho"]).T + torch.from_numpy(arrays["bias_o"])
        loss = torch.nn.functional.cross_entropy(
            y.reshape(T * B, V), torch.from_numpy(targets).reshape(-1), reduction="sum"
        )
    assert forward(cell, arrays, x, targets)[0] == pytest.approx(loss.item(), rel=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_integer_ids_are_one_hot_inputs_and_missing_state_is_zeros(cell):
    arrays, _, targets = make_problem(cell, 3)
    ids = np.random.default_rng(3).integers(0, I, size=(T, B))
    one_hot = np.eye(I)[ids]
    zeros = {k: np.zeros((B, H)) for k in ("h0", "c0") if k in arrays}
    params = {k: v for k, v in arrays.items() if k not in zeros}
    if cell == "lstm":
        loss_ids, cache = bptt.lstm_forward(params, ids, targets, None, None)
    else:
        loss_ids, cache = bptt.rnn_forward(params, ids, targets, None)
    loss_hot, cache_hot = forward(cell, params | zeros, one_hot, targets)
    assert loss_ids == loss_hot
    grads, grads_hot = backward(cell, params, cache), backward(cell, params, cache_hot)
    assert worst_error(grads, grads_hot) == 0
    # Columns of W_ih for ids that never occur get no gradient.
    unused = sorted(set(range(I)) - set(ids.ravel().tolist()))
    assert np.all(grads["weight_ih"][:, unused] == 0)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_computes_in_the_inputs_dtype(cell):
    arrays, x, targets = make_problem(cell, 0)
    arrays32 = {k: v.astype(np.float32) for k, v in arrays.items()}
    grads32 = numpy_grads(cell, arrays32, x.astype(np.float32), targets)
    assert all(g.dtype == np.float32 for g in grads32.values())
    assert worst_error(grads32, numpy_grads(cell, arrays, x, targets)) < 1e-4


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_initial_loss_is_uniform_guess(cell):
    # With zero weights every prediction is uniform: L = T * B * ln V (the loss is summed).
    arrays, x, targets = make_problem(cell, 0)
    zero = {k: np.zeros_like(v) for k, v in arrays.items()}
    assert forward(cell, zero, x, targets)[0] == pytest.approx(T * B * math.log(V), rel=1e-12)


def test_bad_shapes_name_the_argument():
    arrays, x, targets = make_problem("rnn", 0)
    with pytest.raises(ValueError, match="weight_ih"):
        bptt.lstm_forward(arrays, x, targets, None, None)  # an RNN's parameters, G = H not 4H
    with pytest.raises(ValueError, match="x:"):
        bptt.rnn_forward(arrays, x[:, :, :3], targets, None)
    with pytest.raises(ValueError, match="targets:"):
        bptt.rnn_forward(arrays, x, targets + V, None)
    with pytest.raises(ValueError, match="h0:"):
        bptt.rnn_forward(arrays, x, targets, np.zeros((B + 1, H)))
    with pytest.raises(ValueError, match="bias_o"):
        bptt.rnn_forward({k: v for k, v in arrays.items() if k != "bias_o"}, x, targets, None)


# --- Clipping ------------------------------------------------------------------------------------


def bptt_grads(seed=0):
    arrays, x, targets = make_problem("lstm", seed)
    grads = numpy_grads("lstm", arrays, x, targets)
    return {k: grads[k] for k in bptt.PARAM_NAMES}


@pytest.mark.parametrize("max_norm", [0.1, 1.0, 1e6])
def test_clip_by_global_norm_matches_torch(max_norm):
    grads = bptt_grads()
    before = {k: v.copy() for k, v in grads.items()}
    clipped, total_norm = bptt.clip_gradients(grads, max_norm=max_norm)
    norm_after = math.sqrt(sum(float(np.sum(g**2)) for g in clipped.values()))
    assert norm_after <= max_norm + 1e-9
    assert all(np.array_equal(grads[k], before[k]) for k in grads)  # the input is not modified

    tensors = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()
    ]
    for t, g in zip(tensors, grads.values(), strict=True):
        t.grad = torch.from_numpy(g.copy())
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    assert total_norm == pytest.approx(torch_norm.item(), rel=1e-12)
    for t, g in zip(tensors, clipped.values(), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12, atol=0)
    if max_norm > total_norm:
        assert all(np.array_equal(clipped[k], grads[k]) for k in grads)


def test_clip_by_value_is_np_clip():
    grads = bptt_grads()
    clipped, total_norm = bptt.clip_gradients(grads, max_value=0.05)
    for k, g in grads.items():
        np.testing.assert_array_equal(clipped[k], np.clip(g, -0.05, 0.05))
    assert total_norm == pytest.approx(np.sqrt(sum(np.sum(g**2) for g in grads.values())))


def test_clip_both_rescales_then_clamps_and_rejects_bad_limits():
    grads = bptt_grads()
    clipped, _ = bptt.clip_gradients(grads, max_norm=0.5, max_value=0.01)
    rescaled, _ = bptt.clip_gradients(grads, max_norm=0.5)
    for k in grads:
        np.testing.assert_array_equal(clipped[k], np.clip(rescaled[k], -0.01, 0.01))
    for bad in ({"max_norm": 0.0}, {"max_value": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bptt.clip_gradients(grads, **bad)


# --- The report and the oracle's power to fail ---------------------------------------------------


def test_report_covers_every_cell_and_passes():
    rows = bptt.gradcheck(seed=0)
    assert {r["cell"] for r in rows} == set(CELLS)
    assert len(rows) == len(CELLS) + 2  # rnn, lstm: two checks each; every other cell: one
    assert all(r["max_rel_error"] < bptt.TOLERANCE for r in rows), rows
    report = bptt.gradcheck_report(seed=0)
    for cell in CELLS:
        assert f"\n{cell} " in report
    assert "FAIL" not in report and "all errors < 1e-06" in report


def test_gradcheck_with_projection_weights():
    # input_size != hidden_size adds MUT1/MUT2's weight_proj; its gradient is checked too.
    rows = bptt.gradcheck(seed=1, input_size=3)
    assert all(r["max_rel_error"] < bptt.TOLERANCE for r in rows), rows


def test_relative_error():
    a = np.array([1.0, -2.0, 1e-12])
    assert bptt.relative_error(a, a) == 0
    assert bptt.relative_error(a, a + [0, 0, 1e-9]) == pytest.approx(1e-9 / 2)  # scale: max |.|
    assert bptt.relative_error(np.zeros(3), np.zeros(3)) == 0


def test_oracle_catches_a_wrong_tanh_derivative(monkeypatch):
    monkeypatch.setattr(bptt, "_tanh_grad", lambda y: 1 - y)  # should be 1 - y²
    rows = {(r["cell"], r["check"]): r["max_rel_error"] for r in bptt.gradcheck(seed=0)}
    for cell in ("rnn", "lstm"):
        assert rows[cell, "bptt vs finite differences"] > 1e-2
        assert rows[cell, "bptt vs autograd"] > 1e-2
    assert rows["gru", "autograd vs finite differences"] < bptt.TOLERANCE  # no NumPy involved
    assert "FAIL" in bptt.gradcheck_report(seed=0)


def test_oracle_catches_a_wrong_sigmoid_derivative_in_the_lstm_only(monkeypatch):
    monkeypatch.setattr(bptt, "_sigmoid_grad", lambda s: s)  # should be s(1 - s)
    rows = {(r["cell"], r["check"]): r["max_rel_error"] for r in bptt.gradcheck(seed=0)}
    assert rows["lstm", "bptt vs finite differences"] > 1e-2
    assert rows["rnn", "bptt vs finite differences"] < bptt.TOLERANCE


def test_oracle_catches_a_small_error_in_one_element():
    arrays, x, targets = make_problem("rnn", 0)
    grads = numpy_grads("rnn", arrays, x, targets)
    fd = bptt.finite_difference_grads(lambda a: forward("rnn", a, x, targets)[0], arrays)
    grads["weight_hh"][1, 2] *= 1 + 1e-4
    assert bptt.relative_error(grads["weight_hh"], fd["weight_hh"]) > 1e-6


def test_oracle_catches_a_step_whose_autograd_graph_is_cut(monkeypatch):
    # A GRU whose state is detached at every step (truncated BPTT with chunks of one step): the
    # same loss, but autograd no longer sees gradients through time.
    def cut_gru_step(x, h, p):
        return gru_step(x, h.detach(), p)

    monkeypatch.setitem(bptt.STEPS, "gru", cut_gru_step)
    rows = {(r["cell"], r["check"]): r["max_rel_error"] for r in bptt.gradcheck(seed=0)}
    assert rows["gru", "autograd vs finite differences"] > 1e-2
