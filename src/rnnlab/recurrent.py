"""Recurrent: a stack of cells run over time, a drop-in for torch.nn.RNN / LSTM / GRU.

Input (T, B, I), or (B, T, I) with ``batch_first=True``, or unbatched (T, I). Returns
``(output, state)``: output (T, B, H) (or as the input's layout) is the top layer's h at every step;
state is ``h_n`` (L, B, H), or ``(h_n, c_n)`` for the LSTM, (L, H) when unbatched. Parameters are
flat and named as torch.nn's (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
...), so ``load_state_dict`` crosses between ``Recurrent("lstm", ...)`` and ``nn.LSTM`` both ways.

Backends compute the same function:

- ``reference``: a readable Python loop over the cell's step equations (the lecture's unrolled
  graph).
- ``native``: torch's own RNN/LSTM/GRU kernels (oneDNN / cuDNN) over our parameters; rnn/lstm/gru.
- ``fused``: rnnlab's engine (``rnnlab.kernels``) for every cell, MUT1-3 included.
- ``auto``: the fastest backend proven equal for this cell and device.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from rnnlab.cells import Gates, State, cell_class, step_function

BACKENDS = ("auto", "reference", "native", "fused")
NATIVE_CELLS = ("rnn", "lstm", "gru")


class Recurrent(nn.Module):
    """A multilayer recurrent network of any rnnlab cell.

    Args:
        cell: ``rnn | lstm | gru | mut1 | mut2 | mut3``.
        input_size, hidden_size, num_layers, bias, dropout, batch_first: as in torch.nn.LSTM;
            ``dropout`` applies to the outputs of every layer but the last, in training mode.
        backend: ``auto | reference | native | fused`` (see the module docstring).
        nonlinearity: ``tanh`` or ``relu``, for the vanilla RNN only.
        forget_bias: initial LSTM forget-gate bias (default 1.0; None keeps torch's init).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
        backend: str = "auto",
        nonlinearity: str = "tanh",
        forget_bias: float | None = 1.0,
    ) -> None:
        super().__init__()
        cls = cell_class(cell)
        for arg, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{arg}: expected a positive integer, got {value!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {'|'.join(BACKENDS)}, got {backend!r}")
        if backend == "native" and cls.name not in NATIVE_CELLS:
            raise ValueError(
                f"backend: 'native' supports {'|'.join(NATIVE_CELLS)} only, "
                f"got cell {cls.name!r}; use 'fused' or 'reference'"
            )
        if cls.name != "rnn" and nonlinearity != "tanh":
            raise ValueError(
                f"nonlinearity: only the rnn cell takes one, got {nonlinearity!r} "
                f"for cell {cls.name!r}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout > 0 with num_layers=1 has no effect: dropout applies between layers",
                stacklevel=2,
            )
        if cls.name == "rnn" and nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        # The same pure step equations the cell modules use (one implementation of each cell).
        self._step = step_function(cls.name, nonlinearity)
        for k in range(num_layers):
            in_k = input_size if k == 0 else hidden_size
            for name, shape in cls.parameter_shapes(in_k, hidden_size, bias).items():
                self.register_parameter(f"{name}_l{k}", nn.Parameter(torch.empty(shape)))
        self.cell = cls.name
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.backend = backend
        self.nonlinearity = nonlinearity
        self.forget_bias = forget_bias
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------------

    def layer_params(self, k: int) -> dict[str, Tensor]:
        """Layer k's parameters under the cell's own names (``weight_ih``, ...)."""
        suffix = f"_l{k}"
        return {n[: -len(suffix)]: p for n, p in self.named_parameters() if n.endswith(suffix)}

    def reset_parameters(self) -> None:
        cls = cell_class(self.cell)
        for k in range(self.num_layers):
            opts = {"forget_bias": self.forget_bias} if self.cell == "lstm" else {}
            cls.init_parameters(self.layer_params(k), self.hidden_size, **opts)

    # -- forward ------------------------------------------------------------------------------

    def resolved_backend(self, device: torch.device | None = None) -> str:
        """The backend ``forward`` will use: ``auto`` resolved for this cell and device."""
        if self.backend != "auto":
            return self.backend
        from rnnlab.kernels import choose_backend  # the engine decides what is fastest

        device = device or next(self.parameters()).device
        return choose_backend(self.cell, self.hidden_size, device)

    def forward(self, input: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        x, state, unbatched = self._prepare(input, state)  # x: (T, B, I); state: (L, B, H)
        backend = self.resolved_backend(x.device)
        if backend == "native":
            output, new_state = self._forward_native(x, state)
        elif backend == "fused":
            from rnnlab.kernels import run_layers

            output, new_state = run_layers(self, x, state)
        else:
            output, new_state, _ = self._forward_reference(x, state, record=False)
        return self._finish(output, new_state, unbatched)

    def trace(
        self, input: Tensor, state: State | None = None
    ) -> tuple[Tensor, State, list[dict[str, Tensor]]]:
        """Like forward (reference backend), plus every gate of every layer at every step:
        ``gates[k][name]`` is (T, B, H) (unbatched: (T, H); batch_first: (B, T, H))."""
        x, state, unbatched = self._prepare(input, state)
        output, new_state, gates = self._forward_reference(x, state, record=True)
        output, new_state = self._finish(output, new_state, unbatched)
        layout = [{n: self._layout(g, unbatched) for n, g in layer.items()} for layer in gates]
        return output, new_state, layout

    def initial_state(self, batch: int, like: Tensor) -> State:
        """Zeros: (L, B, H), or a pair of them for the LSTM."""
        h = like.new_zeros(self.num_layers, batch, self.hidden_size)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else h

    def _forward_reference(
        self, x: Tensor, state: State, record: bool
    ) -> tuple[Tensor, State, list[dict[str, Tensor]]]:
        finals: list[State] = []
        gates: list[dict[str, Tensor]] = []
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            p = self.layer_params(k)
            s = _layer_state(state, k)
            outputs: list[Tensor] = []
            steps: list[Gates] = []
            for t in range(x.shape[0]):
                s, g = self._step(x[t], s, p)  # the lecture's unrolled graph, one step at a time
                outputs.append(s[0] if isinstance(s, tuple) else s)
                if record:
                    steps.append(g)
            x = torch.stack(outputs)  # (T, B, H)
            finals.append(s)
            if record:
                gates.append({n: torch.stack([g[n] for g in steps]) for n in steps[0]})
        return x, _stack_states(finals), gates

    def _forward_native(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        weights = [p for _, p in self.named_parameters()]  # torch's order: ih, hh, b_ih, b_hh
        args = (self.bias, self.num_layers, self.dropout, self.training, False, False)
        if self.cell == "lstm":
            output, h_n, c_n = torch._VF.lstm(x, state, weights, *args)
            return output, (h_n, c_n)
        fn = torch._VF.gru if self.cell == "gru" else getattr(torch._VF, f"rnn_{self.nonlinearity}")
        output, h_n = fn(x, state, weights, *args)
        return output, h_n

    # -- shapes -------------------------------------------------------------------------------

    def _prepare(self, input: Tensor, state: State | None) -> tuple[Tensor, State, bool]:
        if not isinstance(input, Tensor):
            raise ValueError(f"input: expected a tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input: expected a 2-D (T, I) or 3-D "
                f"{'(B, T, I)' if self.batch_first else '(T, B, I)'} tensor, "
                f"got {input.dim()}-D of shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"input: expected size {self.input_size} in the last dimension, "
                f"got {input.shape[-1]}"
            )
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input
        if self.batch_first and not unbatched:
            x = x.transpose(0, 1)
        B = x.shape[1]
        if state is None:
            return x, self.initial_state(B, x), unbatched
        expected = (
            (self.num_layers, self.hidden_size)
            if unbatched
            else (self.num_layers, B, self.hidden_size)
        )
        parts = state if isinstance(state, tuple) else (state,)
        if (self.cell == "lstm") != isinstance(state, tuple) or len(parts) not in (1, 2):
            kind = "a tuple (h_0, c_0)" if self.cell == "lstm" else "a tensor h_0"
            raise ValueError(
                f"state: expected {kind} for cell {self.cell!r}, got {type(state).__name__}"
            )
        for name, t in zip(("h_0", "c_0"), parts, strict=False):
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"state: expected {name} of shape {expected}, got {tuple(t.shape)}"
                )
        if unbatched:
            state = tuple(t.unsqueeze(1) for t in parts) if len(parts) == 2 else parts[0][:, None]
        return x, state, unbatched

    def _layout(self, y: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    def _finish(self, output: Tensor, state: State, unbatched: bool) -> tuple[Tensor, State]:
        output = self._layout(output, unbatched)
        if unbatched:
            state = tuple(t.squeeze(1) for t in state) if isinstance(state, tuple) else state[:, 0]
        return output, state

    def extra_repr(self) -> str:
        return (
            f"{self.cell!r}, {self.input_size}, {self.hidden_size}, "
            f"num_layers={self.num_layers}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}, backend={self.backend!r}"
        )


def _layer_state(state: State, k: int) -> State:
    return (state[0][k], state[1][k]) if isinstance(state, tuple) else state[k]


def _stack_states(states: list[State]) -> State:
    if isinstance(states[0], tuple):
        return torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])
    return torch.stack(states)  # type: ignore[arg-type]
