"""Recurrent: a stack of cells run over time, a drop-in for torch.nn.RNN / LSTM / GRU.

Input (T, B, I), or (B, T, I) with ``batch_first=True``, or unbatched (T, I), or a
``PackedSequence``. Returns ``(output, h_n)``: output (T, B, D*H_out) is the top layer's h at every
step (both directions concatenated when bidirectional, D = 2); h_n is (L*D, B, H_out), or
``(h_n, c_n)`` for the LSTM with c_n (L*D, B, H); H_out is ``proj_size`` or ``hidden_size``.
Parameters are named as torch.nn's (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``), so ``load_state_dict`` crosses between
``rnnlab.LSTM`` and ``nn.LSTM`` both ways; rnnlab adds ``weight_proj_l*`` (MUT1/MUT2 with
I != H) and ``weight_ch_l0`` (conditioning).

Beyond torch.nn, for the graphs of the lecture (keyword-only arguments of ``forward``):

- ``lengths`` (B,): a padded batch of sequences of different lengths. Outputs past a sequence's
  length are 0 and h_n is its state after its last real step, in both directions: each sequence
  gets exactly what it would alone. (A PackedSequence input means the same.)
- ``condition`` (B, C): a per-sequence vector entering every step of layer 0 through
  ``weight_ch_l0`` (G, C), added wherever the cell's pre-activations take ``W_ih x``: the
  lecture's captioning equation ``h = tanh(W_xh x + W_hh h + W_ch v)``. Computed once per sequence.
- ``embedding`` (V, I): the input holds token ids and layer 0's input is ``embedding[ids]``. On
  the fused engine the lookup is folded into layer 0's input projection (exact: ``emb(ids) W_ih^T``
  is row ``ids`` of the (V, G) table ``E W_ih^T``), so one V-row GEMM replaces a T*B-row one.
- ``step(x_t, h)``: one step, for decoders (sampling, beam search, scheduled sampling,
  attention); differentiable under grad mode, one C++ call under ``torch.no_grad()`` on CPU.

Regularisers (training mode only; ``rnnlab.regularisers``), for every cell and backend:

- ``zoneout`` / ``zoneout_cell``: zoneout (Krueger et al. 2016) of h and of the LSTM's c: each
  unit keeps its previous value with that probability at each step; at eval the expectation.
  The C++ engine runs it (torch's kernels cannot: ``auto`` never picks them for a zoned layer).
- ``weight_drop``: DropConnect on every ``weight_hh`` (AWD-LSTM's weight drop, Merity et al.
  2017), one mask per forward pass, applied before the weights reach any backend.
- ``locked_dropout=True``: ``dropout`` between layers draws one mask per sequence, shared by every
  time step (variational dropout, Gal & Ghahramani 2016), instead of one per element.

Backends compute the same function (tests prove it):

- ``reference``: a readable Python loop over the cell's equations (``rnnlab.cells.unroll``), the
  input projection of all steps hoisted into one GEMM.
- ``native``: torch's own RNN/LSTM/GRU kernels (oneDNN / cuDNN) over our parameters.
- ``fused``: rnnlab's C++ engine (``rnnlab.kernels``) for rnn, lstm, gru and MUT1-3,
  bidirectional layers, padded batches and conditioning included (``proj_size`` runs on
  reference/native); for IndRNN its element-wise recurrence in C++ after the one input GEMM;
  for minGRU and minLSTM, whose gates depend on x alone, the log-space parallel scan over time
  (``rnnlab.scan``, torch ops, any device), while ``step`` runs their one-step recurrence; the
  LayerNorm cells have no engine and run the reference loop.
- ``auto``: the fastest backend proven equal for this cell, device and input.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnlab import kernels, regularisers, scan
from rnnlab.cells import (
    NATIVE_CELLS,
    NONLINEAR_CELLS,
    NONLINEARITIES,
    SCAN_CELLS,
    Cell,
    Gates,
    ShapeError,
    State,
    Zoneout,
    cell_class,
    check_recurrent_max_abs,
    constrain_recurrent_,
    input_projection,
    unroll,
)

BACKENDS = ("auto", "reference", "native", "fused")


@dataclass
class _Batch:
    """A forward's inputs, validated and time-major: x (T, B, I) or token ids (T, B)."""

    x: Tensor
    state: State
    lengths: Tensor | None  # (B,) int64 on CPU, each in 1..T
    condition: Tensor | None  # (B, C)
    embedding: Tensor | None  # (V, I): x holds ids
    unbatched: bool


class Recurrent(nn.Module):
    """A multilayer, optionally bidirectional recurrent network of any rnnlab cell.

    Args:
        cell: a name in ``rnnlab.cells.CELL_NAMES`` (``rnn | lstm | gru | mut1 | mut2 | mut3 |
            mingru | minlstm | indrnn | layernorm_lstm | layernorm_gru``).
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size (LSTM only), device, dtype: as in torch.nn; ``dropout`` applies to the
            outputs of every layer but the last, in training mode.
        nonlinearity: ``tanh | relu`` for rnn (default tanh) and indrnn (default relu, the
            paper's).
        recurrent_max_abs: IndRNN only: the bound |weight_hh| <= value of Li et al. 2018 (e.g.
            ``rnnlab.cells.indrnn_recurrent_bound(T)`` = 2^(1/T)), kept in place before every use
            (``rnnlab.cells.constrain_recurrent_``); None (default): unbounded.
        condition_size: C > 0 adds ``weight_ch_l0`` (G, C) and makes ``forward`` take
            ``condition=`` (B, C).
        backend: ``auto | reference | native | fused`` (see the module docstring).
        forget_bias: initial LSTM forget-gate bias (default 1.0, as char-rnn and Jozefowicz et
            al. 2015; the one intended deviation from torch). ``None`` gives torch's init bit for
            bit (same seed, same values).
        zoneout: the probability in [0, 1] that a unit of h keeps its previous value at a step
            (Krueger et al. 2016); ``zoneout_cell``: the same for the LSTM's c (None: as
            ``zoneout``; the paper's char-level PTB model used c 0.5, h 0.05).
        weight_drop: DropConnect probability in [0, 1) on the recurrent matrices ``weight_hh``
            (Merity et al. 2017): one mask per forward, shared by every step.
        locked_dropout: ``dropout`` between layers with one mask per sequence shared over time
            (Gal & Ghahramani 2016).

    Raises TypeError / ValueError for bad arguments, as torch.nn does.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        nonlinearity: str | None = None,
        condition_size: int = 0,
        backend: str = "auto",
        forget_bias: float | None = 1.0,
        recurrent_max_abs: float | None = None,
        zoneout: float = 0.0,
        zoneout_cell: float | None = None,
        weight_drop: float = 0.0,
        locked_dropout: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cls = cell_class(cell)
        if nonlinearity is None:
            nonlinearity = "relu" if cls.name == "indrnn" else "tanh"
        check_recurrent_max_abs(recurrent_max_abs)
        if recurrent_max_abs is not None and cls.name != "indrnn":
            raise ValueError(f"recurrent_max_abs: only the indrnn cell has a bounded recurrent "
                             f"weight, got cell {cls.name!r}")  # fmt: skip
        _check_arguments(cls.name, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, nonlinearity, condition_size,
                         backend)  # fmt: skip
        self.zoneout = regularisers.check_zoneout("zoneout", zoneout)
        self.zoneout_cell = regularisers.check_zoneout(
            "zoneout_cell", zoneout if zoneout_cell is None else zoneout_cell
        )
        self.weight_drop = regularisers.check_rate("weight_drop", weight_drop)
        if not isinstance(locked_dropout, bool):
            raise TypeError(f"locked_dropout: expected a bool, got {locked_dropout!r}")
        self.locked_dropout = locked_dropout
        if zoneout_cell and not cls.has_cell_state:
            raise ValueError(f"zoneout_cell: the {cls.name} cell has no cell state c (the lstm and "
                             "layernorm_lstm have one)")  # fmt: skip
        if weight_drop and "weight_hh" not in cls.parameter_shapes(1, 1, bias):
            raise ValueError(f"weight_drop: the {cls.name} cell has no recurrent weight_hh to drop "
                             "(its gates read x alone); use dropout or zoneout")  # fmt: skip
        if backend == "native" and (zoneout or (zoneout_cell and cls.has_cell_state)):
            raise ValueError("backend: 'native' has no zoneout (torch's kernels fix the "
                             "recurrence); use 'fused' or 'reference'")  # fmt: skip
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout > 0 with num_layers=1 has no effect: dropout applies between layers",
                stacklevel=2,
            )
        self.cell = cls.name
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.nonlinearity = nonlinearity
        self.condition_size = condition_size
        self.backend = backend
        self.forget_bias = forget_bias
        self.recurrent_max_abs = recurrent_max_abs
        self.fold_lookup = True  # fold an ``embedding=`` lookup into the engine's projection
        self.num_directions = 2 if bidirectional else 1
        self.output_size = (proj_size or hidden_size) * self.num_directions
        factory = {"device": device, "dtype": dtype}
        # Names per (layer, direction) in torch.nn's registration order (its flat-weights order).
        self._layer_names: list[dict[str, str]] = []
        for k in range(num_layers):
            in_k = input_size if k == 0 else self.output_size
            for d in range(self.num_directions):
                names = {}
                for name, shape in self._shapes(cls, in_k, k).items():
                    full = f"{name}_l{k}{'_reverse' if d else ''}"
                    self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    names[name] = full
                self._layer_names.append(names)
        self.reset_parameters()

    def _shapes(self, cls: type, in_k: int, k: int) -> dict[str, tuple[int, ...]]:
        shapes = cls.parameter_shapes(in_k, self.hidden_size, self.bias)
        if self.proj_size:  # LSTM with projections (Sak et al. 2014), torch's layout
            shapes["weight_hh"] = (4 * self.hidden_size, self.proj_size)
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        if k == 0 and self.condition_size:
            shapes["weight_ch"] = (cls.gates_ih * self.hidden_size, self.condition_size)
        return shapes

    # -- parameters ---------------------------------------------------------------------------

    def layer_params(self, k: int, direction: int = 0) -> dict[str, Tensor]:
        """Layer k's effective weights under the cell's own names (``weight_ih``, ...), read as
        attributes so parametrizations and re-assigned weights apply (never ``_parameters``)."""
        names = self._layer_names[k * self.num_directions + direction]
        return {name: getattr(self, full) for name, full in names.items()}

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Per layer and direction, its weights in torch.nn's order (as ``nn.LSTM.all_weights``)."""
        return [[getattr(self, full) for full in names.values()] for names in self._layer_names]

    def flatten_parameters(self) -> None:
        """A no-op, for code written for cuDNN (rnnlab's weights need no flattening)."""

    def reset_parameters(self) -> None:
        """torch.nn's init, U(-1/sqrt(H), 1/sqrt(H)) over the parameters in registration order
        (so with ``forget_bias=None`` the same seed gives torch's values), then the LSTM
        forget-gate bias: ``bias_ih``'s f-block = forget_bias, ``bias_hh``'s = 0. IndRNN and the
        LayerNorm cells take their papers' init instead (``cls.init_parameters``, see
        ``rnnlab.cells``)."""
        cls = cell_class(self.cell)
        for names in self._layer_names:
            params = {n: getattr(self, f) for n, f in names.items()}
            if cls.own_init:  # the cell's paper's init (IndRNN, the LayerNorm cells)
                cls.init_parameters(params, self.hidden_size, forget_bias=self.forget_bias,
                                    recurrent_max_abs=self.recurrent_max_abs)  # fmt: skip
            else:
                Cell.init_parameters(params, self.hidden_size)
        if self.cell == "lstm" and self.forget_bias is not None and self.bias:
            H = self.hidden_size
            with torch.no_grad():
                for names in self._layer_names:
                    getattr(self, names["bias_ih"])[H : 2 * H].fill_(self.forget_bias)
                    getattr(self, names["bias_hh"])[H : 2 * H].zero_()

    # -- backends -----------------------------------------------------------------------------

    def resolved_backend(
        self,
        device: torch.device | str | None = None,
        *,
        lookup: bool = False,
        conditioned: bool | None = None,
    ) -> str:
        """The backend ``forward`` uses on ``device``: ``auto`` resolved for this cell, and
        ``fused`` where the engine does not apply (proj_size; CUDA: cuDNN or the reference loop).
        ``lookup``: the input is ``embedding=`` token ids."""
        device = torch.device(device) if device is not None else self._device()
        if conditioned is None:
            conditioned = self.condition_size > 0
        native_ok = self.cell in NATIVE_CELLS and not conditioned and not self.zoned
        if self.backend == "auto":
            return kernels.choose_backend(
                self.cell, self.hidden_size, device, lookup_input=lookup,
                conditioned=conditioned, proj_size=self.proj_size, zoned=self.zoned,
            )  # fmt: skip
        if self.backend == "fused" and self.cell in SCAN_CELLS:
            return "fused"  # the scan: torch ops, any device
        if self.backend == "fused" and (self.proj_size or device.type != "cpu"
                                        or not kernels.has_engine(self.cell)):  # fmt: skip
            return "native" if native_ok and device.type == "cuda" else "reference"
        return self.backend

    def _device(self) -> torch.device:
        return getattr(self, self._layer_names[0]["weight_ih"]).device  # every cell has W_ih

    @property
    def zoned(self) -> bool:
        """Whether zoneout is on (h, or the LSTM's c): the recurrence itself changes, so torch's
        own kernels (``native``, cuDNN) cannot run it."""
        return self.zoneout > 0 or (self._has_c and self.zoneout_cell > 0)

    @property
    def zoneout_rates(self) -> tuple[float, ...]:
        """Zoneout's rate per state part: (h,), or (h, c) for the LSTM."""
        return (self.zoneout, self.zoneout_cell) if self._has_c else (self.zoneout,)

    @property
    def _has_c(self) -> bool:
        """Whether the cell's state carries a c beside h (lstm, layernorm_lstm)."""
        return cell_class(self.cell).has_cell_state

    def _stochastic(self) -> bool:
        """Whether a training-mode forward draws regulariser masks of this module."""
        between = self.dropout > 0 and self.num_layers > 1
        return self.training and (self.zoned or self.weight_drop > 0 or between)

    def _forward_params(self) -> list[dict[str, Tensor]]:
        """Per layer and direction, the weights this forward uses: the effective parameters with
        weight drop applied to ``weight_hh`` in training (one mask per matrix per forward)."""
        params = [self.layer_params(k, d) for k in range(self.num_layers)
                  for d in range(self.num_directions)]  # fmt: skip
        if self.weight_drop > 0 and self.training:
            for p in params:
                p["weight_hh"] = regularisers.drop_weight(p["weight_hh"], self.weight_drop, True)
        return params

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: State | None = None,
        *,
        lengths: Tensor | None = None,
        condition: Tensor | None = None,
        embedding: Tensor | None = None,
    ) -> tuple[Tensor | PackedSequence, State]:
        """Run every layer over the sequence. See the module docstring for shapes and keywords.

        Raises ShapeError (a ValueError and a RuntimeError) naming the argument on a wrong shape.
        """
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise TypeError("lengths: a PackedSequence carries its own lengths")
            padded, lengths = pad_packed_sequence(input)  # (T, B, *) in the original batch order
            batch = self._batch(padded, hx, lengths, condition, embedding, time_major=True)
            output, state, _ = self._run(batch, record=False)
            return _pack_like(output, batch.lengths, input), state
        batch = self._batch(input, hx, lengths, condition, embedding)
        output, state, _ = self._run(batch, record=False)
        return self._finish(output, state, batch.unbatched)

    def trace(
        self,
        input: Tensor,
        hx: State | None = None,
        *,
        lengths: Tensor | None = None,
        condition: Tensor | None = None,
        embedding: Tensor | None = None,
    ) -> tuple[Tensor, State, list[Gates]]:
        """Like ``forward``, plus every gate at every step: ``gates[j][name]``
        is (T, B, H) for layer ``j // D``, direction ``j % D`` (unbatched: (T, H); batch_first:
        (B, T, H)); names per cell as in ``rnnlab.cells`` (lstm: i f g o c h; mingru: z n h;
        minlstm: f i g h). Under ``torch.no_grad()`` the C++ engine records them (the activations
        it keeps for backward); otherwise the reference loop does, differentiably (minGRU and
        minLSTM: the path ``forward`` takes, the scan included)."""
        batch = self._batch(input, hx, lengths, condition, embedding)
        output, state, gates = self._run(batch, record=True)
        output, state = self._finish(output, state, batch.unbatched)
        return output, state, [{n: self._layout(g, batch.unbatched) for n, g in layer.items()}
                               for layer in gates]  # fmt: skip

    def step(
        self,
        input: Tensor,
        hx: State | None = None,
        *,
        condition: Tensor | None = None,
        embedding: Tensor | None = None,
        weight_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, State]:
        """One time step of every layer, for decoders: input (B, I) (or token ids (B,) with
        ``embedding``) -> (output (B, H_out), h_n as in ``forward``). Equals ``forward`` on a
        length-1 sequence; differentiable when grad mode is on; under ``torch.no_grad()`` on CPU
        it is one C++ call (a character costs its matrix-vector products).

        ``weight_dtype=torch.bfloat16`` (no_grad, CPU engine, float32 module) multiplies by
        bfloat16 copies of the weight matrices (made once, remade when a weight changes), with
        float32 inputs, biases, state and accumulation: half the bytes read per step, the
        speed-up of sampling a large model; the outputs differ from float32 by bfloat16's
        rounding of the weights (relative 2^-9).

        Raises ShapeError on a wrong shape, RuntimeError for a bidirectional module (a reverse
        direction needs the whole sequence), ValueError for a ``weight_dtype`` the engine cannot
        run here."""
        if self.bidirectional:
            raise RuntimeError("step: a bidirectional Recurrent needs the whole sequence")
        batch = self._batch(input.unsqueeze(0), hx, None, condition, embedding, time_major=True)
        graph = torch.is_grad_enabled() and any(  # evaluated only in grad mode: sampling is hot
            t.requires_grad for t in (*self.parameters(), batch.x, *_parts(batch.state))
        )
        device = self._device()
        self._constrain()
        engine = (not graph and self.backend in ("auto", "fused") and not self.proj_size
                  and self.cell in kernels.STEP_CELLS and not self._stochastic()
                  and kernels.fused_available(device, _dtype(self)))  # fmt: skip
        if weight_dtype is not None and weight_dtype != _dtype(self):
            if self.cell not in kernels.STEP_CELLS:
                raise ValueError(f"weight_dtype: the {self.cell} cell has no engine step for "
                                 f"reduced-precision weights; use float32")  # fmt: skip
            if weight_dtype != torch.bfloat16 or not engine or _dtype(self) != torch.float32:
                raise ValueError(
                    f"weight_dtype: {weight_dtype} weights run on the CPU engine, for a float32 "
                    "module under torch.no_grad() (bfloat16 only)"
                )
        else:
            weight_dtype = None
        if engine:
            x = batch.x[0]
            weights = [kernels.layer_weights(self.cell, self.layer_params(k))
                       for k in range(self.num_layers)]  # fmt: skip
            if weight_dtype is not None:
                # Few streams: the engine reads the bfloat16 copies (half the bytes). More: the
                # products are compute-bound, so they run on float32 copies of the same rounded
                # weights (the same numbers, at float32 GEMM speed).
                sources = [t for layer in weights for t in layer if t is not None]
                full, widen = weights, x.shape[0] > LOW_PRECISION_MAX_ROWS
                weights = self._step_cache(
                    "weights-widened" if widen else "weights",
                    sources,
                    lambda: _cast_matrices(full, weight_dtype, widen),
                )
            projected = embedding is not None or condition is not None
            if embedding is not None and condition is None and self.fold_lookup:
                p = self.layer_params(0)
                table = self._step_cache(
                    "table",
                    [embedding, *p.values()],
                    lambda: input_projection(self.cell, embedding, p),
                )
                x = F.embedding(x, table)  # (B, Gx [+ H]): a row per token
            else:
                if embedding is not None:
                    x = F.embedding(x, embedding)
                if projected:
                    x = input_projection(self.cell, x, self.layer_params(0), self._cond(batch, 0))
            rates = (self.zoneout, self.zoneout_cell if self._has_c else 0.0)
            return kernels.step_layers(self.cell, self.nonlinearity, x, batch.state, weights,
                                       projected, zoneout=rates)  # fmt: skip
        if self.cell in SCAN_CELLS:  # sampling: the one-step recurrence, not a scan of length 1
            output, state, _ = self._forward_layers(
                batch, False, False, self._forward_params(), self._zoneouts(batch)
            )
            return output[0], state
        output, state, _ = self._run(batch, record=False)
        return output[0], state

    def _step_cache(self, name: str, sources: list[Tensor], build: Callable[[], Any]) -> Any:
        """What ``step`` derives from weights, kept until one of ``sources`` changes (same tensor
        objects, same in-place version counters): ``table``, the folded embedding
        ``input_projection(E)`` (V, Gx [+ H]), so a sampled token costs one row instead of a
        (Gx, I) matrix-vector product (a quarter of the bytes a 2x512 LSTM reads per
        character); ``weights``, the reduced-precision copies of ``weight_dtype``."""
        key = [(t, t._version) for t in sources]
        cache = self.__dict__.setdefault("_step_cache_", {})
        cached = cache.get(name)
        if (
            cached is not None
            and len(cached[0]) == len(key)
            and all(a is b and va == vb for (a, va), (b, vb) in zip(cached[0], key, strict=True))
        ):
            return cached[1]
        value = build()
        cache[name] = (key, value)
        return value

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != "_step_cache_"}  # a cache, not state

    def initial_state(self, batch: int, like: Tensor) -> State:
        """Zeros: (L*D, B, H_out), with c (L*D, B, H) for the LSTM."""
        shape = (self.num_layers * self.num_directions, batch)
        h = like.new_zeros(*shape, self.proj_size or self.hidden_size)
        return (h, like.new_zeros(*shape, self.hidden_size)) if self._has_cell_state() else h

    def _has_cell_state(self) -> bool:
        return cell_class(self.cell).has_cell_state

    def _constrain(self) -> None:
        """IndRNN's bound on every layer's recurrent weight (see ``recurrent_max_abs``)."""
        if getattr(self, "recurrent_max_abs", None) is not None:  # (absent in older pickles)
            for names in self._layer_names:
                constrain_recurrent_(self, names["weight_hh"], self.recurrent_max_abs)

    # -- the layers ---------------------------------------------------------------------------

    def _run(self, batch: _Batch, record: bool) -> tuple[Tensor, State, list[Gates]]:
        """(T, B, D*H_out) outputs, final state and (if ``record``) gates, time-major."""
        self._constrain()
        lookup = batch.embedding is not None
        conditioned = batch.condition is not None
        device = self._device()
        backend = self.resolved_backend(device, lookup=lookup, conditioned=conditioned)
        if self.cell in SCAN_CELLS:  # the scan (torch ops) records its gates, differentiably
            pass
        elif record:  # the engine records gates without autograd; with it, the reference loop does
            fused_ok = (not torch.is_grad_enabled() and self.backend in ("auto", "fused")
                        and self.cell in kernels.STEP_CELLS)  # fmt: skip
            backend = "fused" if fused_ok and not self.proj_size else "reference"
        if (backend == "fused" and self.cell not in SCAN_CELLS
                and not kernels.fused_available(device, _dtype(self))):  # fmt: skip
            native_ok = self.cell in NATIVE_CELLS and not conditioned and not self.zoned
            backend = "native" if native_ok and device.type == "cuda" else "reference"
        params = self._forward_params()
        if backend == "native":
            x = F.embedding(batch.x, batch.embedding) if lookup else batch.x
            output, state = self._forward_native(x, batch.state, batch.lengths, params)
            return output, state, []
        zoneout = self._zoneouts(batch)
        if backend == "fused" and batch.lengths is not None and self.cell not in SCAN_CELLS:
            return self._sorted_fused(batch, record, params, zoneout)
        return self._forward_layers(batch, backend == "fused", record, params, zoneout)

    def _zoneouts(self, batch: _Batch) -> list[Zoneout | None]:
        """Zoneout's keep masks per layer and direction (None where off), drawn here, in the
        caller's batch order, so every backend draws the same masks."""
        T, LD = batch.x.shape[0], self.num_layers * self.num_directions
        return [regularisers.zoneout_masks(T, _parts(_map(batch.state, lambda t, j=j: t[j])),
                                           self.zoneout_rates, self.training)
                for j in range(LD)]  # fmt: skip

    def _sorted_fused(
        self,
        batch: _Batch,
        record: bool,
        params: list[dict[str, Tensor]],
        zoneout: list[Zoneout | None],
    ) -> tuple[Tensor, State, list[Gates]]:
        """The engine wants a ragged batch longest first (live rows form a prefix): sort, run,
        and put outputs and states back in the caller's order."""
        order = torch.sort(batch.lengths, descending=True, stable=True).indices
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel())
        sorted_batch = _Batch(
            batch.x.index_select(1, order.to(batch.x.device)),
            _map(batch.state, lambda t: t.index_select(1, order.to(t.device))),
            batch.lengths[order],
            None if batch.condition is None else batch.condition.index_select(
                0, order.to(batch.condition.device)),
            batch.embedding,
            batch.unbatched,
        )  # fmt: skip
        zoneout = [None if z is None else tuple(m.index_select(1, order.to(m.device)) for m in z)
                   for z in zoneout]  # fmt: skip
        output, state, gates = self._forward_layers(sorted_batch, True, record, params, zoneout)
        back = back.to(output.device)
        gates = [{n: g.index_select(1, back) for n, g in layer.items()} for layer in gates]
        return output.index_select(1, back), _map(state, lambda t: t.index_select(1, back)), gates

    def _forward_layers(
        self,
        batch: _Batch,
        fused: bool,
        record: bool,
        params: list[dict[str, Tensor]],
        zoneouts: list[Zoneout | None],
    ) -> tuple[Tensor, State, list[Gates]]:
        """Layer by layer, direction by direction, on the engine or the reference loop, with
        ``params`` (``_forward_params``) and zoneout's keep masks per layer and direction."""
        x, lengths, D = batch.x, batch.lengths, self.num_directions
        T, B = x.shape[0], x.shape[1]
        reverse = _reverse_index(lengths, T, B, x.device) if self.bidirectional else None
        finals: list[State] = []
        gates: list[Gates] = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0:
                x = self._between(x)
            outputs = []
            for d in range(D):
                p = params[k * D + d]
                xd = x if d == 0 else _reverse(x, reverse)
                state = _map(batch.state, lambda t, j=k * D + d: t[j])
                zoneout = zoneouts[k * D + d]
                extra = self._cond(batch, k, d)
                # The scan and IndRNN's C++ loop have no zoneout: a zoned layer of theirs runs
                # the loop below (kernels.regulariser_fallback says so in the training log).
                own_loop = fused and zoneout is None
                engine = fused and self.cell in kernels.STEP_CELLS
                if k == 0 and batch.embedding is not None:
                    u, projected = self._lookup(xd, batch.embedding, p, extra), True
                elif extra is not None or not engine:
                    u, projected = input_projection(self.cell, xd, p, extra), True
                else:
                    u, projected = xd, False  # the engine projects all steps itself
                if own_loop and self.cell in SCAN_CELLS:
                    out, final, g = scan.run_layer(self.cell, u, state, p, lengths, record)
                elif own_loop and self.cell == "indrnn":  # C++ element-wise loop after the one GEMM
                    out, final = kernels.run_indrnn(u, state, p["weight_hh"], p.get("bias"),
                                                    self.nonlinearity, lengths)  # fmt: skip
                    g = {}
                elif engine:
                    weights = kernels.layer_weights(self.cell, p)
                    if projected:
                        weights[0] = weights[4] = None  # applied already: u is the projection
                    args = (self.cell, self.nonlinearity, u, state, weights, lengths, projected,
                            zoneout)  # fmt: skip
                    if record:
                        out, final, g = kernels.trace_layer(*args)
                    else:
                        out, final = kernels.run_layer(*args)
                        g = {}
                else:
                    out, final, g = unroll(self.cell, u, state, p, self.nonlinearity, lengths,
                                           record, zoneout)  # fmt: skip
                if d == 1:
                    out = _reverse(out, reverse)
                    g = {n: _reverse(v, reverse) for n, v in g.items()}
                outputs.append(out)
                finals.append(final)
                gates.append(g)
            x = outputs[0] if D == 1 else torch.cat(outputs, -1)  # (T, B, D*H_out)
        return x, _stack(finals), gates

    def _between(self, x: Tensor) -> Tensor:
        """Dropout between layers of x (T, B, F): per element, or with ``locked_dropout`` one
        mask per sequence shared by every step (Gal & Ghahramani 2016)."""
        if self.locked_dropout:
            return regularisers.locked_dropout(x, self.dropout, self.training)
        return F.dropout(x, self.dropout, self.training)

    def folds_lookup(self, num_tokens: int, vocab_size: int) -> bool:
        """Whether ``forward(ids, embedding=E)`` folds the lookup into layer 0's input projection:
        on the C++ engine (``fused``, or ``auto`` where the engine with the fold is fastest) when
        the batch has more than 2V tokens, where the (V, G) table costs less than projecting every
        token. ``fold_lookup = False`` turns it off (the benchmark's "fused-nofold"). The cells
        without an engine (the LayerNorm cells) fold on ``auto``/``fused`` too: their loop then
        starts from the gathered rows, as the engine would."""
        device = self._device()
        if not (self.fold_lookup and num_tokens > 2 * vocab_size):
            return False
        backend = self.resolved_backend(device, lookup=True)
        if backend == "reference":  # the loop standing in for a missing engine folds as well
            return self.backend in ("auto", "fused") and not kernels.has_engine(self.cell)
        return backend == "fused" and kernels.fused_available(device, _dtype(self))

    def _lookup(
        self, ids: Tensor, table: Tensor, p: dict[str, Tensor], extra: Tensor | None
    ) -> Tensor:
        """Layer 0's projection u of token ids (T, B): through the (V, G) table
        ``input_projection(table)`` when ``folds_lookup``, else token by token."""
        if not self.folds_lookup(ids.numel(), table.shape[0]):
            return input_projection(self.cell, F.embedding(ids, table), p, extra)
        u = F.embedding(ids, input_projection(self.cell, table, p))  # (T, B, G)
        if extra is not None:  # W_ch v enters the W_ih x block only (not MUT's px)
            u = u + F.pad(extra, (0, u.shape[-1] - extra.shape[-1]))
        return u

    def _cond(self, batch: _Batch, k: int, d: int = 0) -> Tensor | None:
        """``W_ch v`` (B, Gx) for layer k, direction d: one GEMM per sequence, broadcast over T."""
        if k != 0 or batch.condition is None:
            return None
        return F.linear(batch.condition, self.layer_params(0, d)["weight_ch"])

    def _forward_native(
        self, x: Tensor, state: State, lengths: Tensor | None, params: list[dict[str, Tensor]]
    ) -> tuple[Tensor, State]:
        """torch's kernels over ``params`` (weight drop applied). Locked dropout between layers
        runs them a layer at a time, the mask drawn here between calls."""
        if self.locked_dropout and self.training and self.dropout > 0 and self.num_layers > 1:
            D, finals = self.num_directions, []
            for k in range(self.num_layers):
                if k > 0:
                    x = self._between(x)
                layer = _map(state, lambda t, k=k: t[k * D : (k + 1) * D])
                x, final = self._native_call(x, layer, lengths, params[k * D : (k + 1) * D], 1)
                finals.append(final)
            if self.cell == "lstm":
                return x, tuple(torch.cat([f[i] for f in finals]) for i in range(2))
            return x, torch.cat(finals)
        return self._native_call(x, state, lengths, params, self.num_layers)

    def _native_call(
        self,
        x: Tensor,
        state: State,
        lengths: Tensor | None,
        params: list[dict[str, Tensor]],
        num_layers: int,
    ) -> tuple[Tensor, State]:
        weights = [w for p in params for name, w in p.items() if name != "weight_ch"]
        args = (self.bias, num_layers, self.dropout, self.training, self.bidirectional)
        fn = {"lstm": torch._VF.lstm, "gru": torch._VF.gru}.get(self.cell) or getattr(
            torch._VF, f"rnn_{self.nonlinearity}"
        )
        hx = list(state) if isinstance(state, tuple) else state
        if lengths is None:
            result = fn(x, hx, weights, *args, False)
            return result[0], (tuple(result[1:]) if self.cell == "lstm" else result[1])
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        order, back = packed.sorted_indices, packed.unsorted_indices
        hx = [t.index_select(1, order) for t in hx] if self.cell == "lstm" else hx.index_select(
            1, order)  # fmt: skip
        result = fn(packed.data, packed.batch_sizes, hx, weights, *args)
        out = PackedSequence(result[0], packed.batch_sizes, order, back)
        output, _ = pad_packed_sequence(out, total_length=x.shape[0])
        finals = tuple(t.index_select(1, back) for t in result[1:])
        return output, (finals if self.cell == "lstm" else finals[0])

    # -- shapes -------------------------------------------------------------------------------

    def _batch(
        self,
        input: Tensor,
        hx: State | None,
        lengths: Tensor | None,
        condition: Tensor | None,
        embedding: Tensor | None,
        time_major: bool = False,
    ) -> _Batch:
        """Validate every argument (ShapeError naming it) and make the input time-major."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input: expected a tensor, got {type(input).__name__}")
        lookup = embedding is not None
        feature = 0 if lookup else 1  # token ids have no feature dimension
        layout = "(B, T)" if self.batch_first else "(T, B)"
        if not lookup:
            layout = layout[:-1] + ", I)"
        if input.dim() not in (1 + feature, 2 + feature):
            raise ShapeError(
                f"input: expected {1 + feature}-D (T{', I' if feature else ''}) or "
                f"{2 + feature}-D {layout}, got {input.dim()}-D of shape {tuple(input.shape)}"
            )
        if lookup:
            if input.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                raise TypeError(f"input: expected token ids with embedding=, got {input.dtype}")
            if embedding.dim() != 2 or embedding.shape[1] != self.input_size:
                raise ShapeError(f"embedding: expected (V, {self.input_size}), "
                                 f"got {tuple(embedding.shape)}")  # fmt: skip
        elif input.dtype != _dtype(self):  # torch.nn raises a ValueError here too
            want = _dtype(self)
            raise ShapeError(f"input: expected dtype {want}, got {input.dtype}; convert the "
                             f"input (.to({want})) or the module (.to(dtype))")  # fmt: skip
        elif input.shape[-1] != self.input_size:
            raise ShapeError(f"input: expected size {self.input_size} in the last dimension, "
                             f"got {input.shape[-1]}")  # fmt: skip
        unbatched = input.dim() == 1 + feature
        x = input.unsqueeze(1) if unbatched else input
        if self.batch_first and not unbatched and not time_major:
            x = x.transpose(0, 1)
        T, B = x.shape[0], x.shape[1]
        if T == 0:
            raise ShapeError("input: expected a sequence length larger than 0, got 0 steps")
        return _Batch(
            x,
            self._state(hx, B, unbatched, x),
            self._lengths(lengths, T, B, unbatched),
            self._condition(condition, B, unbatched),
            embedding,
            unbatched,
        )

    def _state(self, hx: State | None, B: int, unbatched: bool, like: Tensor) -> State:
        if hx is None:
            return self.initial_state(B, like if like.is_floating_point() else _zero(self))
        lstm = self._has_cell_state()
        if lstm != isinstance(hx, tuple) or (lstm and len(hx) != 2):
            kind = "a tuple (h_0, c_0)" if lstm else "a tensor h_0"
            raise ShapeError(f"hx: expected {kind} for cell {self.cell!r}, got {type(hx).__name__}")
        LD = self.num_layers * self.num_directions
        sizes = (self.proj_size or self.hidden_size, self.hidden_size)
        for name, t, size in zip(("h_0", "c_0"), _parts(hx), sizes, strict=False):
            want = (LD, size) if unbatched else (LD, B, size)
            if tuple(t.shape) != want:
                raise ShapeError(f"hx: expected {name} of shape {want}, got {tuple(t.shape)}")
        return _map(hx, lambda t: t.unsqueeze(1)) if unbatched else hx

    def _lengths(self, lengths: Tensor | None, T: int, B: int, unbatched: bool) -> Tensor | None:
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths)
        if unbatched or lengths.shape != (B,) or lengths.is_floating_point():
            raise ShapeError(f"lengths: expected {B} integer lengths (B,) for a batched input, "
                             f"got shape {tuple(lengths.shape)} {lengths.dtype}")  # fmt: skip
        lengths = lengths.to("cpu", torch.int64)
        if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
            raise ShapeError(f"lengths: expected each in 1..{T} (the padded length), got "
                             f"{int(lengths.min())}..{int(lengths.max())}")  # fmt: skip
        return lengths

    def _condition(self, condition: Tensor | None, B: int, unbatched: bool) -> Tensor | None:
        C = self.condition_size
        if condition is None:
            if C:
                raise ShapeError(f"condition: this Recurrent has condition_size={C}; "
                                 f"pass condition=(B, {C})")  # fmt: skip
            return None
        if not C:
            raise ShapeError("condition: given, but this Recurrent has condition_size=0")
        want = (C,) if unbatched else (B, C)
        if tuple(condition.shape) != want:
            raise ShapeError(f"condition: expected shape {want}, got {tuple(condition.shape)}")
        return condition.unsqueeze(0) if unbatched else condition

    def _layout(self, y: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    def _finish(self, output: Tensor, state: State, unbatched: bool) -> tuple[Tensor, State]:
        output = self._layout(output, unbatched)
        return output, (_map(state, lambda t: t.squeeze(1)) if unbatched else state)

    def extra_repr(self) -> str:
        s = f"{self.cell!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        nonlinearity = "relu" if self.cell == "indrnn" else "tanh"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0),
                              ("nonlinearity", nonlinearity), ("condition_size", 0),
                              ("recurrent_max_abs", None)):  # fmt: skip
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        for name in ("zoneout", "zoneout_cell", "weight_drop", "locked_dropout"):
            if getattr(self, name) and (name != "zoneout_cell" or self._has_c):
                s += f", {name}={getattr(self, name)!r}"
        return s + f", backend={self.backend!r}"


# ---------------------------------------------------------------------------------------------
# The drop-ins: torch.nn's exact constructor signatures (positional order included).
# ---------------------------------------------------------------------------------------------


class RNN(Recurrent):
    """``torch.nn.RNN``'s signature on rnnlab's engine: ``RNN(input_size, hidden_size,
    num_layers=1, nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None)``, plus rnnlab's keyword-only options."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,  # noqa: ANN001
                 **options) -> None:  # fmt: skip
        super().__init__("rnn", input_size, hidden_size, num_layers=num_layers,
                         nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                         dropout=dropout, bidirectional=bidirectional, device=device,
                         dtype=dtype, **options)  # fmt: skip


class LSTM(Recurrent):
    """``torch.nn.LSTM``'s signature: ``LSTM(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None)``,
    plus rnnlab's keyword-only options. The one intended difference: the forget-gate bias starts
    at 1.0; ``forget_bias=None`` gives torch's init bit for bit."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        **options,
    ) -> None:  # noqa: ANN001
        super().__init__("lstm", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout, bidirectional=bidirectional,
                         proj_size=proj_size, device=device, dtype=dtype, **options)  # fmt: skip


class _GRUStyle(Recurrent):
    """``torch.nn.GRU``'s signature: ``(input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)``."""

    cell_name = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **options,
    ) -> None:  # noqa: ANN001
        super().__init__(self.cell_name, input_size, hidden_size, num_layers=num_layers,
                         bias=bias, batch_first=batch_first, dropout=dropout,
                         bidirectional=bidirectional, device=device, dtype=dtype,
                         **options)  # fmt: skip


class GRU(_GRUStyle):
    """``torch.nn.GRU`` on rnnlab's engine (Cho et al. 2014, torch's gate order r, z, n)."""


class MUT1(_GRUStyle):
    """MUT1 (Jozefowicz et al. 2015) in ``torch.nn.GRU``'s constructor style."""

    cell_name = "mut1"


class MUT2(_GRUStyle):
    """MUT2 (Jozefowicz et al. 2015) in ``torch.nn.GRU``'s constructor style."""

    cell_name = "mut2"


class MUT3(_GRUStyle):
    """MUT3 (Jozefowicz et al. 2015) in ``torch.nn.GRU``'s constructor style."""

    cell_name = "mut3"


class MinGRU(_GRUStyle):
    """minGRU (Feng et al. 2024) in ``torch.nn.GRU``'s constructor style (state h alone)."""

    cell_name = "mingru"


class MinLSTM(_GRUStyle):
    """minLSTM (Feng et al. 2024) in ``torch.nn.GRU``'s constructor style (state h alone: the
    minimal LSTM has no separate cell state)."""

    cell_name = "minlstm"


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _check_arguments(
    cell,
    input_size,
    hidden_size,
    num_layers,
    bias,
    batch_first,
    dropout,  # noqa: ANN001
    bidirectional,
    proj_size,
    nonlinearity,
    condition_size,
    backend,
) -> None:  # noqa: ANN001
    """torch.nn's checks and exception types (TypeError for a wrong type, ValueError for a
    wrong value), plus rnnlab's options."""
    for name, value, least in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                               ("num_layers", num_layers, 1), ("proj_size", proj_size, 0),
                               ("condition_size", condition_size, 0)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
        if value < least:
            raise ValueError(f"{name}: expected {'a positive' if least else 'a non-negative'} "
                             f"integer, got {value}")  # fmt: skip
    for name, value in (("bias", bias), ("batch_first", batch_first),
                        ("bidirectional", bidirectional)):  # fmt: skip
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
            or not 0 <= dropout <= 1):  # fmt: skip
        raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {'|'.join(BACKENDS)}, got {backend!r}")
    if backend == "native" and cell not in NATIVE_CELLS:
        raise ValueError(f"backend: 'native' supports {'|'.join(NATIVE_CELLS)} only, got cell "
                         f"{cell!r}; use 'fused' or 'reference'")  # fmt: skip
    if backend == "native" and condition_size:
        raise ValueError("backend: 'native' takes no condition (torch's kernels have no W_ch v "
                         "term); use 'fused' or 'reference'")  # fmt: skip
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    if cell not in NONLINEAR_CELLS and nonlinearity != "tanh":
        raise ValueError(f"nonlinearity: only the {' and '.join(NONLINEAR_CELLS)} cells take "
                         f"one, got {nonlinearity!r} for cell {cell!r}")  # fmt: skip
    if proj_size and cell != "lstm":
        raise ValueError(f"proj_size: only the lstm cell has projections, got cell {cell!r}")
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size: expected less than hidden_size ({hidden_size}), "
                         f"got {proj_size}")  # fmt: skip


def _reverse_index(lengths: Tensor | None, T: int, B: int, device: torch.device) -> Tensor | None:
    """(T, B) time index reversing each sequence within its own length (None: flip all T)."""
    if lengths is None:
        return None
    t = torch.arange(T).unsqueeze(1)  # (T, 1)
    n = lengths.unsqueeze(0)  # (1, B)
    return torch.where(t < n, n - 1 - t, t).to(device)


def _reverse(x: Tensor, index: Tensor | None) -> Tensor:
    """x (T, B, ...) with every sequence reversed in time (an involution)."""
    if index is None:
        return x.flip(0)
    shape = index.shape + (1,) * (x.dim() - 2)
    return x.gather(0, index.view(shape).expand_as(x))


def _pack_like(output: Tensor, lengths: Tensor, packed: PackedSequence) -> PackedSequence:
    """output (T, B, H) in the caller's batch order as a PackedSequence laid out like ``packed``."""
    order = packed.sorted_indices
    if order is not None:
        output, lengths = output.index_select(1, order), lengths[order.cpu()]
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


# Recurrent.step with reduced-precision weights reads them as such up to this many rows (streams).
LOW_PRECISION_MAX_ROWS = 8


def _cast_matrices(
    weights: list[list[Tensor | None]], dtype: torch.dtype, widen: bool = False
) -> list[list[Tensor | None]]:
    """Each layer's weight slots with the matrices (2-D) rounded to ``dtype`` (and, with
    ``widen``, back to their own dtype: the rounded values in full precision); biases as they
    are."""

    def cast(w: Tensor) -> Tensor:
        return w.to(dtype).to(w.dtype) if widen else w.to(dtype)

    return [[cast(w) if w is not None and w.dim() == 2 else w for w in layer] for layer in weights]


def _parts(state: State) -> tuple[Tensor, ...]:
    return state if isinstance(state, tuple) else (state,)


def _map(state: State, fn) -> State:  # noqa: ANN001
    return tuple(fn(t) for t in state) if isinstance(state, tuple) else fn(state)


def _stack(states: list[State]) -> State:
    if isinstance(states[0], tuple):
        return torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])
    return torch.stack(states)  # type: ignore[arg-type]


def _dtype(module: Recurrent) -> torch.dtype:
    return getattr(module, module._layer_names[0]["weight_ih"]).dtype


def _zero(module: Recurrent) -> Tensor:
    w = getattr(module, module._layer_names[0]["weight_ih"])
    return w.new_zeros(())
