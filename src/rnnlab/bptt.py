"""Backpropagation through time written out by hand in NumPy: the lecture's derivation, an oracle.

A character-level language model, one step per time step, as in Karpathy's min-char-rnn:

    targets[t]           ──►  loss_t = -log softmax(y_t)[targets[t]]
                                  ▲
    y_t = W_ho h_t + b_o      (B, V)
                                  ▲
    h_{t-1} (, c_{t-1}) ──► [ tanh RNN or LSTM ] ──► h_t (, c_t) ──► next step
                                  ▲
    x[t]                      (B, I): floats, or integer ids fed in as one-hot rows

    L = Σ_t Σ_b loss_t[b]     summed over time and batch, like min-char-rnn (divide by T*B for
                              the mean that torch's cross_entropy defaults to)

Parameters are NumPy arrays named and laid out as torch.nn's: ``weight_ih`` (G, I),
``weight_hh`` (G, H), ``bias_ih`` / ``bias_hh`` (G,) with G = H (RNN) or 4H (LSTM, gate blocks
i, f, g, o), and the output layer ``weight_ho`` (V, H), ``bias_o`` (V,). Everything runs in the
inputs' float dtype (use float64 for checks). Other keys in ``params`` are ignored.

``gradcheck`` compares these gradients with central differences and with torch autograd through
``rnnlab.cells``; for the GRU and MUT1-3, which have no NumPy version here, it checks torch autograd
against central differences. Shapes: T time, B batch, I input, H hidden, V vocabulary, G gates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rnnlab.cells import CELLS, cell_step

Arrays = dict[str, np.ndarray]
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ho", "bias_o")
TOLERANCE = 1e-6  # what `rnnlab gradcheck` demands of every row, in float64


# ---------------------------------------------------------------------------------------------
# Forward and backward passes.
# ---------------------------------------------------------------------------------------------


def rnn_forward(
    params: Mapping[str, np.ndarray], x: np.ndarray, targets: np.ndarray, h0: np.ndarray | None
) -> tuple[float, dict]:
    """Vanilla tanh RNN LM: h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh); returns (L, cache).

    x: (T, B, I) floats or (T, B) integer ids; targets: (T, B) ids < V; h0: (B, H) or None (zeros).
    """
    p, x, targets, (h0,) = _check_inputs("rnn", params, x, targets, h0=h0)
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    h = np.empty((T + 1, B, H), h0.dtype)  # h[0] = h0, h[t + 1] = h_t
    h[0] = h0
    for t in range(T):
        a = x[t] @ p["weight_ih"].T + p["bias_ih"] + h[t] @ p["weight_hh"].T + p["bias_hh"]
        h[t + 1] = np.tanh(a)  # (B, H)
    loss, probs = _output_forward(p, h[1:], targets)
    return loss, {"x": x, "targets": targets, "h": h, "probs": probs}


def rnn_backward(params: Mapping[str, np.ndarray], cache: dict) -> Arrays:
    """dL/d(every parameter) and dL/dh0 for the cache of ``rnn_forward``; same keys plus ``h0``."""
    p = _as_dtype(params, cache["h"].dtype)
    x, h = cache["x"], cache["h"]
    grads, dh_out = _output_backward(p, h[1:], cache["probs"], cache["targets"])
    dh_next = np.zeros_like(h[0])  # dL/dh_t through step t+1 (none after the last step)
    for t in reversed(range(x.shape[0])):
        # dL/dh_t = W_ho^T dy_t + dh_next: the output at t and the future, through W_hh
        dh = dh_out[t] + dh_next
        # h_t = tanh(a_t)  =>  dL/da_t = dL/dh_t ⊙ (1 - h_t²)
        da = dh * _tanh_grad(h[t + 1])  # (B, H)
        _accumulate_layer(grads, da, x[t], h[t])
        # a_t = ... + W_hh h_{t-1}  =>  dL/dh_{t-1} (the part through step t) = W_hh^T da_t
        dh_next = da @ p["weight_hh"]
    grads["h0"] = dh_next
    return grads


def lstm_forward(
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    targets: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
) -> tuple[float, dict]:
    """LSTM LM (Hochreiter & Schmidhuber 1997, forget gate: Gers et al. 2000); returns (L, cache).

    (i, f, g, o) = (σ, σ, tanh, σ)(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh),
    c_t = f ⊙ c_{t-1} + i ⊙ g,  h_t = o ⊙ tanh(c_t).  Arguments as ``rnn_forward``; c0: (B, H).
    """
    p, x, targets, (h0, c0) = _check_inputs("lstm", params, x, targets, h0=h0, c0=c0)
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    h, c = np.empty((T + 1, B, H), h0.dtype), np.empty((T + 1, B, H), h0.dtype)
    h[0], c[0] = h0, c0
    gates = np.empty((T, 4, B, H), h0.dtype)  # i, f, g, o at every step
    for t in range(T):
        a = x[t] @ p["weight_ih"].T + p["bias_ih"] + h[t] @ p["weight_hh"].T + p["bias_hh"]
        ai, af, ag, ao = np.split(a, 4, axis=1)  # each (B, H)
        i, f, g, o = _sigmoid(ai), _sigmoid(af), np.tanh(ag), _sigmoid(ao)
        gates[t] = i, f, g, o
        c[t + 1] = f * c[t] + i * g
        h[t + 1] = o * np.tanh(c[t + 1])
    loss, probs = _output_forward(p, h[1:], targets)
    return loss, {"x": x, "targets": targets, "h": h, "c": c, "gates": gates, "probs": probs}


def lstm_backward(params: Mapping[str, np.ndarray], cache: dict) -> Arrays:
    """dL/d(every parameter), dL/dh0 and dL/dc0 for the cache of ``lstm_forward``."""
    p = _as_dtype(params, cache["h"].dtype)
    x, h, c = cache["x"], cache["h"], cache["c"]
    grads, dh_out = _output_backward(p, h[1:], cache["probs"], cache["targets"])
    dh_next, dc_next = np.zeros_like(h[0]), np.zeros_like(c[0])  # from step t+1
    for t in reversed(range(x.shape[0])):
        i, f, g, o = cache["gates"][t]
        tanh_c = np.tanh(c[t + 1])
        # dL/dh_t = W_ho^T dy_t + dh_next
        dh = dh_out[t] + dh_next
        # h_t = o ⊙ tanh(c_t)  =>  dL/do = dh ⊙ tanh(c_t),
        # dL/dc_t = dh ⊙ o ⊙ (1 - tanh²(c_t)) + dc_next   (c_t also feeds c_{t+1} = f_{t+1} ⊙ c_t)
        do = dh * tanh_c
        dc = dh * o * _tanh_grad(tanh_c) + dc_next
        # c_t = f ⊙ c_{t-1} + i ⊙ g  =>  di = dc ⊙ g, df = dc ⊙ c_{t-1}, dg = dc ⊙ i
        di, df, dg = dc * g, dc * c[t], dc * i
        # back through the gate nonlinearities, σ' = σ(1 - σ), tanh' = 1 - tanh², stacked i,f,g,o
        da = np.concatenate(
            [
                di * _sigmoid_grad(i),
                df * _sigmoid_grad(f),
                dg * _tanh_grad(g),
                do * _sigmoid_grad(o),
            ],
            axis=1,
        )  # (B, 4H)
        _accumulate_layer(grads, da, x[t], h[t])
        # dL/dh_{t-1} through step t = W_hh^T da_t; dL/dc_{t-1} through step t = dc ⊙ f
        dh_next, dc_next = da @ p["weight_hh"], dc * f
    grads["h0"], grads["c0"] = dh_next, dc_next
    return grads


def _output_forward(p: Arrays, h: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """y_t = W_ho h_t + b_o for all t at once; L = Σ -log softmax(y)[target]. h: (T, B, H)."""
    y = h @ p["weight_ho"].T + p["bias_o"]  # (T, B, V)
    y = y - y.max(axis=-1, keepdims=True)  # softmax is shift-invariant; keeps exp() finite
    log_probs = y - np.log(np.exp(y).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], axis=-1)  # (T, B, 1)
    return float(-picked.sum()), np.exp(log_probs)


def _output_backward(
    p: Arrays, h: np.ndarray, probs: np.ndarray, targets: np.ndarray
) -> tuple[Arrays, np.ndarray]:
    """Gradients of the output layer, zeroed recurrent ones, and W_ho^T dy_t (T, B, H)."""
    # softmax + cross-entropy  =>  dL/dy_t = p_t - onehot(target_t)
    dy = probs.copy()  # (T, B, V)
    np.put_along_axis(
        dy, targets[..., None], np.take_along_axis(dy, targets[..., None], -1) - 1, -1
    )
    grads = {k: np.zeros_like(p[k]) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    grads["weight_ho"] = np.einsum("tbv,tbh->vh", dy, h)  # Σ_t dy_t h_t^T
    grads["bias_o"] = dy.sum(axis=(0, 1))
    return grads, dy @ p["weight_ho"]


def _accumulate_layer(grads: Arrays, da: np.ndarray, x: np.ndarray, h_prev: np.ndarray) -> None:
    """a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, so dW_ih += da x_t^T, dW_hh += da h_{t-1}^T
    and both biases += da (summed over the batch)."""
    grads["weight_ih"] += da.T @ x
    grads["weight_hh"] += da.T @ h_prev
    grads["bias_ih"] += da.sum(axis=0)
    grads["bias_hh"] += da.sum(axis=0)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # = 1 / (1 + e^-a), without overflow for large -a


def _sigmoid_grad(s: np.ndarray) -> np.ndarray:
    """σ'(a) written with s = σ(a)."""
    return s * (1 - s)


def _tanh_grad(y: np.ndarray) -> np.ndarray:
    """tanh'(a) written with y = tanh(a)."""
    return 1 - y * y


def _check_inputs(
    cell: str, params: Mapping[str, np.ndarray], x: np.ndarray, targets: np.ndarray, **states
) -> tuple[Arrays, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Validate shapes; return params and states in one float dtype, x as (T, B, I) floats."""
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"params: missing {', '.join(map(repr, missing))}")
    x, targets = np.asarray(x), np.asarray(targets)
    floats = [np.asarray(params[k]) for k in PARAM_NAMES]
    floats += [np.asarray(s) for s in states.values() if s is not None]
    floats += [x] if x.dtype.kind == "f" else []
    if any(a.dtype.kind != "f" for a in floats):
        raise ValueError("params, h0, c0: expected floating-point arrays")
    dtype = np.result_type(*floats)
    p = _as_dtype(params, dtype)
    G = (4 if cell == "lstm" else 1) * p["weight_hh"].shape[-1]
    I, H, V = p["weight_ih"].shape[-1], p["weight_hh"].shape[-1], p["weight_ho"].shape[0]
    expected = {
        "weight_ih": (G, I),
        "weight_hh": (G, H),
        "bias_ih": (G,),
        "bias_hh": (G,),
        "weight_ho": (V, H),
        "bias_o": (V,),
    }
    for name, shape in expected.items():
        if p[name].shape != shape:
            raise ValueError(f"{name}: expected shape {shape} for a {cell}, got {p[name].shape}")
    if targets.ndim != 2 or targets.dtype.kind not in "iu":
        raise ValueError(f"targets: expected (T, B) integers, got {targets.dtype} {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= V):
        raise ValueError(f"targets: expected ids in [0, {V}), got {targets.min()}..{targets.max()}")
    T, B = targets.shape
    if x.dtype.kind in "iu":
        if x.shape != (T, B) or (x.size and (x.min() < 0 or x.max() >= I)):
            raise ValueError(f"x: expected (T, B) = {(T, B)} ids in [0, {I}), got {x.shape}")
        x = np.eye(I, dtype=dtype)[x]  # one-hot rows, (T, B, I)
    elif x.shape != (T, B, I):
        raise ValueError(f"x: expected shape (T, B, I) = {(T, B, I)}, got {x.shape}")
    out = []
    for name, s in states.items():
        s = np.zeros((B, H), dtype) if s is None else np.asarray(s, dtype)
        if s.shape != (B, H):
            raise ValueError(f"{name}: expected shape (B, H) = {(B, H)}, got {s.shape}")
        out.append(s)
    return p, x.astype(dtype, copy=False), targets, out


def _as_dtype(params: Mapping[str, np.ndarray], dtype: np.dtype) -> Arrays:
    return {k: np.asarray(params[k], dtype) for k in PARAM_NAMES}


# ---------------------------------------------------------------------------------------------
# Gradient clipping.
# ---------------------------------------------------------------------------------------------


def clip_gradients(
    grads: Mapping[str, np.ndarray], max_norm: float | None = None, max_value: float | None = None
) -> tuple[Arrays, float]:
    """Clip copies of ``grads``; returns (clipped, total L2 norm before clipping).

    ``max_norm``: rescale all arrays together so their global L2 norm is at most max_norm, with
    torch.nn.utils.clip_grad_norm_'s formula (scale = min(1, max_norm / (norm + 1e-6))).
    ``max_value``: clamp each element to [-max_value, max_value], like char-rnn and min-char-rnn's
    np.clip. Both: rescale first, then clamp. Every array passed is clipped, so leave h0/c0 out
    unless they are trained.
    """
    for arg, value in (("max_norm", max_norm), ("max_value", max_value)):
        if value is not None and not value > 0:
            raise ValueError(f"{arg}: expected a positive number or None, got {value!r}")
    total_norm = float(np.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values())))
    scale = 1.0 if max_norm is None else min(1.0, max_norm / (total_norm + 1e-6))
    clipped = {k: np.asarray(g) * scale for k, g in grads.items()}
    if max_value is not None:
        clipped = {k: np.clip(g, -max_value, max_value) for k, g in clipped.items()}
    return clipped, total_norm


# ---------------------------------------------------------------------------------------------
# Gradient checks: NumPy BPTT vs central differences vs torch autograd through rnnlab.cells.
# ---------------------------------------------------------------------------------------------

STEPS = {name: functools.partial(cell_step, name) for name in CELLS}  # every cell's equations


def finite_difference_grads(
    f: Callable[[Arrays], float], params: Mapping[str, np.ndarray], eps: float = 1e-6
) -> Arrays:
    """Central differences df/dp ≈ (f(p + eps) - f(p - eps)) / 2 eps, one element at a time.

    ``f`` gets a dict of copies of ``params``, one element nudged; its error is O(eps²) plus
    rounding of about ε_machine |f| / eps, so keep to float64.
    """
    work = {k: np.array(v, order="C") for k, v in params.items()}  # copies; reshape(-1) is a view
    grads = {}
    for name, value in work.items():
        flat, grad = value.reshape(-1), np.zeros(value.size, value.dtype)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            f_plus = f(work)
            flat[k] = old - eps
            f_minus = f(work)
            flat[k] = old
            grad[k] = (f_plus - f_minus) / (2 * eps)
        grads[name] = grad.reshape(value.shape)
    return grads


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max(max|a|, max|b|, 1e-8): the worst element, relative to the array's scale.

    Not element-wise |a - b| / (|a| + |b|): an element near zero in both (a gradient that happens
    to be 1e-9) would score finite differences' rounding noise as a large error.
    """
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.max(np.abs(a), initial=0)), float(np.max(np.abs(b), initial=0)), 1e-8)
    return float(np.max(np.abs(a - b), initial=0)) / scale


def init_params(
    cell: str, input_size: int, hidden_size: int, vocab_size: int, rng: np.random.Generator
) -> Arrays:
    """Random float64 parameters of a one-layer ``cell`` LM, U(-1/sqrt(H), 1/sqrt(H)) like torch.

    The recurrent layer's names and shapes come from ``rnnlab.cells.CELLS[cell]``.
    """
    shapes = CELLS[cell].parameter_shapes(input_size, hidden_size)
    shapes |= {"weight_ho": (vocab_size, hidden_size), "bias_o": (vocab_size,)}
    bound = 1 / np.sqrt(hidden_size)
    return {k: rng.uniform(-bound, bound, shape) for k, shape in shapes.items()}


def torch_loss(
    cell: str, params: Mapping[str, torch.Tensor], x: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The same summed loss through ``rnnlab.cells.<cell>_step``, for any of the six cells.

    params: the cell's parameters, ``weight_ho``, ``bias_o``, ``h0`` (B, H) and, for the LSTM,
    ``c0``; x: (T, B, I) floats; targets: (T, B) int64.
    """
    state = (params["h0"], params["c0"]) if CELLS[cell].has_cell_state else params["h0"]
    loss = x.new_zeros(())
    for t in range(x.shape[0]):
        state, gates = STEPS[cell](x[t], state, params)
        y = F.linear(gates["h"], params["weight_ho"], params["bias_o"])  # (B, V)
        loss = loss + F.cross_entropy(y, targets[t], reduction="sum")
    return loss


def gradcheck(
    seed: int = 0,
    *,
    seq_len: int = 5,
    batch_size: int = 2,
    input_size: int = 4,
    hidden_size: int = 4,
    vocab_size: int = 5,
    eps: float = 1e-5,
) -> list[dict]:
    """Rows {"cell", "check", "max_rel_error", "parameter"}: the worst ``relative_error`` over
    all gradients (parameters, h0, c0) and where it occurred, in float64, nonzero initial state.

    rnn, lstm: "bptt vs finite differences" and "bptt vs autograd"; every cell in
    ``rnnlab.cells.CELLS`` but those: "autograd vs finite differences". The default ``eps``,
    about the cube root of float64's machine epsilon, balances truncation (eps²) against rounding
    (1/eps): ~1e-9 worst errors here against ~1e-8 with 1e-6. ``input_size != hidden_size``
    brings in MUT1/MUT2's ``weight_proj``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops on 2x4 tensors: a thread pool only adds waits on a busy machine
    try:
        return _gradcheck(seed, seq_len, batch_size, input_size, hidden_size, vocab_size, eps)
    finally:
        torch.set_num_threads(threads)


def _gradcheck(
    seed: int, T: int, B: int, input_size: int, H: int, vocab_size: int, eps: float
) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B, input_size))
    targets = rng.integers(0, vocab_size, size=(T, B))
    x_t, targets_t = torch.from_numpy(x), torch.from_numpy(targets)
    rows = []
    for cell in CELLS:
        arrays = init_params(cell, input_size, H, vocab_size, rng)
        arrays["h0"] = rng.uniform(-0.5, 0.5, (B, H))
        if CELLS[cell].has_cell_state:
            arrays["c0"] = rng.uniform(-0.5, 0.5, (B, H))

        def autograd(a: Arrays, cell: str = cell) -> Arrays:
            tensors = {k: torch.tensor(v, requires_grad=True) for k, v in a.items()}
            torch_loss(cell, tensors, x_t, targets_t).backward()
            return {k: _numpy_grad(t) for k, t in tensors.items()}

        checks = {}
        if cell in ("rnn", "lstm"):
            numpy_grads = _numpy_grads(cell, arrays, x, targets)
            checks["bptt vs finite differences"] = (
                numpy_grads,
                finite_difference_grads(
                    lambda a, c=cell: _numpy_loss(c, a, x, targets), arrays, eps
                ),
            )
            checks["bptt vs autograd"] = (numpy_grads, autograd(arrays))
        else:
            with torch.no_grad():
                fd = finite_difference_grads(
                    lambda a, c=cell: torch_loss(c, _tensors(a), x_t, targets_t).item(), arrays, eps
                )
            checks["autograd vs finite differences"] = (autograd(arrays), fd)
        for check, (a, b) in checks.items():
            errors = {k: relative_error(a[k], b[k]) for k in arrays}
            worst = max(errors, key=errors.__getitem__)
            rows.append(
                {"cell": cell, "check": check, "max_rel_error": errors[worst], "parameter": worst}
            )
    return rows


def gradcheck_report(seed: int = 0) -> str:
    """``gradcheck(seed)`` as a printable table, with a verdict against ``TOLERANCE``."""
    rows = gradcheck(seed)
    w = max(len(r["cell"]) for r in rows) + 2  # the cell column
    p = max(len(r["parameter"]) for r in rows) + 2  # the worst-array column
    lines = [
        f"Gradient check, float64, T=5 B=2 I=4 H=4 V=5, nonzero h0/c0, seed {seed}",
        "error = max|a-b| / max(max|a|, max|b|) per array, the worst array named",
        f"{'cell':<{w}}{'check':<32}{'max rel error':>14}  worst in",
    ]
    for r in rows:
        verdict = "ok" if r["max_rel_error"] < TOLERANCE else "FAIL"
        lines.append(
            f"{r['cell']:<{w}}{r['check']:<32}{r['max_rel_error']:>14.2e}  "
            f"{r['parameter']:<{p}}{verdict}"
        )
    passed = all(r["max_rel_error"] < TOLERANCE for r in rows)
    lines.append(f"{'all' if passed else 'NOT all'} errors < {TOLERANCE:g}")
    return "\n".join(lines)


def _numpy_loss(cell: str, a: Arrays, x: np.ndarray, targets: np.ndarray) -> float:
    if cell == "lstm":
        return lstm_forward(a, x, targets, a["h0"], a["c0"])[0]
    return rnn_forward(a, x, targets, a["h0"])[0]


def _numpy_grads(cell: str, a: Arrays, x: np.ndarray, targets: np.ndarray) -> Arrays:
    if cell == "lstm":
        return lstm_backward(a, lstm_forward(a, x, targets, a["h0"], a["c0"])[1])
    return rnn_backward(a, rnn_forward(a, x, targets, a["h0"])[1])


def _numpy_grad(t: torch.Tensor) -> np.ndarray:
    """t.grad, or zeros where the loss does not depend on t (autograd leaves None)."""
    return np.zeros(tuple(t.shape)) if t.grad is None else t.grad.numpy()


def _tensors(a: Arrays) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in a.items()}
