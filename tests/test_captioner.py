"""Captioner: shapes, step == forward for every cell and conditioning, ln(V) at init, end-to-end
gradients, beam 1 == greedy, and overfitting a handful of pairs to exact captions (which then
differ between images of different content) in each conditioning mode and with attention."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlab import cells
from rnnlab.models.captioner import Captioner, CaptionerConfig, caption_loss, generate_captions

CELLS = list(cells.CELLS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**kw) -> Captioner:
    base = dict(
        vocab_size=12,
        embedding_size=8,
        hidden_size=16,
        image_size=16,
        cnn_channels=4,
        cnn_blocks=2,
        feature_size=12,
    )
    return Captioner(CaptionerConfig(**{**base, **kw}))


def images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    ("conditioning", "attention"),
    [("step", False), ("init", False), ("step", True), ("init", True)],
)
def test_step_equals_teacher_forced_forward(cell, conditioning, attention):
    torch.manual_seed(0)
    model = tiny(cell=cell, conditioning=conditioning, attention=attention, num_layers=2).eval()
    x, tokens = images(), torch.randint(0, 12, (3, 6))
    with torch.no_grad():
        full = model(x, tokens).log_softmax(-1)  # (B, T, V)
        state, steps = model.start(x), []
        for t in range(tokens.shape[1]):
            logprobs, state = model.step(tokens[:, t], state)
            steps.append(logprobs)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=2e-5, rtol=1e-4)


def test_conditionings_use_their_parameters():
    step = tiny(conditioning="step")
    assert step.rnn.weight_ch_l0.shape == (4 * 16, 12) and not hasattr(step, "init_state")
    init = tiny(conditioning="init", cell="gru", num_layers=2)
    assert init.rnn.condition_size == 0 and init.init_state.out_features == 2 * 16
    state = init.start(images())
    assert state.rnn.shape == (2, 3, 16) and state.rnn.abs().sum() > 0


def test_initial_loss_is_about_log_vocab():
    torch.manual_seed(0)
    model = tiny(vocab_size=50, hidden_size=32)
    tokens = torch.randint(4, 50, (8, 9))
    loss = caption_loss(model(images(8), tokens[:, :-1]), tokens[:, 1:])
    assert abs(loss.item() - math.log(50)) < 0.3


def test_gradients_reach_the_cnn_and_every_decoder_part():
    torch.manual_seed(0)
    for attention in (False, True):
        model = tiny(attention=attention)
        tokens = torch.randint(4, 12, (3, 5))
        caption_loss(model(images(), tokens[:, :-1]), tokens[:, 1:]).backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert not missing, missing


def test_image_rows_equal_repeated_images():
    torch.manual_seed(0)
    model = tiny(attention=True).eval()
    x, tokens = images(2), torch.randint(0, 12, (5, 4))
    rows = torch.tensor([0, 0, 1, 1, 1])
    torch.testing.assert_close(model(x, tokens, rows), model(x[rows], tokens))
    with pytest.raises(ValueError, match="one per image"):
        model(x, tokens)


def test_precomputed_features_vectors_and_grids():
    torch.manual_seed(0)
    vectors = tiny(encoder="features", feature_size=10)
    assert vectors.encoder is None
    out = vectors(torch.randn(3, 10), torch.randint(0, 12, (3, 4)))
    assert out.shape == (3, 4, 12)
    grids = tiny(encoder="features", feature_size=10, attention=True)
    assert grids(torch.randn(3, 7, 10), torch.randint(0, 12, (3, 4))).shape == (3, 4, 12)
    with pytest.raises(ValueError, match="attention needs a grid"):
        grids.start(torch.randn(3, 10))
    with pytest.raises(ValueError, match=r"features: expected \(B, 10\)"):
        vectors.start(torch.randn(3, 11))
    with pytest.raises(ValueError, match=r"images: expected \(B, 3, 16, 16\)"):
        tiny().start(images(2, size=20))


@pytest.mark.parametrize("conditioning", ["step", "init"])
def test_beam_one_equals_greedy_and_sampling_is_seeded(conditioning):
    torch.manual_seed(1)
    model = tiny(conditioning=conditioning, attention=conditioning == "init")
    x = images(6)
    greedy = generate_captions(model, x, max_length=7)
    assert generate_captions(model, x, max_length=7, beam=1) == greedy
    assert all(len(c) <= 7 for c in greedy)
    a = generate_captions(
        model, x, max_length=7, temperature=1.0, generator=torch.Generator().manual_seed(3)
    )
    b = generate_captions(
        model, x, max_length=7, temperature=1.0, generator=torch.Generator().manual_seed(3)
    )
    assert a == b


def overfit(model: Captioner, x: torch.Tensor, captions: list[list[int]], steps: int) -> None:
    """Teacher forcing on a handful of pairs until the model has memorised them."""
    T = max(map(len, captions)) + 2
    ids = torch.tensor([[1, *c, 2] + [0] * (T - len(c) - 2) for c in captions])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = caption_loss(model(x, ids[:, :-1]), ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


# Four images, four different captions: shared words, different orders and lengths.
CAPTIONS = [[4, 5, 6], [4, 7, 8, 9, 5], [10, 6, 5, 11], [7, 7, 4]]


@pytest.mark.parametrize(
    ("cell", "conditioning", "attention"),
    [
        ("lstm", "step", False),
        ("gru", "init", False),
        ("lstm", "init", True),
        ("mut1", "step", True),
    ],
)
def test_overfits_a_handful_of_pairs_to_exact_captions(cell, conditioning, attention):
    torch.manual_seed(0)
    model = tiny(cell=cell, conditioning=conditioning, attention=attention, hidden_size=32)
    x = images(4, seed=5)
    overfit(model, x, CAPTIONS, steps=150)
    assert generate_captions(model, x, max_length=8) == CAPTIONS
    assert generate_captions(model, x, max_length=8, beam=3) == CAPTIONS
    # Different images, different captions: the decoder reads the image, not a prior.
    assert len({tuple(c) for c in generate_captions(model, x, max_length=8)}) == 4


def test_attention_maps_are_distributions_per_word():
    from rnnlab.models.captioner import attention_maps

    torch.manual_seed(0)
    model = tiny(attention=True)
    x = images(2)
    maps = attention_maps(model, x, [[4, 5, 6], [7]])
    assert [tuple(m.shape) for m in maps] == [(4, 64), (2, 64)]  # words + <end>, K = 8 x 8
    for m in maps:
        torch.testing.assert_close(m.sum(1), torch.ones(len(m)))
    # The first row is what produced the first word: equal to attention before any step.
    state = model.eval().start(x[:1])
    torch.testing.assert_close(maps[0][0], model.attention_weights(state)[0])
    with pytest.raises(ValueError, match="no attention"):
        attention_maps(tiny(), x, [[4]])
