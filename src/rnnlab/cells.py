"""The recurrent cells: parameters in torch.nn naming and the equations, written once.

Shape letters used throughout rnnlab: B batch, T time, I input size, H hidden size, L layers,
G gate width (k*H), C conditioning size, V vocabulary.

Every cell is two pure functions of its parameters ``p`` (a mapping named as in the classes):

- ``input_projection(cell, x, p)`` -> ``u`` (..., Gx [+ H]): everything that depends on the input
  alone, ``x W_ih^T``, with MUT1/MUT2's hidden-sized input ``px`` (x itself, or ``W_proj x``)
  appended. It has no recurrence, so a sequence projects all T steps in one GEMM (Appleyard et al.
  2016; torch-rnn's LSTM.lua does the same), and a lookup-table input projects the table once.
- ``recurrent_step(cell, u_t, state, p)`` -> ``(new_state, gates)``: one step from the projected
  input; the biases and every h-dependent term live here. ``gates`` names every intermediate
  activation, so analysis traces them without a second copy of the equations.

The minimal cells (minGRU, minLSTM; Feng et al. 2024) have no h in their gates: their step is
``h' = a ⊙ h + b`` with ``(a, b)`` functions of u alone (``min_coefficients``), so a whole sequence
is also a linear recurrence that ``rnnlab.scan`` solves in parallel over time from
``min_log_coefficients``, the same equations in log space.

``cell_step`` composes the two (one step from raw x). The cell modules below, ``Recurrent`` (all
backends' Python paths), the C++ engine's tests and the BPTT oracle's tests use exactly these.
State is a tensor ``h`` (B, H), or for the LSTM a tuple ``(h, c)``.
"""

from __future__ import annotations

import functools
import math
import typing
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# Every cell's name, once: the configs of every task (``cell: CellName``), the CLI's choices and
# ``Recurrent`` read it from here, so a cell added below appears in every command.
CellName = Literal[
    "rnn",
    "lstm",
    "gru",
    "mut1",
    "mut2",
    "mut3",
    "mingru",
    "minlstm",
    "indrnn",
    "layernorm_lstm",
    "layernorm_gru",
]
CELL_NAMES: tuple[str, ...] = typing.get_args(CellName)
CELL_HELP = (
    "recurrent cell: rnn (Elman 1990), lstm (Hochreiter & Schmidhuber 1997), gru (Cho et al. "
    "2014), mut1|mut2|mut3 (Jozefowicz et al. 2015), mingru|minlstm (Feng et al. 2024, 'Were "
    "RNNs All We Needed?': gates of x alone, so a parallel scan can run a sequence), indrnn (Li "
    "et al. 2018), layernorm_lstm|layernorm_gru (Ba et al. 2016, layer normalisation)"
)
State = Tensor | tuple[Tensor, Tensor]
Gates = dict[str, Tensor]
Params = Mapping[str, Tensor]
Zoneout = tuple[Tensor, ...]  # keep masks per state part (h[, c]), each (T, B, H)
NONLINEARITIES = ("tanh", "relu")
NATIVE_CELLS = ("rnn", "lstm", "gru")  # the cells torch.nn implements itself (oneDNN / cuDNN)
SCAN_CELLS = ("mingru", "minlstm")  # gates of x alone: a parallel scan runs the sequence
NONLINEAR_CELLS = ("rnn", "indrnn")  # the cells that take a ``nonlinearity``
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


class ShapeError(ValueError, RuntimeError):
    """A wrong input or state shape. Both a ValueError (rnnlab's convention for bad arguments) and
    a RuntimeError (what torch.nn's recurrent modules raise), so either ``except`` catches it."""


# ---------------------------------------------------------------------------------------------
# The equations. u: (B, Gx [+ H]) from input_projection; h/c: (B, H); p: the cell's parameters.
# ---------------------------------------------------------------------------------------------


def uses_px(cell: str) -> bool:
    """Whether the cell feeds a hidden-sized copy of x into a sum (MUT1's tanh(x), MUT2's r)."""
    return cell in ("mut1", "mut2")


def input_projection(cell: str, x: Tensor, p: Params, extra: Tensor | None = None) -> Tensor:
    """``[x W_ih^T + extra | px]`` (..., Gx [+ H]) for x (..., I); no biases (the step adds them).

    ``extra`` (..., Gx), broadcast over leading dimensions, is added to the ``W_ih x`` block: the
    conditioning term ``W_ch v`` of ``Recurrent``. ``px`` (MUT1/MUT2 only) is x itself when
    I == H, else ``W_proj x``; it is never conditioned (the cells' raw-x terms stay as published).
    """
    xw = F.linear(x, p["weight_ih"])
    if extra is not None:
        xw = xw + extra
    if not uses_px(cell):
        return xw
    w_proj = p.get("weight_proj")
    px = x if w_proj is None else F.linear(x, w_proj)
    return torch.cat([xw, px.expand(*xw.shape[:-1], px.shape[-1])], -1)


def _rnn(u: Tensor, h: Tensor, p: Params, nonlinearity: str) -> tuple[Tensor, Gates]:
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh)."""
    a = _biased(u, p.get("bias_ih")) + F.linear(h, p["weight_hh"], p.get("bias_hh"))
    h_new = torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)
    return h_new, {"h": h_new}


def _lstm(u: Tensor, state: tuple[Tensor, Tensor], p: Params) -> tuple[State, Gates]:
    """LSTM, gates stacked (i, f, g, o) as in torch.nn.LSTM; with ``weight_hr`` (P, H) the output
    is projected, h' = W_hr (o * tanh(c')) (Sak et al. 2014; torch's ``proj_size``)."""
    h, c = state
    a = _biased(u, p.get("bias_ih")) + F.linear(h, p["weight_hh"], p.get("bias_hh"))
    ai, af, ag, ao = a.chunk(4, dim=-1)  # each (B, H)
    i, f, g, o = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag), torch.sigmoid(ao)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if "weight_hr" in p:
        h_new = F.linear(h_new, p["weight_hr"])
    return (h_new, c_new), {"i": i, "f": f, "g": g, "o": o, "c": c_new, "h": h_new}


def _gru(u: Tensor, h: Tensor, p: Params) -> tuple[Tensor, Gates]:
    """GRU in torch's convention (reset applied after the recurrent matmul), gates (r, z, n)."""
    i_r, i_z, i_n = _biased(u, p.get("bias_ih")).chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, p["weight_hh"], p.get("bias_hh")).chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    h_new = (1 - z) * n + z * h
    return h_new, {"r": r, "z": z, "n": n, "h": h_new}


def _mut1(u: Tensor, h: Tensor, p: Params) -> tuple[Tensor, Gates]:
    """MUT1: z = σ(W_xz x + b_z); r = σ(W_xr x + W_hr h + b_r);
    h' = tanh(W_hh(r⊙h) + tanh(x) + b_h)⊙z + h⊙(1−z).  u = [W_xz x, W_xr x, px]."""
    b_z, b_r, b_h = p["bias"].chunk(3)
    x_z, x_r, px = u.chunk(3, dim=-1)
    w_hr, w_hh = p["weight_hh"].chunk(2, dim=0)
    z = torch.sigmoid(x_z + b_z)
    r = torch.sigmoid(x_r + F.linear(h, w_hr, b_r))
    n = torch.tanh(F.linear(r * h, w_hh, b_h) + torch.tanh(px))
    h_new = n * z + h * (1 - z)
    return h_new, {"z": z, "r": r, "n": n, "h": h_new}


def _mut2(u: Tensor, h: Tensor, p: Params) -> tuple[Tensor, Gates]:
    """MUT2: z = σ(W_xz x + W_hz h + b_z); r = σ(x + W_hr h + b_r);
    h' = tanh(W_hh(r⊙h) + W_xh x + b_h)⊙z + h⊙(1−z).  u = [W_xz x, W_xh x, px]."""
    b_z, b_r, b_h = p["bias"].chunk(3)
    x_z, x_h, px = u.chunk(3, dim=-1)
    w_hz, w_hr, w_hh = p["weight_hh"].chunk(3, dim=0)
    z = torch.sigmoid(x_z + F.linear(h, w_hz, b_z))
    r = torch.sigmoid(px + F.linear(h, w_hr, b_r))
    n = torch.tanh(F.linear(r * h, w_hh, b_h) + x_h)
    h_new = n * z + h * (1 - z)
    return h_new, {"z": z, "r": r, "n": n, "h": h_new}


def _mut3(u: Tensor, h: Tensor, p: Params) -> tuple[Tensor, Gates]:
    """MUT3: z = σ(W_xz x + W_hz tanh(h) + b_z); r = σ(W_xr x + W_hr h + b_r);
    h' = tanh(W_hh(r⊙h) + W_xh x + b_h)⊙z + h⊙(1−z).  u = [W_xz x, W_xr x, W_xh x]."""
    b_z, b_r, b_h = p["bias"].chunk(3)
    x_z, x_r, x_h = u.chunk(3, dim=-1)
    w_hz, w_hr, w_hh = p["weight_hh"].chunk(3, dim=0)
    z = torch.sigmoid(x_z + F.linear(torch.tanh(h), w_hz, b_z))
    r = torch.sigmoid(x_r + F.linear(h, w_hr, b_r))
    n = torch.tanh(F.linear(r * h, w_hh, b_h) + x_h)
    h_new = n * z + h * (1 - z)
    return h_new, {"z": z, "r": r, "n": n, "h": h_new}


def candidate(a: Tensor) -> Tensor:
    """The minimal cells' candidate activation g(a) = a + 0.5 for a >= 0, σ(a) otherwise
    (Feng et al. 2024, appendix B): continuous, positive (so its log exists) and unbounded above."""
    return torch.where(a >= 0, a + 0.5, torch.sigmoid(a))


def log_candidate(a: Tensor) -> Tensor:
    """log g(a), stably: log(a + 0.5) for a >= 0, -softplus(-a) = log σ(a) otherwise. Both
    branches are finite everywhere (relu keeps the log's argument >= 0.5), so gradients are too."""
    return torch.where(a >= 0, torch.log(torch.relu(a) + 0.5), -F.softplus(-a))


def min_coefficients(cell: str, u: Tensor, p: Params) -> tuple[Tensor, Tensor, Gates]:
    """``(a, b, gates)`` of the minimal cells' step ``h' = a ⊙ h + b``, from u (..., G) of any
    leading shape (one step (B, G) or a whole sequence (T, B, G)); each (..., H).

    minGRU (u = [W_z x, W_h x]): z = σ(W_z x + b_z), ñ = g(W_h x + b_h); a = 1 - z, b = z ⊙ ñ.
    minLSTM (u = [W_f x, W_i x, W_h x]): f = σ(..), i = σ(..), g̃ = g(W_h x + b_h);
    f' = f / (f + i), i' = i / (f + i); a = f', b = i' ⊙ g̃. ``gates`` names z, n (minGRU) or the
    normalised f, i and the candidate g (minLSTM).
    """
    if cell == "mingru":
        a_z, a_n = _biased(u, p.get("bias_ih")).chunk(2, dim=-1)
        z, n = torch.sigmoid(a_z), candidate(a_n)
        return torch.sigmoid(-a_z), z * n, {"z": z, "n": n}  # 1 - z as σ(-a): no cancellation
    a_f, a_i, a_g = _biased(u, p.get("bias_ih")).chunk(3, dim=-1)
    f, i, g = torch.sigmoid(a_f), torch.sigmoid(a_i), candidate(a_g)
    f, i = f / (f + i), i / (f + i)
    return f, i * g, {"f": f, "i": i, "g": g}


def min_log_coefficients(cell: str, u: Tensor, p: Params) -> tuple[Tensor, Tensor]:
    """``(log a, log b)`` of ``min_coefficients``, computed in log space without forming a or b
    (Feng et al. 2024, appendix B), so a scan multiplying T coefficients stays finite in float32.

    minGRU: log(1 - z) = -softplus(a_z), log z = -softplus(-a_z). minLSTM: with
    d = log i - log f = softplus(-a_f) - softplus(-a_i), log f' = -softplus(d) and
    log i' = -softplus(-d). Both add log g of the candidate to log b.
    """
    if cell == "mingru":
        a_z, a_n = _biased(u, p.get("bias_ih")).chunk(2, dim=-1)
        return -F.softplus(a_z), -F.softplus(-a_z) + log_candidate(a_n)
    a_f, a_i, a_g = _biased(u, p.get("bias_ih")).chunk(3, dim=-1)
    d = F.softplus(-a_f) - F.softplus(-a_i)
    return -F.softplus(d), -F.softplus(-d) + log_candidate(a_g)


def _min_step(cell: str, u: Tensor, h: Tensor, p: Params) -> tuple[Tensor, Gates]:
    """minGRU / minLSTM, one step: h' = a ⊙ h + b (see ``min_coefficients``)."""
    a, b, gates = min_coefficients(cell, u, p)
    h_new = a * h + b
    return h_new, {**gates, "h": h_new}


def _indrnn(u: Tensor, h: Tensor, p: Params, nonlinearity: str) -> tuple[Tensor, Gates]:
    """IndRNN (Li et al. 2018): h' = act(W_ih x + w_hh ⊙ h + b), w_hh a vector (H,): each unit
    sees only its own past, so the recurrence is element-wise."""
    a = _biased(u, p.get("bias")) + p["weight_hh"] * h
    h_new = torch.relu(a) if nonlinearity == "relu" else torch.tanh(a)
    return h_new, {"h": h_new}


def _layer_norm(a: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Layer normalisation over the last dimension (Ba et al. 2016), eps = LAYER_NORM_EPS."""
    return F.layer_norm(a, a.shape[-1:], weight, bias, LAYER_NORM_EPS)


def _layernorm_lstm(u: Tensor, state: tuple[Tensor, Tensor], p: Params) -> tuple[State, Gates]:
    """LayerNorm LSTM (Ba et al. 2016, haste's form): the input and recurrent pre-activations are
    normalised separately (gains only; one shared bias), and c' before the output tanh."""
    h, c = state
    a = _layer_norm(u, p["ln_ih_weight"]) + _layer_norm(F.linear(h, p["weight_hh"]),
                                                         p["ln_hh_weight"])  # fmt: skip
    ai, af, ag, ao = _biased(a, p.get("bias")).chunk(4, dim=-1)  # each (B, H)
    i, f, g, o = torch.sigmoid(ai), torch.sigmoid(af), torch.tanh(ag), torch.sigmoid(ao)
    c_new = f * c + i * g
    h_new = o * torch.tanh(_layer_norm(c_new, p["ln_c_weight"], p.get("ln_c_bias")))
    return (h_new, c_new), {"i": i, "f": f, "g": g, "o": o, "c": c_new, "h": h_new}


def _layernorm_gru(u: Tensor, h: Tensor, p: Params) -> tuple[Tensor, Gates]:
    """LayerNorm GRU (Ba et al. 2016, haste's form): W_ih x and W_hh h normalised separately,
    then torch's GRU (reset applied after the recurrent matmul), gates (r, z, n)."""
    i_r, i_z, i_n = _biased(_layer_norm(u, p["ln_ih_weight"]), p.get("bias_ih")).chunk(3, -1)
    a_h = _layer_norm(F.linear(h, p["weight_hh"]), p["ln_hh_weight"])
    h_r, h_z, h_n = _biased(a_h, p.get("bias_hh")).chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    h_new = (1 - z) * n + z * h
    return h_new, {"r": r, "z": z, "n": n, "h": h_new}


def recurrent_step(
    cell: str, u: Tensor, state: State, p: Params, nonlinearity: str = "tanh"
) -> tuple[State, Gates]:
    """One step from the projected input u (B, Gx [+ H]): ``(new_state, gates)``."""
    if cell == "rnn":
        return _rnn(u, state, p, nonlinearity)  # type: ignore[arg-type]
    if cell == "indrnn":
        return _indrnn(u, state, p, nonlinearity)  # type: ignore[arg-type]
    return _RECURRENCES[cell](u, state, p)


def cell_step(
    cell: str, x: Tensor, state: State, p: Params, nonlinearity: str = "tanh"
) -> tuple[State, Gates]:
    """One step from x (B, I): ``recurrent_step(input_projection(x))``."""
    return recurrent_step(cell, input_projection(cell, x, p), state, p, nonlinearity)


def _biased(u: Tensor, bias: Tensor | None) -> Tensor:
    return u if bias is None else u + bias


_RECURRENCES = {"lstm": _lstm, "gru": _gru, "mut1": _mut1, "mut2": _mut2, "mut3": _mut3,
                "layernorm_lstm": _layernorm_lstm, "layernorm_gru": _layernorm_gru,
                **{c: functools.partial(_min_step, c) for c in SCAN_CELLS}}  # fmt: skip

# The per-cell names the lecture and the BPTT oracle use: (x, state, p) -> (new_state, gates).
rnn_step = functools.partial(cell_step, "rnn")
lstm_step = functools.partial(cell_step, "lstm")
gru_step = functools.partial(cell_step, "gru")
mut1_step = functools.partial(cell_step, "mut1")
mut2_step = functools.partial(cell_step, "mut2")
mut3_step = functools.partial(cell_step, "mut3")
mingru_step = functools.partial(cell_step, "mingru")
minlstm_step = functools.partial(cell_step, "minlstm")
indrnn_step = functools.partial(cell_step, "indrnn", nonlinearity="relu")
layernorm_lstm_step = functools.partial(cell_step, "layernorm_lstm")
layernorm_gru_step = functools.partial(cell_step, "layernorm_gru")


# ---------------------------------------------------------------------------------------------
# Modules.
# ---------------------------------------------------------------------------------------------


class Cell(nn.Module):
    """Base class: one step of a recurrence, ``forward(x, state=None) -> state``.

    Subclasses declare ``gates_ih`` / ``gates_hh`` (the number of H-row blocks in ``weight_ih`` /
    ``weight_hh``), whether biases are split torch-style (``bias_ih`` + ``bias_hh``) or single
    (``bias``, one per equation), and the step function.
    """

    name: str = ""
    gates_ih: int = 1
    gates_hh: int = 1
    torch_biases: bool = True  # bias_ih + bias_hh (torch.nn); otherwise one `bias` of 3H
    has_cell_state: bool = False
    own_init: bool = False  # Recurrent calls this class's init_parameters (else torch.nn's)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        _check_positive("input_size", input_size)
        _check_positive("hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.has_bias = bias
        for name, shape in self.parameter_shapes(input_size, hidden_size, bias).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, in torch.nn's registration order."""
        H = hidden_size
        shapes: dict[str, tuple[int, ...]] = {
            "weight_ih": (cls.gates_ih * H, input_size),
            "weight_hh": (cls.gates_hh * H, H),
        }
        if cls.torch_biases and bias:
            shapes["bias_ih"] = (cls.gates_ih * H,)
            shapes["bias_hh"] = (cls.gates_hh * H,)
        elif bias:
            shapes["bias"] = (3 * H,)
        return shapes

    @classmethod
    def init_parameters(cls, params: Params, hidden_size: int, **options: float) -> None:
        """torch.nn's init, U(-1/sqrt(H), 1/sqrt(H)) for every parameter, in place."""
        bound = 1.0 / math.sqrt(hidden_size)
        with torch.no_grad():
            for w in params.values():
                w.uniform_(-bound, bound)

    def reset_parameters(self) -> None:
        self.init_parameters(dict(self.named_parameters()), self.hidden_size)

    def step(self, x: Tensor, state: State, p: Params) -> tuple[State, Gates]:
        """One batched step (x: (B, I)) with parameters ``p``; returns (new_state, gates)."""
        return cell_step(self.name, x, state, p, getattr(self, "nonlinearity", "tanh"))

    def effective_parameters(self) -> dict[str, Tensor]:
        """The weights as the equations use them, read as attributes so that parametrizations
        (weight_norm, orthogonal, spectral_norm) and re-assigned weights apply."""
        names = self.parameter_shapes(self.input_size, self.hidden_size, self.has_bias)
        return {name: getattr(self, name) for name in names}

    def initial_state(self, batch: int, like: Tensor) -> State:
        h = like.new_zeros(batch, self.hidden_size)
        return (h, h.clone()) if self.has_cell_state else h

    def forward(self, x: Tensor, state: State | None = None) -> State:
        """x: (B, I) or unbatched (I,); state as returned by a previous call, or None for zeros."""
        if x.dim() not in (1, 2):
            raise ShapeError(f"input: expected a 1-D (I,) or 2-D (B, I) tensor, got {x.dim()}-D")
        if x.shape[-1] != self.input_size:
            raise ShapeError(
                f"input: expected size {self.input_size} in the last dimension, got {x.shape[-1]}"
            )
        unbatched = x.dim() == 1
        xb = x.unsqueeze(0) if unbatched else x
        if state is None:
            state = self.initial_state(xb.shape[0], xb)
        elif unbatched:
            state = _map_state(state, lambda t: t.unsqueeze(0))
        expected = (xb.shape[0], self.hidden_size)
        for t in state if isinstance(state, tuple) else (state,):
            if tuple(t.shape) != expected:
                shape = expected[1:] if unbatched else expected
                raise ShapeError(
                    f"state: expected shape {tuple(shape)}, "
                    f"got {tuple(t.shape[1:] if unbatched else t.shape)}"
                )
        new_state, _ = self.step(xb, state, self.effective_parameters())
        return _map_state(new_state, lambda t: t.squeeze(0)) if unbatched else new_state

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.has_bias}"


class RNNCell(Cell):
    r"""Vanilla (Elman) RNN cell (Elman 1990; the lecture's ``h = tanh(W_hh h + W_xh x)``).

    .. math:: h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    ``nonlinearity="relu"`` replaces tanh by ReLU, as in torch.nn.RNNCell.
    """

    name = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)


class LSTMCell(Cell):
    r"""Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

    .. math::
        (i, f, g, o) = (\sigma, \sigma, \tanh, \sigma)(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}) \\
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    Gate blocks are stacked (i, f, g, o) as in torch.nn.LSTM. ``forget_bias`` (default 1.0, as
    char-rnn and Jozefowicz et al. 2015 found best) initialises the f-block of ``bias_ih`` and
    zeroes that of ``bias_hh``, so the total forget bias at initialisation equals ``forget_bias``;
    ``forget_bias=None`` keeps torch's uniform init.
    """

    name = "lstm"
    gates_ih = 4
    gates_hh = 4
    has_cell_state = True

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float | None = 1.0
    ) -> None:
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, bias)

    @classmethod
    def init_parameters(
        cls, params: Params, hidden_size: int, forget_bias: float | None = 1.0, **options: float
    ) -> None:
        super().init_parameters(params, hidden_size)
        if forget_bias is not None and "bias_ih" in params:
            H = hidden_size
            with torch.no_grad():
                params["bias_ih"][H : 2 * H].fill_(forget_bias)
                params["bias_hh"][H : 2 * H].zero_()

    def reset_parameters(self) -> None:
        self.init_parameters(dict(self.named_parameters()), self.hidden_size, self.forget_bias)


class GRUCell(Cell):
    r"""Gated recurrent unit (Cho et al. 2014), in torch.nn.GRU's convention.

    .. math::
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \quad
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    Gate blocks are stacked (r, z, n).
    """

    name = "gru"
    gates_ih = 3
    gates_hh = 3


class _MUTCell(Cell):
    """Shared parameter layout of the MUT cells (Jozefowicz, Zaremba & Sutskever 2015, "An
    Empirical Exploration of Recurrent Network Architectures", ICML).

    One bias per equation: ``bias`` (3H,) = (b_z, b_r, b_h). ``weight_ih`` / ``weight_hh`` stack the
    W_x* / W_h* matrices present in the cell, in the order (z, r, h) (see each class). Where a cell
    feeds ``x`` straight into a hidden-sized sum (MUT1's tanh(x), MUT2's x in r) and
    ``input_size != hidden_size``, we add ``weight_proj`` (H, I) and use ``W_proj x`` instead: a
    deviation from the paper, which only defines the cells for I == H.
    """

    torch_biases = False
    needs_square_input = False

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        if not bias:
            raise ValueError("bias: the MUT cells are defined with biases; got bias=False")
        shapes = super().parameter_shapes(input_size, hidden_size, bias)
        if cls.needs_square_input and input_size != hidden_size:
            shapes["weight_proj"] = (hidden_size, input_size)
        return shapes


class MUT1Cell(_MUTCell):
    r"""MUT1 (Jozefowicz et al. 2015).

    .. math::
        z = \sigma(W_{xz} x + b_z), \quad r = \sigma(W_{xr} x + W_{hr} h + b_r) \\
        h' = \tanh(W_{hh}(r \odot h) + \tanh(x) + b_h) \odot z + h \odot (1 - z)

    ``weight_ih`` = [W_xz; W_xr] (2H, I); ``weight_hh`` = [W_hr; W_hh] (2H, H).
    """

    name = "mut1"
    gates_ih = 2
    gates_hh = 2
    needs_square_input = True


class MUT2Cell(_MUTCell):
    r"""MUT2 (Jozefowicz et al. 2015).

    .. math::
        z = \sigma(W_{xz} x + W_{hz} h + b_z), \quad r = \sigma(x + W_{hr} h + b_r) \\
        h' = \tanh(W_{hh}(r \odot h) + W_{xh} x + b_h) \odot z + h \odot (1 - z)

    ``weight_ih`` = [W_xz; W_xh] (2H, I); ``weight_hh`` = [W_hz; W_hr; W_hh] (3H, H).
    """

    name = "mut2"
    gates_ih = 2
    gates_hh = 3
    needs_square_input = True


class MUT3Cell(_MUTCell):
    r"""MUT3 (Jozefowicz et al. 2015).

    .. math::
        z = \sigma(W_{xz} x + W_{hz} \tanh(h) + b_z), \quad r = \sigma(W_{xr} x + W_{hr} h + b_r) \\
        h' = \tanh(W_{hh}(r \odot h) + W_{xh} x + b_h) \odot z + h \odot (1 - z)

    ``weight_ih`` = [W_xz; W_xr; W_xh] (3H, I); ``weight_hh`` = [W_hz; W_hr; W_hh] (3H, H).
    """

    name = "mut3"
    gates_ih = 3
    gates_hh = 3


class _MinCell(Cell):
    """Shared layout of the minimal cells (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi 2024, "Were
    RNNs All We Needed?", arXiv:2410.01201): every gate is a linear function of x alone, so there
    is no ``weight_hh``; ``weight_ih`` (k*H, I) stacks the k blocks and ``bias_ih`` (k*H,) their
    biases (the paper's ``nn.Linear`` layers, initialised as every rnnlab weight).

    One definition, both modes: the candidate state passes through the paper's g (``candidate``),
    as in its log-space version, in the one-step recurrence as well (the paper's sequential listing
    uses g too), so the parallel scan (``rnnlab.scan``, training) and the step (sampling) compute
    the same function. The initial state h_0 is used as it is, of either sign (the paper's listing
    takes log g(h_0), which changes a given h_0): the scan adds its term A_t h_0 outside the log.
    """

    gates_hh = 0

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        G = cls.gates_ih * hidden_size
        return {"weight_ih": (G, input_size), **({"bias_ih": (G,)} if bias else {})}


class MinGRUCell(_MinCell):
    r"""minGRU (Feng et al. 2024): the GRU without h in its gates and without a reset gate.

    .. math::
        z = \sigma(W_z x + b_z), \quad \tilde h = g(W_h x + b_h), \quad
        h' = (1 - z) \odot h + z \odot \tilde h, \qquad
        g(a) = a + \tfrac12 \ (a \ge 0), \ \sigma(a) \ (a < 0)

    ``weight_ih`` = [W_z; W_h] (2H, I); gates traced: z, n (the candidate h̃), h.
    """

    name = "mingru"
    gates_ih = 2


class MinLSTMCell(_MinCell):
    r"""minLSTM (Feng et al. 2024): the LSTM without h in its gates, without an output gate
    (h = c), its forget and input gates normalised to sum to one (the paper's time-independent
    scale).

    .. math::
        f = \sigma(W_f x + b_f), \ i = \sigma(W_i x + b_i), \ \tilde h = g(W_h x + b_h) \\
        f' = \frac{f}{f + i}, \quad i' = \frac{i}{f + i}, \quad
        h' = f' \odot h + i' \odot \tilde h

    ``weight_ih`` = [W_f; W_i; W_h] (3H, I); gates traced: f and i (normalised, f' and i'), g (the
    candidate h̃), h. The state is h alone.
    """

    name = "minlstm"
    gates_ih = 3


def indrnn_recurrent_bound(steps: int, largest_gradient: float = 2.0) -> float:
    """Li et al. 2018 (section 3.1): through T steps of a ReLU IndRNN unit the gradient is scaled
    by u^T on its active path, so |u| <= gamma^(1/T) keeps that factor at most gamma (the paper's
    adding-problem setting is gamma = 2: |u| <= 2^(1/T)). A tanh unit's derivative is at most 1,
    so the same bound holds for it. The value for ``recurrent_max_abs``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if not largest_gradient > 0:
        raise ValueError(f"largest_gradient: expected a positive number, got {largest_gradient!r}")
    return float(largest_gradient) ** (1.0 / steps)


def check_recurrent_max_abs(value: float | None) -> None:
    """ValueError unless ``value`` is None or a positive finite number."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):  # fmt: skip
        raise ValueError(f"recurrent_max_abs: expected a positive number or None, got {value!r}")


def constrain_recurrent_(module: nn.Module, name: str, max_abs: float | None) -> None:
    """IndRNN's recurrent-weight bound, |u| <= ``max_abs``, applied to the stored parameter
    ``module.<name>`` in place, as projected gradient descent (the paper's code clips u after each
    update): called before every use, it clamps a u that an optimizer step moved past the bound,
    so every forward uses a bounded u and no training loop needs to know about it. A clamp inside
    the equations instead would have zero gradient beyond the bound and could leave u stuck there.
    A parametrized or re-assigned (non-Parameter) weight is left alone."""
    w = module._parameters.get(name)
    if max_abs is None or w is None:
        return
    with torch.no_grad():
        if bool(w.abs().max() > max_abs):  # only then: an unchanged version keeps step caches
            w.clamp_(-max_abs, max_abs)


class IndRNNCell(Cell):
    r"""Independently recurrent neural network (Li, Li, Cook, Zhu & Gao 2018, "Independently
    Recurrent Neural Network (IndRNN): Building A Longer and Deeper RNN", CVPR).

    .. math:: h' = \mathrm{act}(W_{ih} x + w_{hh} \odot h + b)

    ``weight_hh`` is a vector (H,): each unit recurs only on itself, so the recurrence is
    element-wise and its gradient through time is u^T (times act'), which the bound controls.
    ``nonlinearity`` is ``relu`` (the paper's default) or ``tanh``; one ``bias`` (H,) (a second
    one would only duplicate it). Init as the paper's experiments: ``weight_hh`` ~ U(0, 1) (then
    clamped to the bound), ``weight_ih`` and ``bias`` torch's U(-1/sqrt(H), 1/sqrt(H)).
    ``recurrent_max_abs``: the bound |w_hh| <= value (see ``indrnn_recurrent_bound`` for the
    paper's 2^(1/T)), kept by ``constrain_recurrent_`` before every use; None: unbounded.
    """

    name = "indrnn"
    own_init = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "relu",
        recurrent_max_abs: float | None = None,
    ) -> None:
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        check_recurrent_max_abs(recurrent_max_abs)
        self.nonlinearity = nonlinearity
        self.recurrent_max_abs = recurrent_max_abs
        super().__init__(input_size, hidden_size, bias)

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        shapes = {"weight_ih": (hidden_size, input_size), "weight_hh": (hidden_size,)}
        if bias:
            shapes["bias"] = (hidden_size,)
        return shapes

    @classmethod
    def init_parameters(
        cls,
        params: Params,
        hidden_size: int,
        recurrent_max_abs: float | None = None,
        **options: float | None,
    ) -> None:
        super().init_parameters(params, hidden_size)
        with torch.no_grad():
            params["weight_hh"].uniform_(0.0, 1.0)
            if recurrent_max_abs is not None:
                params["weight_hh"].clamp_(-recurrent_max_abs, recurrent_max_abs)

    def reset_parameters(self) -> None:
        self.init_parameters(
            dict(self.named_parameters()), self.hidden_size, self.recurrent_max_abs
        )

    def forward(self, x: Tensor, state: State | None = None) -> State:
        constrain_recurrent_(self, "weight_hh", self.recurrent_max_abs)
        return super().forward(x, state)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"
        if self.recurrent_max_abs is not None:
            s += f", recurrent_max_abs={self.recurrent_max_abs}"
        return s


def _haste_init(params: Params, hidden_size: int, blocks: int) -> None:
    """haste's LayerNorm-cell init: ``weight_ih`` Xavier-uniform and ``weight_hh`` orthogonal per
    H-row gate block, biases 0, layer-norm gains 1; anything else (``weight_ch``) torch.nn's."""
    Cell.init_parameters(params, hidden_size)
    H = hidden_size
    with torch.no_grad():
        for k in range(blocks):
            nn.init.xavier_uniform_(params["weight_ih"][k * H : (k + 1) * H])
            nn.init.orthogonal_(params["weight_hh"][k * H : (k + 1) * H])
        for name, w in params.items():
            if name.startswith("bias") or name == "ln_c_bias":
                w.zero_()
            elif name.startswith("ln_") and name.endswith("_weight"):
                w.fill_(1.0)


class LayerNormLSTMCell(Cell):
    r"""LayerNorm LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", section 3.1 and
    appendix), in the form haste's ``LayerNormLSTM`` implements.

    .. math::
        a = \mathrm{LN}(W_{ih} x; \gamma_{ih}) + \mathrm{LN}(W_{hh} h; \gamma_{hh}) + b \\
        (i, f, g, o) = (\sigma, \sigma, \tanh, \sigma)(a), \qquad c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(\mathrm{LN}(c'; \gamma_c, \beta_c))

    LN normalises a vector over its last dimension (mean 0, variance 1, eps 1e-5) and scales it
    by a gain; the two gate-side norms (over all 4H pre-activations) carry gains only, since their
    shifts would duplicate ``bias``; the state carried is the unnormalised c'. Gate blocks (i, f,
    g, o) as torch.nn.LSTM. Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias``
    (4H,), ``ln_ih_weight`` / ``ln_hh_weight`` (4H,), ``ln_c_weight`` / ``ln_c_bias`` (H,)
    (``bias=False`` drops ``bias`` and ``ln_c_bias``). Init as haste: Xavier-uniform /
    orthogonal per gate block, gains 1, shifts 0, the f-block of ``bias`` = ``forget_bias``.
    """

    name = "layernorm_lstm"
    gates_ih = 4
    gates_hh = 4
    has_cell_state = True
    own_init = True

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float | None = 1.0
    ) -> None:
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, bias)

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        H = hidden_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (4 * H, input_size),
                                              "weight_hh": (4 * H, H)}  # fmt: skip
        if bias:
            shapes["bias"] = (4 * H,)
        shapes |= {"ln_ih_weight": (4 * H,), "ln_hh_weight": (4 * H,), "ln_c_weight": (H,)}
        if bias:
            shapes["ln_c_bias"] = (H,)
        return shapes

    @classmethod
    def init_parameters(
        cls, params: Params, hidden_size: int, forget_bias: float | None = 1.0, **options: float
    ) -> None:
        _haste_init(params, hidden_size, 4)
        if forget_bias is not None and "bias" in params:
            with torch.no_grad():
                params["bias"][hidden_size : 2 * hidden_size].fill_(forget_bias)

    def reset_parameters(self) -> None:
        self.init_parameters(dict(self.named_parameters()), self.hidden_size, self.forget_bias)


class LayerNormGRUCell(Cell):
    r"""LayerNorm GRU (Ba, Kiros & Hinton 2016), in the form haste's ``LayerNormGRU`` implements,
    on torch.nn.GRU's convention (reset applied after the recurrent matmul).

    .. math::
        (x_r, x_z, x_n) = \mathrm{LN}(W_{ih} x; \gamma_{ih}) + b_{ih}, \quad
        (h_r, h_z, h_n) = \mathrm{LN}(W_{hh} h; \gamma_{hh}) + b_{hh} \\
        r = \sigma(x_r + h_r), \quad z = \sigma(x_z + h_z), \quad
        n = \tanh(x_n + r \odot h_n), \quad h' = (1 - z) \odot n + z \odot h

    Each norm runs over all 3H pre-activations of its side and has a gain only; the shifts are
    ``bias_ih`` / ``bias_hh``, both needed since r multiplies the recurrent n-block and its bias.
    Parameters: ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih`` / ``bias_hh`` (3H,),
    ``ln_ih_weight`` / ``ln_hh_weight`` (3H,). Init as haste: Xavier-uniform / orthogonal per
    gate block, biases 0, gains 1.
    """

    name = "layernorm_gru"
    gates_ih = 3
    gates_hh = 3
    own_init = True

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True
    ) -> dict[str, tuple[int, ...]]:
        shapes = super().parameter_shapes(input_size, hidden_size, bias)
        return shapes | {"ln_ih_weight": (3 * hidden_size,), "ln_hh_weight": (3 * hidden_size,)}

    @classmethod
    def init_parameters(cls, params: Params, hidden_size: int, **options: float | None) -> None:
        _haste_init(params, hidden_size, 3)


CELLS: dict[str, type[Cell]] = {
    c.name: c
    for c in (RNNCell, LSTMCell, GRUCell, MUT1Cell, MUT2Cell, MUT3Cell, MinGRUCell, MinLSTMCell,
              IndRNNCell, LayerNormLSTMCell, LayerNormGRUCell)
}  # fmt: skip
assert tuple(CELLS) == CELL_NAMES, "CellName and CELLS list the same cells in the same order"


StepFunction = Callable[[Tensor, State, Params], tuple[State, Gates]]


def step_function(name: str, nonlinearity: str = "tanh") -> StepFunction:
    """The pure step equations of a cell: ``(x, state, params) -> (new_state, gates)``.
    A ``functools.partial`` of ``cell_step``, so a module holding it still pickles."""
    cls = cell_class(name)
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    return functools.partial(cell_step, cls.name, nonlinearity=nonlinearity)


def cell_class(name: str) -> type[Cell]:
    """The Cell class for a name in ``CELL_NAMES``; ValueError otherwise."""
    try:
        return CELLS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"cell: expected one of {'|'.join(CELLS)}, got {name!r}") from None


def _check_positive(arg: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{arg}: expected a positive integer, got {value!r}")


def _map_state(state: State, fn: Callable[[Tensor], Tensor]) -> State:
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)  # type: ignore


def unroll(
    cell: str,
    u: Tensor,
    state: State,
    p: Params,
    nonlinearity: str = "tanh",
    lengths: Tensor | None = None,
    record: bool = False,
    zoneout: Zoneout | None = None,
) -> tuple[Tensor, State, Gates]:
    """Run ``recurrent_step`` over every step of u (T, B, Gx [+ H]): the lecture's unrolled graph.

    Returns ``(output (T, B, H), final state, gates)``; ``gates[name]`` is (T, B, H) when
    ``record``, else empty. With ``lengths`` (B,) (each in 1..T) a sequence stops at its length:
    its later outputs (and gates) are 0 and its final state is the one after its last real step,
    exactly as if it had been run alone.

    ``zoneout`` (Krueger et al. 2016): one keep mask per state part (h, and c for the LSTM), each
    (T, B, H); every step hands on ``m * previous + (1 - m) * new`` for each part, where ``new``
    is the cell's own step from the (zoned) previous state. In training m is Bernoulli(rate) (1
    keeps the old value); at eval it is the rate itself (the expectation). Any cell, by its state:
    the LSTM's h candidate is ``o * tanh(c~)`` of its unzoned c~, as in the paper. Recorded gates
    ``h`` and ``c`` are the zoned state.
    """
    outputs: list[Tensor] = []
    steps: list[Gates] = []
    if lengths is not None:
        lengths = lengths.to(u.device)
    # unbind, not u[t]: the backward of T selects would add T full-size (T, B, G) zero tensors.
    for t, u_t in enumerate(u.unbind(0)):
        new_state, gates = recurrent_step(cell, u_t, state, p, nonlinearity)
        if zoneout is not None:
            new_state = _zone(new_state, state, [m[t] for m in zoneout])
            if record:
                gates = {**gates, **dict(zip(("h", "c"), _parts_of(new_state), strict=False))}
        h = new_state[0] if isinstance(new_state, tuple) else new_state
        if lengths is not None:
            live = (lengths > t).unsqueeze(1)  # (B, 1): still inside its sequence
            new_state = _map_pair(new_state, state, live)
            h = h.masked_fill(~live, 0.0)
            if record:
                gates = {n: g.masked_fill(~live, 0.0) for n, g in gates.items()}
        state = new_state
        outputs.append(h)
        if record:
            steps.append(gates)
    recorded = {n: torch.stack([g[n] for g in steps]) for n in steps[0]} if record else {}
    return torch.stack(outputs), state, recorded


def _parts_of(state: State) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _zone(new: State, old: State, keep: list[Tensor]) -> State:
    """Zoneout's blend ``m * old + (1 - m) * new`` of every state part (its own mask each)."""
    parts = tuple(
        m * o + (1 - m) * n for n, o, m in zip(_parts_of(new), _parts_of(old), keep, strict=True)
    )
    return parts if isinstance(new, tuple) else parts[0]  # type: ignore[return-value]


def _map_pair(new: State, old: State, live: Tensor) -> State:
    """``new`` where ``live`` (B, 1), else ``old``: a finished sequence keeps its state."""
    if isinstance(new, tuple):
        return tuple(torch.where(live, a, b) for a, b in zip(new, old, strict=True))  # type: ignore
    return torch.where(live, new, old)  # type: ignore[arg-type]
