"""CharLM: shapes, the one-step sampling path against the full forward, weight tying, errors."""

import pytest
import torch

from rnnlab.cells import CELLS
from rnnlab.models import CharLM, CharLMConfig


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_equals_forward(cell):
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(11, cell=cell, hidden_size=12, num_layers=2)).eval()
    idx = torch.randint(0, 11, (3, 6))
    full, state_full = model(idx)
    state = None
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=0, atol=1e-5)
    for a, b in zip(
        state if isinstance(state, tuple) else (state,),
        state_full if isinstance(state_full, tuple) else (state_full,),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_shapes_and_explicit_state():
    model = CharLM(CharLMConfig(7, hidden_size=8, num_layers=3, embedding_size=5))
    logits, (h, c) = model(torch.zeros(2, 4, dtype=torch.long))
    assert logits.shape == (2, 4, 7) and h.shape == (3, 2, 8) and c.shape == (3, 2, 8)
    h0 = model.initial_state(2)
    assert h0[0].shape == (3, 2, 8) and not h0[0].any()


def test_tied_weights_share_one_matrix():
    model = CharLM(CharLMConfig(9, hidden_size=8, tie_weights=True))
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    with pytest.raises(ValueError, match="tie_weights: needs embedding_size == hidden_size"):
        CharLMConfig(9, hidden_size=8, embedding_size=4, tie_weights=True)


def test_bad_arguments():
    with pytest.raises(ValueError, match="cell: expected one of"):
        CharLMConfig(9, cell="transformer")
    with pytest.raises(ValueError, match="vocab_size: expected a positive integer"):
        CharLMConfig(0)
    with pytest.raises(ValueError, match=r"idx: expected a 2-D \(B, T\) tensor"):
        CharLM(CharLMConfig(9, hidden_size=8))(torch.zeros(4, dtype=torch.long))
