"""rnnlab.RNN/LSTM/GRU as drop-ins for torch.nn's, and what the next graphs need from the core:
bidirectional layers, projections, packed and padded batches, conditioning, the one-step API,
double backward, parametrizations, pickling, torch's argument and exception conventions.
torch.nn is the reference wherever it has the feature; elsewhere the equations written out here.
"""

import io
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnlab
from rnnlab.cells import CELLS, ShapeError
from rnnlab.kernels import extension_status
from rnnlab.recurrent import Recurrent

TORCH = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
OURS = {"rnn": rnnlab.RNN, "lstm": rnnlab.LSTM, "gru": rnnlab.GRU}
STANDARD = ["rnn", "lstm", "gru"]
BACKENDS = ["reference", "fused", "native", "auto"]


def backends_for(cell):
    return BACKENDS if cell in STANDARD else ["reference", "fused", "auto"]


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def pair(cell, backend, **kw):
    """(ours, torch's) with the same weights: torch's init, copied across."""
    torch.manual_seed(0)
    theirs = TORCH[cell](5, 6, **kw)
    ours = OURS[cell](5, 6, **kw, backend=backend)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def assert_same_run(ours, theirs, x, hx=None, grad_tol=1e-5):
    """Outputs and final states within 1e-6, and every gradient within ``grad_tol``."""
    results = []
    for m in (ours, theirs):
        m.zero_grad()
        packed = hasattr(x, "batch_sizes")
        xi = (x.data if packed else x).detach().clone().requires_grad_()
        out, state = m(x._replace(data=xi) if packed else xi, hx)
        data = out.data if hasattr(out, "batch_sizes") else out
        w = torch.linspace(-1, 1, data.numel()).view_as(data)
        ((data * w).sum() + sum((s**2).sum() for s in flat(state))).backward()
        grads = [p.grad for p in m.parameters()]
        results.append((data.detach(), [s.detach() for s in flat(state)], xi.grad, grads))
    (oa, sa, xa, ga), (ob, sb, xb, gb) = results
    torch.testing.assert_close(oa, ob, rtol=0, atol=1e-6)
    for a, b in zip(sa, sb, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(xa, xb, rtol=0, atol=grad_tol)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=grad_tol)


# -- the drop-in ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", STANDARD)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bidirectional_parity_with_torch(cell, backend, bidirectional):
    ours, theirs = pair(cell, backend, num_layers=2, bidirectional=bidirectional)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()
    ]
    assert_same_run(ours, theirs, torch.randn(7, 3, 5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", STANDARD)
def test_bidirectional_h_n_layout(cell, backend):
    """h_n[-2] is the forward direction's last step, h_n[-1] the reverse one's first (torch)."""
    ours, _ = pair(cell, backend, bidirectional=True)
    out, state = ours(torch.randn(4, 2, 5))
    h_n = flat(state)[0]
    torch.testing.assert_close(h_n[-2], out[-1, :, :6])
    torch.testing.assert_close(h_n[-1], out[0, :, 6:])


@pytest.mark.parametrize("backend", ["reference", "native", "auto", "fused"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_proj_size_parity(backend, bidirectional):
    torch.manual_seed(0)
    theirs = nn.LSTM(5, 6, 2, proj_size=3, bidirectional=bidirectional)
    ours = rnnlab.LSTM(5, 6, 2, proj_size=3, bidirectional=bidirectional, backend=backend)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert_same_run(ours, theirs, torch.randn(4, 2, 5))
    D = 2 if bidirectional else 1
    hx = (torch.randn(2 * D, 2, 3), torch.randn(2 * D, 2, 6))
    assert_same_run(ours, theirs, torch.randn(4, 2, 5), hx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", STANDARD)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_sequence_parity_unsorted(cell, backend, bidirectional):
    ours, theirs = pair(cell, backend, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(7, 4, 5)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    D = 2 if bidirectional else 1
    hx = torch.randn(2 * D, 4, 6)
    hx = (hx, torch.randn_like(hx)) if cell == "lstm" else hx
    assert_same_run(ours, theirs, packed, hx)
    out, state = ours(packed, hx)
    ref_out, ref_state = theirs(packed, hx)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert torch.equal(out.unsorted_indices, ref_out.unsorted_indices)
    padded, lens = pad_packed_sequence(out)
    assert torch.equal(lens, lengths)
    for b, n in enumerate(lengths):
        assert padded[n:, b].abs().max() == 0 if n < 7 else True  # padded positions exactly 0


@pytest.mark.parametrize("cell", STANDARD)
def test_init_bit_for_bit_with_forget_bias_none(cell):
    opts = {"forget_bias": None} if cell == "lstm" else {}
    for kw in ({}, {"num_layers": 2, "bidirectional": True}):
        torch.manual_seed(3)
        theirs = TORCH[cell](5, 6, **kw)
        torch.manual_seed(3)
        ours = OURS[cell](5, 6, **kw, **opts)
        pairs = zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True)
        for (n, a), (_, b) in pairs:
            assert torch.equal(a, b), n
    default = rnnlab.LSTM(5, 6)  # the one intended deviation: the forget-gate bias starts at 1
    assert torch.all(default.bias_ih_l0[6:12] + default.bias_hh_l0[6:12] == 1)


def test_positional_arguments_are_torchs():
    m = rnnlab.LSTM(10, 20, 2, True, False, 0.5)
    assert (m.num_layers, m.bias, m.batch_first, m.dropout) == (2, True, False, 0.5)
    m = rnnlab.LSTM(10, 20, 1, True, True, 0.0, True, 5)
    assert m.batch_first and m.bidirectional and m.proj_size == 5
    r = rnnlab.RNN(2, 3, 1, "relu")
    assert r.nonlinearity == "relu" and r.bias is True
    g = rnnlab.GRU(2, 3, 2, False, True, 0.1, True)
    assert (g.bias, g.batch_first, g.dropout, g.bidirectional) == (False, True, 0.1, True)
    assert rnnlab.MUT2(4, 4, 2, True, True).batch_first
    with pytest.raises(TypeError):
        Recurrent("lstm", 10, 20, 2)  # the generic form's options are keyword-only


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnlab.RNN(2, 3, 1, "tanh", "yes"),
        lambda: rnnlab.LSTM(2, 3, 1, True, 0.5),
        lambda: rnnlab.GRU(2, 3, bidirectional=1),
        lambda: rnnlab.LSTM(2, 3.0),
        lambda: rnnlab.LSTM(2, 3, num_layers=2.0),
    ],
)
def test_wrong_argument_types_raise_type_error_like_torch(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize(
    "kw",
    [{"hidden_size": 0}, {"dropout": 1.5}, {"dropout": -0.1}, {"proj_size": 6}, {"num_layers": 0}],
)
def test_wrong_values_raise_value_error_like_torch(kw):
    args = {"input_size": 5, "hidden_size": 6, **kw}
    with pytest.raises(ValueError):
        nn.LSTM(**args)
    with pytest.raises(ValueError):
        rnnlab.LSTM(**args)


def test_dropout_one_is_accepted():
    m = rnnlab.GRU(3, 4, 2, dropout=1.0, backend="reference").train()
    out, _ = m(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_errors_are_runtime_errors_like_torch(backend):
    ours, theirs = pair("gru", backend)
    bad_calls = [
        lambda m: m(torch.randn(4, 2, 7)),  # wrong input size
        lambda m: m(torch.randn(4, 2, 5), torch.zeros(1, 3, 6)),  # wrong h_0 batch
        lambda m: m(torch.randn(0, 2, 5)),  # zero-length sequence
    ]
    with pytest.raises(ValueError):  # a wrong dtype: torch raises ValueError, so do we
        theirs(torch.randn(4, 2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected dtype torch.float32"):
        ours(torch.randn(4, 2, 5, dtype=torch.float64))
    for call in bad_calls:
        with pytest.raises(RuntimeError):
            call(theirs)
        with pytest.raises(RuntimeError) as err:
            call(ours)
        assert isinstance(err.value, ValueError) and isinstance(err.value, ShapeError)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "fused", "auto"])
def test_zero_length_sequence_is_a_clear_error(cell, backend):
    m = Recurrent(cell, 3, 3, backend=backend)
    with pytest.raises(ShapeError, match="sequence length larger than 0"):
        m(torch.randn(0, 2, 3))


def test_all_weights_and_flatten_parameters():
    ours, theirs = pair("lstm", "auto", num_layers=2, bidirectional=True, proj_size=2)
    assert ours.flatten_parameters() is None
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [
        [w.shape for w in ws] for ws in theirs.all_weights
    ]
    assert all(a is b for a, b in zip(ours.all_weights[0], ours.parameters(), strict=False))


def test_top_level_public_api_is_lazy_and_complete():
    import subprocess
    import sys

    code = ("import sys, rnnlab; assert 'torch' not in sys.modules; "
            "from rnnlab import (Recurrent, RNN, LSTM, GRU, MUT1, MUT2, MUT3, LSTMCell, CharLM, "
            "CharLMConfig, TrainConfig, SampleConfig, load_run, prepare_corpus, ShapeError, "
            "Seq2Seq, SequenceClassifier, Captioner); "
            "print('ok')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    with pytest.raises(AttributeError):
        rnnlab.NoSuchThing  # noqa: B018


# -- parametrizations, re-assigned weights, pickling -------------------------------------------


PARAMETRIZATIONS = {
    "weight_norm": lambda m: parametrizations.weight_norm(m, "weight_hh_l0"),
    "orthogonal": lambda m: parametrizations.orthogonal(m, "weight_hh_l0"),
    "spectral_norm": lambda m: parametrizations.spectral_norm(m, "weight_hh_l0"),
    "old_weight_norm": lambda m: torch.nn.utils.weight_norm(m, "weight_hh_l0"),
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("kind", list(PARAMETRIZATIONS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_parametrizations_work_like_torch(kind, backend):
    ours, theirs = pair("lstm", backend, num_layers=2)
    for m in (theirs, ours):
        torch.manual_seed(1)
        PARAMETRIZATIONS[kind](m)
    ours.eval(), theirs.eval()  # spectral_norm's power iteration runs in training mode only
    assert_same_run(ours, theirs, torch.randn(4, 2, 5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_deleting_and_reassigning_a_weight(backend):
    ours, theirs = pair("gru", backend, num_layers=2)
    for m in (ours, theirs):
        w = m.weight_hh_l0
        del m.weight_hh_l0
        m.weight_hh_l0 = w  # now registered last: parameter order changed
    assert_same_run(ours, theirs, torch.randn(4, 2, 5))


@pytest.mark.parametrize("cell", list(CELLS))
def test_pickle_and_torch_save_round_trip(cell):
    from rnnlab.models import CharLM, CharLMConfig

    torch.manual_seed(0)
    for m in (Recurrent(cell, 4, 4, num_layers=2, nonlinearity="tanh"),
              rnnlab.RNN(4, 4, nonlinearity="relu"),
              CharLM(CharLMConfig(9, cell=cell, hidden_size=4, num_layers=1))):  # fmt: skip
        m.eval()
        x = torch.randint(0, 9, (2, 5)) if isinstance(m, CharLM) else torch.randn(5, 2, 4)
        want = m(x)[0]
        copy = pickle.loads(pickle.dumps(m))
        torch.testing.assert_close(copy(x)[0], want, rtol=0, atol=0)
        buffer = io.BytesIO()
        torch.save(m, buffer)  # pickles the whole module (the user's choice, not rnnlab's)
        buffer.seek(0)
        torch.testing.assert_close(torch.load(buffer, weights_only=False)(x)[0], want)


# -- double backward ---------------------------------------------------------------------------


def test_gradient_penalty_through_fused_matches_torch():
    """The issue's example: weight_hh_l0's grad norm 1.90 (detached) vs nn.GRU's 4.33."""
    norms = {}
    for backend in ("fused", "torch"):
        torch.manual_seed(0)
        theirs = nn.GRU(4, 6)
        m = theirs if backend == "torch" else rnnlab.GRU(4, 6, backend=backend)
        m.load_state_dict(theirs.state_dict())
        torch.manual_seed(1)
        x = torch.randn(5, 3, 4, requires_grad=True)
        out, _ = m(x)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        (out.pow(2).sum() + g.pow(2).sum()).backward()
        norms[backend] = m.weight_hh_l0.grad.norm()
    torch.testing.assert_close(norms["fused"], norms["torch"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "fused", "native"])
def test_gradgradcheck_every_cell_and_backend(cell, backend):
    if backend == "native" and cell not in STANDARD:
        pytest.skip("native runs rnn/lstm/gru only")
    torch.manual_seed(0)
    m = Recurrent(cell, 3, 3, num_layers=2, backend=backend).double()
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])
    params = list(m.parameters())

    def f(x, *weights):
        return m(x, lengths=lengths if backend != "native" else None)[0]

    assert torch.autograd.gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-4)


# -- variable lengths --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "fused", "native"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_batch_equals_each_sequence_alone(cell, backend, bidirectional):
    if backend == "native" and cell not in STANDARD:
        pytest.skip("native runs rnn/lstm/gru only")
    torch.manual_seed(0)
    m = Recurrent(cell, 4, 5, num_layers=2, bidirectional=bidirectional, backend=backend)
    lengths = torch.tensor([2, 6, 4, 1, 6])
    x = torch.randn(6, 5, 4, requires_grad=True)
    out, state = m(x, lengths=lengths)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
    loss = loss + sum((s**2).sum() for s in flat(state))
    grad_x, *grad_w = torch.autograd.grad(loss, [x, *m.parameters()])
    want_grads = [torch.zeros_like(g) for g in grad_w]
    for b, n in enumerate(lengths.tolist()):
        xb = x[:n, b : b + 1].detach().requires_grad_()
        ob, sb = m(xb)
        torch.testing.assert_close(out[:n, b : b + 1], ob, rtol=1e-5, atol=1e-6)
        assert out[n:, b].abs().max() == 0 if n < 6 else True
        for a, c in zip(flat(state), flat(sb), strict=True):
            torch.testing.assert_close(a[:, b : b + 1], c, rtol=1e-5, atol=1e-6)
        w = torch.linspace(-1, 1, out.numel()).view_as(out)[:n, b : b + 1]
        lb = (ob * w).sum() + sum((s**2).sum() for s in flat(sb))
        gx, *gw = torch.autograd.grad(lb, [xb, *m.parameters()])
        torch.testing.assert_close(grad_x[:n, b : b + 1], gx, rtol=1e-4, atol=1e-5)
        assert grad_x[n:, b].abs().max() == 0 if n < 6 else True
        want_grads = [a + g for a, g in zip(want_grads, gw, strict=True)]
    for a, b in zip(grad_w, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lengths_errors():
    m = Recurrent("gru", 3, 4)
    x = torch.randn(5, 2, 3)
    for lengths, message in (([5], "expected 2 integer lengths"), ([0, 5], "each in 1..5"),
                             ([6, 2], "each in 1..5"), ([1.5, 2.0], "integer")):  # fmt: skip
        with pytest.raises(ShapeError, match=message):
            m(x, lengths=torch.tensor(lengths))


# -- conditioning ------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", STANDARD)
@pytest.mark.parametrize("backend", ["reference", "fused", "auto"])
def test_condition_equals_concatenated_input(cell, backend):
    """W_ih x + W_ch v == [W_ih | W_ch] [x; v]: the lecture's h = tanh(W_xh x + W_hh h + W_ch v)."""
    torch.manual_seed(0)
    cond = Recurrent(cell, 4, 5, num_layers=2, condition_size=3, backend=backend)
    concat = Recurrent(cell, 7, 5, num_layers=2, backend="reference")
    sd = cond.state_dict()
    sd["weight_ih_l0"] = torch.cat([sd["weight_ih_l0"], sd.pop("weight_ch_l0")], 1)
    concat.load_state_dict(sd)
    x, v = torch.randn(6, 2, 4), torch.randn(2, 3)
    xv = torch.cat([x, v.expand(6, 2, 3)], -1)
    results = []
    for m, args in ((cond, (x, {"condition": v})), (concat, (xv, {}))):
        inp = args[0].clone().requires_grad_()
        out, state = m(inp, **args[1])
        (out.sum() + flat(state)[0].pow(2).sum()).backward()
        results.append((out, inp.grad[..., :4], [p.grad for p in m.parameters()]))
    (oa, xa, ga), (ob, xb, gb) = results
    torch.testing.assert_close(oa, ob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-5)
    names = [n for n, _ in cond.named_parameters()]
    grads = dict(zip(names, ga, strict=True))
    gb = dict(zip([n for n, _ in concat.named_parameters()], gb, strict=True))
    torch.testing.assert_close(grads["weight_ih_l0"], gb["weight_ih_l0"][:, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads["weight_ch_l0"], gb["weight_ih_l0"][:, 4:], atol=1e-5, rtol=0)


def _mut_by_hand(cell, x, v, p):
    """MUT1-3 with W_ch v added to every W_x* x term (the raw x / tanh(x) terms unchanged)."""
    sig, tanh = torch.sigmoid, torch.tanh
    H = p["weight_hh"].shape[1]
    blk = lambda W, k: W[k * H : (k + 1) * H]  # noqa: E731
    cv = F.linear(v, p["weight_ch"])
    Wi, Wh, b = p["weight_ih"], p["weight_hh"], p["bias"]
    h, outs = torch.zeros(x.shape[1], H), []
    for t in range(x.shape[0]):
        xt = x[t]
        xs = [F.linear(xt, blk(Wi, k)) + blk(cv.T, k).T for k in range(Wi.shape[0] // H)]
        if cell == "mut1":
            z = sig(xs[0] + blk(b, 0))
            r = sig(xs[1] + F.linear(h, blk(Wh, 0)) + blk(b, 1))
            h = tanh(F.linear(r * h, blk(Wh, 1)) + tanh(xt) + blk(b, 2)) * z + h * (1 - z)
        elif cell == "mut2":
            z = sig(xs[0] + F.linear(h, blk(Wh, 0)) + blk(b, 0))
            r = sig(xt + F.linear(h, blk(Wh, 1)) + blk(b, 1))
            h = tanh(F.linear(r * h, blk(Wh, 2)) + xs[1] + blk(b, 2)) * z + h * (1 - z)
        else:
            z = sig(xs[0] + F.linear(tanh(h), blk(Wh, 0)) + blk(b, 0))
            r = sig(xs[1] + F.linear(h, blk(Wh, 1)) + blk(b, 1))
            h = tanh(F.linear(r * h, blk(Wh, 2)) + xs[2] + blk(b, 2)) * z + h * (1 - z)
        outs.append(h)
    return torch.stack(outs)


@pytest.mark.parametrize("cell", ["mut1", "mut2", "mut3"])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_condition_in_the_mut_equations(cell, backend):
    torch.manual_seed(0)
    m = Recurrent(cell, 5, 5, condition_size=3, backend=backend)
    x, v = torch.randn(4, 2, 5), torch.randn(2, 3, requires_grad=True)
    out, _ = m(x, condition=v)
    want = _mut_by_hand(cell, x, v, m.layer_params(0))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(out.sum(), [v, *m.parameters()])
    ref = torch.autograd.grad(want.sum(), [v, *m.parameters()])
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_condition_errors():
    m = Recurrent("gru", 3, 4, condition_size=2)
    x = torch.randn(5, 2, 3)
    with pytest.raises(ShapeError, match="pass condition"):
        m(x)
    with pytest.raises(ShapeError, match=r"condition: expected shape \(2, 2\)"):
        m(x, condition=torch.randn(3, 2))
    with pytest.raises(ShapeError, match="condition_size=0"):
        Recurrent("gru", 3, 4)(x, condition=torch.randn(2, 2))
    with pytest.raises(ValueError, match="'native' takes no condition"):
        Recurrent("gru", 3, 4, condition_size=2, backend="native")


# -- one step at a time ------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("backend", ["reference", "fused", "auto"])
@pytest.mark.parametrize("grad", [False, True])
def test_step_equals_forward(cell, backend, grad):
    torch.manual_seed(0)
    m = Recurrent(cell, 4, 5, num_layers=2, condition_size=2, backend=backend).eval()
    x, v = torch.randn(6, 3, 4), torch.randn(3, 2)
    want, want_state = m(x, condition=v)
    state, outs = None, []
    with torch.set_grad_enabled(grad):
        for t in range(6):
            y, state = m.step(x[t], state, condition=v)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs), want, rtol=1e-5, atol=1e-6)
    for a, b in zip(flat(state), flat(want_state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert outs[-1].requires_grad == grad
    if grad:  # differentiable: backpropagation through the decoder's steps
        g = torch.autograd.grad(torch.stack(outs).sum(), m.weight_ih_l0)[0]
        torch.testing.assert_close(g, torch.autograd.grad(want.sum(), m.weight_ih_l0)[0])


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_with_embedding_lookup(cell):
    torch.manual_seed(0)
    m = Recurrent(cell, 4, 5, num_layers=2, backend="fused")
    table = torch.randn(11, 4)
    ids = torch.randint(0, 11, (6, 3))
    with torch.no_grad():
        want, _ = m(ids, embedding=table)
        state, outs = None, []
        for t in range(6):
            y, state = m.step(ids[t], state, embedding=table)
            outs.append(y)
    torch.testing.assert_close(torch.stack(outs), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="bidirectional"):
        Recurrent(cell, 4, 5, bidirectional=True).step(torch.randn(2, 4))


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_lookup_table_follows_weight_changes(cell):
    """step() keeps the folded (V, G) table between calls: any change of the embedding or of a
    layer-0 weight (an optimizer step, load_state_dict, re-assignment) must rebuild it."""
    torch.manual_seed(0)
    m = Recurrent(cell, 4, 5, num_layers=2, backend="fused")
    table, ids = torch.randn(11, 4), torch.tensor([3, 9])

    def check() -> None:
        with torch.no_grad():
            got, _ = m.step(ids, None, embedding=table)
            want, _ = m(ids[None], None, embedding=table)
        torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-6)

    check()
    with torch.no_grad():
        m.weight_ih_l0.mul_(2.0)  # in place, like optimizer.step()
    check()
    table.add_(1.0)
    check()
    m.load_state_dict({k: v + 0.5 for k, v in m.state_dict().items()})
    check()
    m.weight_ih_l0 = nn.Parameter(torch.randn_like(m.weight_ih_l0))  # a new tensor
    check()
    assert "_step_cache_" not in pickle.loads(pickle.dumps(m)).__dict__  # a cache, not state


@pytest.mark.skipif(not extension_status().available, reason="the C++ engine is not built")
@pytest.mark.parametrize("cell", list(CELLS))
def test_lookup_fold_with_condition_and_lengths_equals_reference(cell):
    """The embedding fold, conditioning, bidirectional layers and lengths together, on the
    engine, against the reference loop: values and gradients."""
    torch.manual_seed(0)
    ref = Recurrent(cell, 4, 5, num_layers=2, bidirectional=True, condition_size=3,
                    backend="reference")  # fmt: skip
    fused = Recurrent(cell, 4, 5, num_layers=2, bidirectional=True, condition_size=3,
                      backend="fused")  # fmt: skip
    fused.load_state_dict(ref.state_dict())
    table = torch.randn(3, 4, requires_grad=True)
    ids, v = torch.randint(0, 3, (6, 4)), torch.randn(4, 3)
    lengths = torch.tensor([6, 2, 5, 3])
    assert fused.folds_lookup(ids.numel(), 3)
    results = []
    for m in (fused, ref):
        out, state = m(ids, condition=v, lengths=lengths, embedding=table)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + flat(state)[0].sum()
        results.append((out, torch.autograd.grad(loss, [table, *m.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_lengths_with_batch_first_equal_time_major():
    torch.manual_seed(0)
    tm = Recurrent("lstm", 3, 4, num_layers=2, bidirectional=True, backend="fused")
    bf = Recurrent("lstm", 3, 4, num_layers=2, bidirectional=True, batch_first=True)
    bf.load_state_dict(tm.state_dict())
    x, lengths = torch.randn(5, 3, 3), torch.tensor([2, 5, 4])
    out_tm, (h_tm, c_tm) = tm(x, lengths=lengths)
    out_bf, (h_bf, c_bf) = bf(x.transpose(0, 1), lengths=lengths)
    torch.testing.assert_close(out_bf.transpose(0, 1), out_tm)
    torch.testing.assert_close(h_bf, h_tm)
    torch.testing.assert_close(c_bf, c_tm)


@pytest.mark.skipif(not extension_status().available, reason="the C++ engine is not built")
@pytest.mark.parametrize("cell", list(CELLS))
def test_trace_on_the_engine_equals_the_reference_trace(cell):
    """Under no_grad the engine records the gates (what it saves for backward): the same names
    and values as the reference loop's, with lengths and both directions."""
    torch.manual_seed(0)
    m = Recurrent(cell, 4, 5, num_layers=2, bidirectional=True, batch_first=True)
    x, lengths = torch.randn(3, 6, 4), torch.tensor([6, 2, 4])
    with torch.no_grad():
        out_f, state_f, gates_f = m.trace(x, lengths=lengths)  # the engine
    out_r, state_r, gates_r = m.trace(x, lengths=lengths)  # grad mode: the reference loop
    torch.testing.assert_close(out_f, out_r.detach())
    for a, b in zip(flat(state_f), flat(state_r), strict=True):
        torch.testing.assert_close(a, b.detach())
    assert len(gates_f) == len(gates_r) == 4
    for layer_f, layer_r in zip(gates_f, gates_r, strict=True):
        assert layer_f.keys() == layer_r.keys()
        for name in layer_r:
            torch.testing.assert_close(layer_f[name], layer_r[name].detach(), msg=name)
