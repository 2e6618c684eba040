"""Gradient flow: the one-unit analytic case, vanilla RNN vs LSTM decay, sigma_max, clip events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnlab.analysis.gradients import (
    clip_events,
    hidden_gradient_norms,
    largest_singular_values,
    one_unit_gradients,
)
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.recurrent import Recurrent


@pytest.mark.parametrize("w", [0.5, 0.9, -0.95, 1.1, 1.5])
def test_one_unit_is_w_to_the_distance(w):
    got = one_unit_gradients(w, 40)
    expected = abs(w) ** np.arange(41)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    if abs(w) < 1:
        assert got[-1] < 0.2  # vanishes
    else:
        assert got[-1] > 40  # explodes


def test_vanilla_rnn_vanishes_faster_than_lstm_at_init():
    torch.manual_seed(0)
    decay = {}
    for cell in ("rnn", "lstm"):
        rnn = Recurrent(cell, 32, 64, backend="reference")
        decay[cell] = hidden_gradient_norms(rnn, steps=51, batch=4).decay(50)
    assert decay["lstm"] / decay["rnn"] >= 100


def test_charlm_flow_matches_a_manual_backward():
    torch.manual_seed(1)
    model = CharLM(CharLMConfig(6, "gru", hidden_size=8, num_layers=2, backend="reference"))
    ids = torch.randint(0, 6, (3, 13))
    flow = hidden_gradient_norms(model, steps=12, ids=ids)
    assert flow.norms.shape == (12, 2)
    # the gradient with respect to the last state equals the head's direct gradient
    x = model.embedding(ids[:, :12])
    out, state = model.rnn(x)
    h_last = state.detach().requires_grad_(True)
    logits = model.head(h_last[-1])
    loss = torch.nn.functional.cross_entropy(logits, ids[:, 12], reduction="sum")
    (g,) = torch.autograd.grad(loss, h_last)
    np.testing.assert_allclose(flow.norms[-1, 1], g[1].norm(dim=-1).mean().item(), rtol=1e-5)
    assert flow.norms[-1, 0] == 0.0  # layer 0's last state reaches the loss only through layer 1's
    assert flow.by_distance()[0, 1] == flow.norms[-1, 1]


def test_singular_values_and_clip_events():
    rnn = Recurrent("lstm", 3, 4, num_layers=2)
    with torch.no_grad():
        rnn.weight_hh_l0.zero_()
        rnn.weight_hh_l0[4:8] = 2.0 * torch.eye(4)  # the f block
    sv = largest_singular_values(rnn)
    assert sv[0]["W_hh"] == pytest.approx(2.0)
    assert sv[0]["f"] == pytest.approx(2.0) and sv[0]["i"] == 0.0
    assert len(sv) == 2
    records = [{"step": 1, "grad_norm": 1.0}, {"step": 2, "grad_norm": 9.0}, {"step": 3}]
    assert clip_events(records, 5.0) == [2]
    assert clip_events(records, 0.0) == []
