"""Recurrent against torch.nn.RNN/LSTM/GRU, across backends, chunks and bad arguments."""

import itertools
import warnings

import pytest
import torch
import torch.nn as nn

from rnnlab.cells import CELLS
from rnnlab.recurrent import Recurrent

TORCH = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_state(cell, L, B, H, batched=True):
    shape = (L, B, H) if batched else (L, H)
    h = torch.randn(shape)
    return (h, torch.randn(shape)) if cell == "lstm" else h


def flat(state):
    return state if isinstance(state, tuple) else (state,)


PARITY = list(
    itertools.product(
        ["rnn", "lstm", "gru"],
        [1, 2],  # num_layers
        [False, True],  # batch_first
        [False, True],  # initial state given
        [True, False],  # batched
        ["reference", "native", "auto"],
    )
)


@pytest.mark.parametrize("cell,L,batch_first,with_state,batched,backend", PARITY)
def test_parity_with_torch(cell, L, batch_first, with_state, batched, backend):
    torch.manual_seed(0)
    I, H, T, B = 5, 6, 7, 3
    theirs = TORCH[cell](I, H, L, batch_first=batch_first)
    ours = Recurrent(cell, I, H, num_layers=L, batch_first=batch_first, backend=backend)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    if batched:
        x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    else:
        x = torch.randn(T, I)
    state = make_state(cell, L, B, H, batched) if with_state else None
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, st_a = ours(x1, state)
    out_b, st_b = theirs(x2, state)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    for a, b in zip(flat(st_a), flat(st_b), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Gradients: a loss touching the outputs and every final state.
    w = torch.randn_like(out_a)
    la = (out_a * w).sum() + sum(s.sum() for s in flat(st_a))
    lb = (out_b * w).sum() + sum(s.sum() for s in flat(st_b))
    la.backward()
    lb.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-5)
    for (n, pa), (_, pb) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=1e-5, msg=n)


def test_state_dict_crosses_both_ways():
    ours = Recurrent("lstm", 4, 5, num_layers=2)
    theirs = nn.LSTM(4, 5, 2)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 2, 4)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_chunked_run_equals_full_run(cell, backend):
    torch.manual_seed(1)
    m = Recurrent(cell, 4, 4, num_layers=2, backend=backend)
    x = torch.randn(12, 3, 4)
    full, s_full = m(x)
    outs, s = [], None
    for chunk in x.split(5):
        y, s = m(chunk, s)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs), full, rtol=0, atol=1e-6)
    for a, b in zip(flat(s), flat(s_full), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_every_cell_two_layers(cell):
    torch.manual_seed(2)
    m = Recurrent(cell, 3, 3, num_layers=2, backend="reference").double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True)
    lstm = CELLS[cell].has_cell_state
    state = (h0, torch.randn_like(h0).requires_grad_()) if lstm else h0

    def f(x, *s):
        return m(x, s if lstm else s[0])[0]

    assert torch.autograd.gradcheck(f, (x, *flat(state)))


def test_multilayer_is_a_stack_of_cells():
    """Layer k's input is layer k-1's output sequence (no hidden coupling across layers)."""
    torch.manual_seed(3)
    m = Recurrent("mut2", 4, 4, num_layers=2)
    lower = Recurrent("mut2", 4, 4, num_layers=1)
    upper = Recurrent("mut2", 4, 4, num_layers=1)
    sd = m.state_dict()
    lower.load_state_dict({k: v for k, v in sd.items() if k.endswith("_l0")})
    upper.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if k.endswith("_l1")})
    x = torch.randn(6, 2, 4)
    torch.testing.assert_close(m(x)[0], upper(lower(x)[0])[0], rtol=0, atol=1e-6)


def test_dropout_train_and_eval():
    torch.manual_seed(4)
    m = Recurrent("gru", 4, 8, num_layers=2, dropout=0.5, backend="reference")
    x = torch.randn(5, 3, 4)
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)
    m.train()
    assert not torch.equal(m(x)[0], m(x)[0])


def test_trace_matches_forward_and_records_gates():
    torch.manual_seed(5)
    m = Recurrent("lstm", 3, 4, num_layers=2, batch_first=True)
    x = torch.randn(2, 6, 3)
    out, state, gates = m.trace(x)
    torch.testing.assert_close(out, m(x)[0], rtol=0, atol=1e-6)
    assert len(gates) == 2 and set(gates[0]) == {"i", "f", "g", "o", "c", "h"}
    assert gates[1]["h"].shape == (2, 6, 4)
    torch.testing.assert_close(gates[1]["h"], out)
    torch.testing.assert_close(gates[1]["c"][:, -1], state[1][1])


def test_lstm_forget_bias_default_and_none():
    m = Recurrent("lstm", 3, 4, num_layers=2)
    for k in range(2):
        assert torch.all(getattr(m, f"bias_ih_l{k}")[4:8] + getattr(m, f"bias_hh_l{k}")[4:8] == 1)
    m = Recurrent("lstm", 3, 4, forget_bias=None)
    assert (m.bias_ih_l0[4:8] + m.bias_hh_l0[4:8]).abs().max() < 1


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Recurrent("lsmt", 3, 4), "cell: expected one of rnn|lstm|gru|mut1|mut2|mut3"),
        (
            lambda: Recurrent("lstm", 3, 4, dropout=1.5),
            "dropout: expected a number in [0, 1], got 1.5",
        ),
        (lambda: Recurrent("lstm", 3, 4, dropout=-0.1), "dropout: expected a number in [0, 1]"),
        (lambda: Recurrent("lstm", 3, 0), "hidden_size: expected a positive integer, got 0"),
        (lambda: Recurrent("lstm", 3, 4, num_layers=0), "num_layers: expected a positive integer"),
        (lambda: Recurrent("mut1", 3, 4, backend="native"), "backend: 'native' supports"),
        (lambda: Recurrent("lstm", 3, 4, backend="cudnn"), "backend: expected one of"),
        (
            lambda: Recurrent("gru", 3, 4)(torch.randn(2, 3, 4, 5)),
            "input: expected 2-D (T, I) or 3-D (T, B, I)",
        ),
        (
            lambda: Recurrent("gru", 3, 4)(torch.randn(2, 3, 5)),
            "input: expected size 3 in the last dimension, got 5",
        ),
        (
            lambda: Recurrent("gru", 3, 4, num_layers=2)(
                torch.randn(5, 2, 3), torch.zeros(1, 2, 4)
            ),
            "hx: expected h_0 of shape (2, 2, 4), got (1, 2, 4)",
        ),
        (
            lambda: Recurrent("lstm", 3, 4)(torch.randn(5, 2, 3), torch.zeros(1, 2, 4)),
            "hx: expected a tuple (h_0, c_0) for cell 'lstm'",
        ),
        (
            lambda: Recurrent("lstm", 3, 4)(
                torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 3, 4))
            ),
            "hx: expected c_0 of shape (1, 2, 4), got (1, 3, 4)",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


def test_dropout_with_one_layer_warns():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Recurrent("lstm", 3, 4, dropout=0.2)
    assert any("no effect" in str(x.message) for x in w)
