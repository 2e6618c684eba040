"""Each cell against torch.nn's cells and a naive per-equation reference written here."""

import pytest
import torch
import torch.nn as nn

from rnnlab.cells import CELLS, GRUCell, LSTMCell, RNNCell, cell_class

sig, tanh = torch.sigmoid, torch.tanh


def mm(W, v):
    return v @ W.T


def naive_step(cell, x, state):
    """The issue's equations, written with explicitly sliced weight matrices."""
    p = dict(cell.named_parameters())
    H = cell.hidden_size
    W_ih, W_hh = p["weight_ih"], p.get("weight_hh")

    def blk(W, k):
        return W[k * H : (k + 1) * H]

    def g(a):  # Feng et al. 2024: a + 0.5 for a >= 0, else sigmoid(a)
        return torch.where(a >= 0, a + 0.5, sig(a))

    if cell.name in ("mingru", "minlstm"):
        pre = [mm(blk(W_ih, k), x) + blk(p["bias_ih"], k) for k in range(W_ih.shape[0] // H)]
        if cell.name == "mingru":
            z = sig(pre[0])
            return (1 - z) * state + z * g(pre[1])
        f, i = sig(pre[0]), sig(pre[1])
        return f / (f + i) * state + i / (f + i) * g(pre[2])

    if cell.name == "rnn":
        a = mm(W_ih, x) + p["bias_ih"] + mm(W_hh, state) + p["bias_hh"]
        return tanh(a) if cell.nonlinearity == "tanh" else torch.relu(a)
    if cell.name == "indrnn":  # u = weight_hh, a vector
        a = mm(W_ih, x) + W_hh * state + p["bias"]
        return tanh(a) if cell.nonlinearity == "tanh" else torch.relu(a)

    def ln(a, gain, shift=0.0):  # layer norm written out: biased variance, eps 1e-5
        mu = a.mean(-1, keepdim=True)
        return (a - mu) / torch.sqrt(((a - mu) ** 2).mean(-1, keepdim=True) + 1e-5) * gain + shift

    if cell.name == "layernorm_lstm":
        h, c = state
        a = ln(mm(W_ih, x), p["ln_ih_weight"]) + ln(mm(W_hh, h), p["ln_hh_weight"]) + p["bias"]
        i, f, g, o = sig(blk(a.T, 0).T), sig(blk(a.T, 1).T), tanh(blk(a.T, 2).T), sig(blk(a.T, 3).T)
        c2 = f * c + i * g
        return o * tanh(ln(c2, p["ln_c_weight"], p["ln_c_bias"])), c2
    if cell.name == "layernorm_gru":
        ax = ln(mm(W_ih, x), p["ln_ih_weight"]) + p["bias_ih"]
        ah = ln(mm(W_hh, state), p["ln_hh_weight"]) + p["bias_hh"]
        r = sig(blk(ax.T, 0).T + blk(ah.T, 0).T)
        z = sig(blk(ax.T, 1).T + blk(ah.T, 1).T)
        n = tanh(blk(ax.T, 2).T + r * blk(ah.T, 2).T)
        return (1 - z) * n + z * state
    if cell.name == "lstm":
        h, c = state
        pre = [
            mm(blk(W_ih, k), x) + blk(p["bias_ih"], k) + mm(blk(W_hh, k), h) + blk(p["bias_hh"], k)
            for k in range(4)
        ]
        i, f, g, o = sig(pre[0]), sig(pre[1]), tanh(pre[2]), sig(pre[3])
        c2 = f * c + i * g
        return o * tanh(c2), c2
    h = state
    if cell.name == "gru":
        bi, bh = p["bias_ih"], p["bias_hh"]
        r = sig(mm(blk(W_ih, 0), x) + blk(bi, 0) + mm(blk(W_hh, 0), h) + blk(bh, 0))
        z = sig(mm(blk(W_ih, 1), x) + blk(bi, 1) + mm(blk(W_hh, 1), h) + blk(bh, 1))
        n = tanh(mm(blk(W_ih, 2), x) + blk(bi, 2) + r * (mm(blk(W_hh, 2), h) + blk(bh, 2)))
        return (1 - z) * n + z * h
    b_z, b_r, b_h = blk(p["bias"], 0), blk(p["bias"], 1), blk(p["bias"], 2)
    xp = mm(p["weight_proj"], x) if "weight_proj" in p else x
    if cell.name == "mut1":
        W_xz, W_xr = blk(W_ih, 0), blk(W_ih, 1)
        W_hr, W_hh_ = blk(W_hh, 0), blk(W_hh, 1)
        z = sig(mm(W_xz, x) + b_z)
        r = sig(mm(W_xr, x) + mm(W_hr, h) + b_r)
        return tanh(mm(W_hh_, r * h) + tanh(xp) + b_h) * z + h * (1 - z)
    if cell.name == "mut2":
        W_xz, W_xh = blk(W_ih, 0), blk(W_ih, 1)
        W_hz, W_hr, W_hh_ = blk(W_hh, 0), blk(W_hh, 1), blk(W_hh, 2)
        z = sig(mm(W_xz, x) + mm(W_hz, h) + b_z)
        r = sig(xp + mm(W_hr, h) + b_r)
        return tanh(mm(W_hh_, r * h) + mm(W_xh, x) + b_h) * z + h * (1 - z)
    W_xz, W_xr, W_xh = blk(W_ih, 0), blk(W_ih, 1), blk(W_ih, 2)
    W_hz, W_hr, W_hh_ = blk(W_hh, 0), blk(W_hh, 1), blk(W_hh, 2)
    z = sig(mm(W_xz, x) + mm(W_hz, tanh(h)) + b_z)
    r = sig(mm(W_xr, x) + mm(W_hr, h) + b_r)
    return tanh(mm(W_hh_, r * h) + mm(W_xh, x) + b_h) * z + h * (1 - z)


def random_state(cell, B, dtype=torch.float32):
    h = torch.randn(B, cell.hidden_size, dtype=dtype)
    return (h, torch.randn_like(h)) if cell.has_cell_state else h


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("input_size", [6, 5])
def test_cell_matches_naive_equations(name, input_size):
    torch.manual_seed(0)
    cell = cell_class(name)(input_size, 6)
    x = torch.randn(3, input_size)
    state = random_state(cell, 3)
    got = cell(x, state)
    want = naive_step(cell, x, state)
    for g, w in zip(
        got if isinstance(got, tuple) else (got,),
        want if isinstance(want, tuple) else (want,),
        strict=True,
    ):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(CELLS))
def test_gradcheck_float64(name):
    torch.manual_seed(1)
    cell = cell_class(name)(4, 4).double()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    state = random_state(cell, 2, torch.float64)
    state = (
        tuple(s.requires_grad_() for s in state)
        if isinstance(state, tuple)
        else state.requires_grad_()
    )
    names = [n for n, _ in cell.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in cell.parameters())

    def f(x, *rest):
        """Cell output as a function of input, state and every parameter."""
        s, w = (rest[:2], rest[2:]) if cell.has_cell_state else (rest[0], rest[1:])
        return torch.func.functional_call(cell, dict(zip(names, w, strict=True)), (x, s))

    inputs = (x, *state) if isinstance(state, tuple) else (x, state)
    assert torch.autograd.gradcheck(f, (*inputs, *params))


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda: RNNCell(5, 7), lambda: nn.RNNCell(5, 7)),
        (lambda: RNNCell(5, 7, nonlinearity="relu"), lambda: nn.RNNCell(5, 7, nonlinearity="relu")),
        (lambda: LSTMCell(5, 7), lambda: nn.LSTMCell(5, 7)),
        (lambda: GRUCell(5, 7), lambda: nn.GRUCell(5, 7)),
    ],
)
@pytest.mark.parametrize("batched", [True, False])
def test_parity_with_torch_cells(ours, theirs, batched):
    torch.manual_seed(2)
    a, b = ours(), theirs()
    assert [(n, p.shape) for n, p in a.named_parameters()] == [
        (n, p.shape) for n, p in b.named_parameters()
    ]
    a.load_state_dict(b.state_dict())
    x = torch.randn(4, 5) if batched else torch.randn(5)
    shape = (4, 7) if batched else (7,)
    h = torch.randn(shape)
    state = (h, torch.randn(shape)) if isinstance(a, LSTMCell) else h
    got, want = a(x, state), b(x, state)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    got0, want0 = a(x), b(x)  # zero initial state
    torch.testing.assert_close(got0, want0, rtol=0, atol=1e-6)


def test_lstm_gate_order_by_bias():
    """A large bias on one block must do what that gate does (i, f, g, o order)."""
    cell = LSTMCell(3, 4, forget_bias=None)
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.bias_hh.zero_()
    x, h, c = torch.randn(2, 3), torch.zeros(2, 4), torch.full((2, 4), 0.5)

    def run(block, value):
        with torch.no_grad():
            cell.bias_ih.zero_()
            cell.bias_ih[block * 4 : (block + 1) * 4] = value
        return cell(x, (h, c))

    # i closed (-inf), f open: c' = c; all other pre-activations are 0.
    _, c1 = run(0, -50.0)
    torch.testing.assert_close(c1, 0.5 * c)  # f = sigmoid(0) = 0.5, i*g = 0
    _, c2 = run(1, 50.0)  # f open: c' = c + i*g with g = tanh(0) = 0
    torch.testing.assert_close(c2, c)
    _, c3 = run(2, 50.0)  # g saturates at 1: c' = 0.5 c + 0.5 * 1
    torch.testing.assert_close(c3, 0.5 * c + 0.5)
    h4, c4 = run(3, -50.0)  # o closed: h' = 0
    torch.testing.assert_close(h4, torch.zeros_like(h4))


def test_gru_gate_order_by_bias():
    cell = GRUCell(3, 4)
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    with torch.no_grad():
        cell.bias_ih[4:8] = 50.0  # z open: h' = h
    torch.testing.assert_close(cell(x, h), h)
    with torch.no_grad():
        cell.bias_ih.zero_()
        cell.bias_ih[4:8] = -50.0  # z closed: h' = n = tanh(b_in + r * b_hn)
        cell.bias_hh[8:12] = 1.0  # b_hn, scaled by r
        cell.bias_ih[0:4] = -50.0  # r closed: r * b_hn = 0
    torch.testing.assert_close(cell(x, h), torch.zeros_like(h), atol=1e-6, rtol=0)
    with torch.no_grad():
        cell.bias_ih[0:4] = 50.0  # r open: n = tanh(1)
    torch.testing.assert_close(cell(x, h), torch.full_like(h, float(torch.tanh(torch.tensor(1.0)))))


def test_lstm_forget_bias_option():
    cell = LSTMCell(3, 4)
    assert torch.all(cell.bias_ih[4:8] + cell.bias_hh[4:8] == 1.0)
    cell = LSTMCell(3, 4, forget_bias=2.5)
    assert torch.all(cell.bias_ih[4:8] + cell.bias_hh[4:8] == 2.5)
    cell = LSTMCell(3, 4, forget_bias=None)
    assert (cell.bias_ih[4:8] + cell.bias_hh[4:8]).abs().max() <= 1.0


def test_mut_projection_only_when_sizes_differ():
    assert "weight_proj" not in dict(cell_class("mut1")(6, 6).named_parameters())
    assert dict(cell_class("mut1")(5, 6).named_parameters())["weight_proj"].shape == (6, 5)
    assert dict(cell_class("mut2")(5, 6).named_parameters())["weight_proj"].shape == (6, 5)
    assert "weight_proj" not in dict(cell_class("mut3")(5, 6).named_parameters())


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: cell_class("lstmm"),
            f"cell: expected one of {'|'.join(CELLS)}, got 'lstmm'",
        ),
        (lambda: RNNCell(0, 4), "input_size: expected a positive integer, got 0"),
        (lambda: RNNCell(3, 4, nonlinearity="sigmoid"), "nonlinearity"),
        (
            lambda: LSTMCell(3, 4)(torch.randn(2, 5)),
            "input: expected size 3 in the last dimension, got 5",
        ),
        (
            lambda: LSTMCell(3, 4)(torch.randn(1, 2, 3)),
            "input: expected a 1-D (I,) or 2-D (B, I) tensor, got 3-D",
        ),
        (
            lambda: GRUCell(3, 4)(torch.randn(2, 3), torch.randn(2, 5)),
            "state: expected shape (2, 4), got (2, 5)",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)
