"""The fused engine against the reference loop: values, gradients, gradcheck, state, sampling step,
backend choice and the build-failure path."""

import warnings

import pytest
import torch

from rnnlab import kernels
from rnnlab.kernels import extension
from rnnlab.recurrent import Recurrent

# (cell, nonlinearity): every compiled cell variant.
CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh"),
         ("mut1", "tanh"), ("mut2", "tanh"), ("mut3", "tanh")]  # fmt: skip
IDS = [c if n == "tanh" else f"{c}-{n}" for c, n in CELLS]
H = 8


@pytest.fixture(scope="module")
def ext():
    status = kernels.extension_status()
    assert status.available, f"the C++ extension did not build: {status.reason}"
    return extension.load_extension()


def make(cell, nonlinearity, input_size=6, num_layers=2, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    m = Recurrent(cell, input_size, H, num_layers=num_layers, nonlinearity=nonlinearity, **kw)
    m = m.to(dtype)
    return m


def make_state(cell, L, B, dtype=torch.float32, batched=True):
    shape = (L, B, H) if batched else (L, H)
    h = torch.randn(shape, dtype=dtype, requires_grad=True)
    return (h, torch.randn(shape, dtype=dtype, requires_grad=True)) if cell == "lstm" else h


def flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def run(m, backend, x, state):
    """Output, final state and the gradients of a fixed scalar w.r.t. x, state and parameters."""
    m.backend = backend
    out, new_state = m(x, state)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    loss = (out * weights).sum() + sum((s**2).sum() for s in flat(new_state))
    inputs = [x, *flat(state), *m.parameters()]
    return out, new_state, torch.autograd.grad(loss, inputs)


def assert_close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("input_size", [6, H])  # I != H adds MUT1/2's weight_proj
@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_fused_equals_reference(ext, cell, nonlinearity, input_size, layout):
    m = make(cell, nonlinearity, input_size, batch_first=layout == "batch_first")
    T, B = 5, 3
    shape = {"time_major": (T, B, input_size), "batch_first": (B, T, input_size),
             "unbatched": (T, input_size)}[layout]  # fmt: skip
    x = torch.randn(shape, requires_grad=True)
    state = make_state(cell, 2, B, batched=layout != "unbatched")
    out_r, state_r, grads_r = run(m, "reference", x, state)
    out_f, state_f, grads_f = run(m, "fused", x, state)
    assert_close(out_f, out_r)
    for a, b in zip(flat(state_f), flat(state_r), strict=True):
        assert_close(a, b)
    for a, b in zip(grads_f, grads_r, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_gradcheck_float64(ext, cell, nonlinearity, layout):
    m = make(cell, nonlinearity, 3, dtype=torch.float64, batch_first=layout == "batch_first")
    m.backend = "fused"
    shape = {"time_major": (3, 2, 3), "batch_first": (2, 3, 3), "unbatched": (3, 3)}[layout]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    state = make_state(cell, 2, 2, torch.float64, batched=layout != "unbatched")
    if nonlinearity == "relu":  # keep pre-activations away from relu's kink
        x.data.add_(2.0), [s.data.abs_() for s in flat(state)]

    def f(x, *leaves):  # leaves: the state and every parameter (perturbed in place by gradcheck)
        out, new_state = m(x, state)
        return (out, *flat(new_state))

    assert torch.autograd.gradcheck(f, (x, *flat(state), *m.parameters()), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_inference_path_and_threads(ext, cell, nonlinearity):
    """No-grad (no saved tensors, alternating buffers) and rows split over threads agree."""
    m = make(cell, nonlinearity, num_layers=2)
    x, state = torch.randn(6, 4, 6), make_state(cell, 2, 4)
    with torch.no_grad():
        m.backend = "reference"
        want = m(x, state)
        m.backend = "fused"
        got = m(x, state)
        ext.set_min_rows_per_thread(1)  # split even a batch of 4 over threads
        try:
            threaded = m(x, state)
        finally:
            ext.set_min_rows_per_thread(8)
    for a, b, c in zip(flat(want[1]) + [want[0]], flat(got[1]) + [got[0]],
                       flat(threaded[1]) + [threaded[0]], strict=True):  # fmt: skip
        assert_close(b, a)
        assert_close(c, a)


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_chunks_with_carried_state_equal_full_sequence(ext, cell, nonlinearity):
    m = make(cell, nonlinearity, backend="fused")
    x = torch.randn(10, 2, 6)
    full, full_state = m(x)
    state, outs = None, []
    for chunk in x.split([4, 3, 3]):
        out, state = m(chunk, state)
        outs.append(out)
    assert_close(torch.cat(outs), full)
    for a, b in zip(flat(state), flat(full_state), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_dropout_draws_like_reference(ext, cell, nonlinearity):
    m = make(cell, nonlinearity, num_layers=3, dropout=0.5).train()
    x = torch.randn(5, 3, 6, requires_grad=True)
    state = make_state(cell, 3, 3)
    torch.manual_seed(1)
    out_r, _, grads_r = run(m, "reference", x, state)
    torch.manual_seed(1)
    out_f, _, grads_f = run(m, "fused", x, state)
    assert_close(out_f, out_r)
    for a, b in zip(grads_f, grads_r, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_without_bias(ext, cell):
    m = make(cell, "tanh", bias=False)
    x, state = torch.randn(4, 2, 6, requires_grad=True), make_state(cell, 2, 2)
    out_r, _, grads_r = run(m, "reference", x, state)
    out_f, _, grads_f = run(m, "fused", x, state)
    assert_close(out_f, out_r)
    for a, b in zip(grads_f, grads_r, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_saturated_and_nan_inputs(ext, cell, nonlinearity):
    """The vectorised exp/tanh clamp huge arguments like libm does, and NaN is never hidden."""
    m = make(cell, nonlinearity, backend="fused")
    x = torch.randn(4, 2, 6) * 200
    with torch.no_grad():
        m.backend = "reference"
        want, _ = m(x)
        m.backend = "fused"
        got, _ = m(x)
        assert_close(got, want)
        x[1, 0, 0] = float("nan")
        assert got.isfinite().all() and m(x)[0][1:, 0].isnan().any()


@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_auto_equals_reference(cell, nonlinearity):
    m = make(cell, nonlinearity)
    x, state = torch.randn(5, 3, 6, requires_grad=True), make_state(cell, 2, 3)
    out_r, _, grads_r = run(m, "reference", x, state)
    out_a, _, grads_a = run(m, "auto", x, state)
    assert_close(out_a, out_r)
    for a, b in zip(grads_a, grads_r, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell,nonlinearity", CELLS, ids=IDS)
def test_cpp_step_walks_the_sequence(ext, cell, nonlinearity, batch_first):
    """Recurrent.step under no_grad (one C++ call for every layer) equals forward."""
    m = make(cell, nonlinearity, batch_first=batch_first, backend="reference")
    x = torch.randn(5, 3, 6)
    with torch.no_grad():
        want, want_state = m(x.transpose(0, 1) if batch_first else x)
    m.backend = "fused"
    state = None
    with torch.no_grad():
        for t in range(5):
            top, state = m.step(x[t], state)
            assert_close(top, want[:, t] if batch_first else want[t])
    for a, b in zip(flat(state), flat(want_state), strict=True):
        assert_close(a, b)
    assert not top.requires_grad
    with pytest.raises(ValueError, match="input"):
        m.step(x[0, :, :4], state)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mut1", "mut2", "mut3"])
def test_fused_off_the_cpu_engine_resolves_to_what_runs_there(cell):
    """On CUDA, ``fused`` means cuDNN for the standard cells and the reference loop (its input
    projection hoisted into one GEMM) for MUT1-3 and conditioned layers."""
    m = make(cell, "tanh", backend="fused")
    native = cell in ("rnn", "lstm", "gru")
    assert m.resolved_backend("cuda") == ("native" if native else "reference")
    assert m.resolved_backend("cuda", conditioned=True) == "reference"


def test_choose_and_describe_backend(ext):
    for cell in ("mut1", "mut2", "mut3"):
        assert kernels.choose_backend(cell, 512, torch.device("cpu")) == "fused"
        assert kernels.choose_backend(cell, 512, torch.device("cuda")) == "fused"
    assert kernels.choose_backend("lstm", 128, "cpu") == "native"  # oneDNN's LSTM is faster
    # ... unless the caller projects layer 0's input (CharLM's folded embedding)
    for hidden in (128, 512):
        assert kernels.choose_backend("lstm", hidden, "cpu", lookup_input=True) == "fused"
        assert kernels.choose_backend("lstm", hidden, "cuda", lookup_input=True) == "native"
    # torch's kernels take no conditioning vector; the C++ engine has no LSTM projections
    assert kernels.choose_backend("lstm", 128, "cpu", conditioned=True) == "fused"
    assert kernels.choose_backend("lstm", 128, "cpu", proj_size=4) == "native"
    for cell in ("rnn", "gru"):
        assert kernels.choose_backend(cell, 128, "cpu") == "fused"
    for cell in ("rnn", "lstm", "gru"):
        assert kernels.choose_backend(cell, 128, "cuda") == "native"
    line = kernels.describe_backend(Recurrent("mut2", 4, 8, num_layers=2))
    assert line.startswith("mut2 2x8: fused (rnnlab C++ engine, auto)")


def test_build_failure_warns_names_the_error_and_falls_back(monkeypatch):
    def broken(name, build_directory, flags):
        raise RuntimeError(
            "Error building extension 'rnnlab_fused': [1/2] c++ -c recurrence.cpp\n"
            "/src/rnnlab/kernels/recurrence.cpp:42:7: error: expected ';' before 'x'\n"
            "ninja: build stopped: subcommand failed."
        )

    monkeypatch.setattr(extension, "_compile", broken)
    monkeypatch.setattr(extension, "_status", None)
    monkeypatch.setattr(extension, "_module", None)
    monkeypatch.delenv("RNNLAB_NO_EXTENSION", raising=False)
    m = make("mut1", "tanh", backend="fused")
    x = torch.randn(4, 2, 6)
    with pytest.warns(RuntimeWarning, match=r"recurrence\.cpp:42:7: error: expected ';'"):
        out, _ = m(x)
    status = kernels.extension_status()
    assert not status.available and "recurrence.cpp:42:7" in status.reason
    m.backend = "reference"
    assert_close(out, m(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every call
        assert kernels.choose_backend("mut1", 8, "cpu") == "reference"
        assert kernels.choose_backend("lstm", 8, "cpu") == "native"
        assert "fused unavailable" in kernels.describe_backend(
            Recurrent("mut1", 4, 8, backend="fused")
        )
        with torch.no_grad():
            top, _ = m.step(x[0])
    assert_close(top, m(x[:1])[0][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cell", ["lstm", "gru", "mut1", "mut2", "mut3"])
def test_cuda_fused_equals_cpu_reference(cell):
    m = make(cell, "tanh")
    x, state = torch.randn(5, 3, 6, requires_grad=True), make_state(cell, 2, 3)
    out_r, _, grads_r = run(m, "reference", x, state)
    mc = m.cuda()
    xc = x.detach().cuda().requires_grad_()
    state_c = tuple(s.detach().cuda().requires_grad_() for s in flat(state))
    out_c, _, grads_c = run(mc, "fused", xc, state_c if cell == "lstm" else state_c[0])
    assert_close(out_c.cpu(), out_r, tol=1e-4)
    for a, b in zip(grads_c, grads_r, strict=True):
        assert_close(a.cpu(), b, tol=1e-4)
    assert kernels.choose_backend(cell, H, torch.device("cuda")) in ("native", "fused")
