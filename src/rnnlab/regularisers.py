"""The regularisers of the best recurrent language models, as pure functions of tensors.

AWD-LSTM (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models") puts
four kinds of dropout around a recurrent stack; zoneout (Krueger et al. 2016) is a fifth. Each is
written once here, by state and by weight rather than per cell, so every cell gets them:

- ``zoneout_masks``: zoneout's keep masks for a layer's state parts (h, and c for the LSTM);
  ``rnnlab.cells.unroll`` and the C++ engine blend ``m * previous + (1 - m) * new``.
- ``drop_weight``: DropConnect (Wan et al. 2013) on a recurrent matrix, one mask per forward pass
  shared by every time step (AWD-LSTM's weight drop on ``weight_hh``).
- ``locked_dropout``: variational dropout (Gal & Ghahramani 2016): one mask per sequence and
  feature, the same at every time step.
- ``embedding_dropout``: whole rows of an embedding matrix (a token's vector) dropped (Gal &
  Ghahramani 2016, as AWD-LSTM's ``embedded_dropout``).

All are inverted (kept values scaled by 1/(1-p), so eval needs no rescaling) and the identity in
eval mode, except zoneout, whose eval mask is the rate itself (the expectation of the training
mask). Randomness comes from torch's generator of the tensor's device, so a seeded run (and a run
resumed with its RNG state) draws the very same masks.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def check_rate(name: str, value: object) -> float:
    """A dropout rate ``value`` as a float in [0, 1); ValueError naming ``name`` otherwise (at 1
    everything is dropped and the scaling 1/(1-p) is undefined)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def check_zoneout(name: str, value: object) -> float:
    """A zoneout rate in [0, 1] (1 keeps the previous state at every step); ValueError naming
    ``name`` otherwise."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def zoneout_masks(
    steps: int, parts: tuple[Tensor, ...], rates: tuple[float, ...], training: bool
) -> tuple[Tensor, ...] | None:
    """Keep masks (T, B, H_part), one per state part (each like its part (B, H_part)), or None
    when every rate is 0. Training: Bernoulli(rate) per unit per step (1 keeps the previous
    value); eval: the rate (the expectation, Krueger et al. 2016, section 3)."""
    if not any(rates):
        return None
    masks = []
    for part, rate in zip(parts, rates, strict=True):
        mask = part.new_full((steps, *part.shape), rate)
        masks.append(torch.bernoulli(mask) if training and 0 < rate < 1 else mask)
    return tuple(masks)


def zoneout_expectation(
    new: tuple[Tensor, ...], old: tuple[Tensor, ...], rates: tuple[float, ...]
) -> tuple[Tensor, ...]:
    """Zoneout at eval for one step: ``rate * old + (1 - rate) * new`` per state part (what
    ``zoneout_masks`` gives in eval mode, for code that steps the cells' equations itself)."""
    return tuple(r * o + (1 - r) * n if r else n for n, o, r in zip(new, old, rates, strict=True))


def drop_weight(weight: Tensor, p: float, training: bool) -> Tensor:
    """DropConnect on a weight: each entry zeroed with probability p, the rest scaled by 1/(1-p);
    one mask for the whole forward pass (every step multiplies by the same dropped matrix).
    Differentiable with respect to ``weight``; ``weight`` itself in eval mode or at p = 0."""
    if not training or p == 0:
        return weight
    return torch.nn.functional.dropout(weight, p, True)


def locked_dropout(x: Tensor, p: float, training: bool, time_dim: int = 0) -> Tensor:
    """Variational dropout of x (T, B, F) (``time_dim=1``: (B, T, F)): one mask (1, B, F) (or
    (B, 1, F)), scaled by 1/(1-p), shared by every time step of a sequence. ``x`` itself in eval
    mode or at p = 0."""
    if not training or p == 0:
        return x
    shape = list(x.shape)
    shape[time_dim] = 1
    keep = x.new_empty(shape).bernoulli_(1 - p) / (1 - p)
    return x * keep


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """An embedding matrix (V, E) with whole rows zeroed with probability p and the rest scaled
    by 1/(1-p): a dropped token's vector is 0 wherever it occurs in the batch. ``weight`` itself
    in eval mode or at p = 0."""
    if not training or p == 0:
        return weight
    keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
    return weight * keep
