"""VQAModel: fusion and stacked attention against the equations written out, padding and image
sharing change nothing, and a tiny model learns a tiny set whose answers need both inputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rnnlab.cells import ShapeError
from rnnlab.models.vqa import VQAConfig, VQAModel
from rnnlab.validation import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def model(**changes: Any) -> VQAModel:
    fields = dict(vocab_size=12, num_answers=5, embedding_size=6, hidden_size=8, image_size=8,
                  cnn_channels=4, cnn_blocks=2, feature_size=10, fusion_size=7, attention_size=5,
                  mlp_size=9)  # fmt: skip
    torch.manual_seed(0)
    return VQAModel(VQAConfig(**{**fields, **changes})).eval()


def inputs(B: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (B, 3, 8, 8), generator=g, dtype=torch.uint8)
    ids = torch.randint(2, 12, (B, 5), generator=g)
    lengths = torch.tensor([5, 3, 1][:B])
    for i, n in enumerate(lengths.tolist()):
        ids[i, n:] = 0
    return images, ids, lengths


@pytest.mark.parametrize("changes", [{}, {"fusion": "product"}, {"attention_layers": 2},
                                     {"bidirectional": True, "cell": "gru", "num_layers": 2},
                                     {"encoder": "none"}, {"cell": "mut1"},
                                     *({"cell": c, "bidirectional": True}
                                       for c in ("mingru", "minlstm", "indrnn", "layernorm_lstm",
                                                 "layernorm_gru"))])  # fmt: skip
def test_shapes_and_padding(changes: dict[str, Any]) -> None:
    m = model(**changes)
    images, ids, lengths = inputs()
    logits = m(images, ids, lengths)
    assert logits.shape == (3, 5)
    for i in range(3):  # each question alone, unpadded, gives the same logits
        n = int(lengths[i])
        alone = m(images[i : i + 1], ids[i : i + 1, :n], lengths[i : i + 1])
        torch.testing.assert_close(alone[0], logits[i])


def test_shared_images_equal_repeated_images() -> None:
    m = model(attention_layers=1)
    images, ids, lengths = inputs()
    rows = torch.tensor([1, 0, 1])
    torch.testing.assert_close(m(images[:2], ids, lengths, rows), m(images[rows], ids, lengths))
    with pytest.raises(ShapeError, match="image_rows"):
        m(images[:2], ids, lengths, torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="one per question"):
        m(images[:2], ids, lengths)


def test_product_fusion_is_deeper_lstm_q_norm_i() -> None:
    m = model(fusion="product")
    images, ids, lengths = inputs()
    q = m.encode_question(ids, lengths)
    v, _ = m.encode_image(images)
    u = torch.tanh(m.question_proj(q)) * torch.tanh(m.image_proj(v / v.norm(dim=1, keepdim=True)))
    torch.testing.assert_close(m(images, ids, lengths), m.mlp(u))


def test_concat_fusion() -> None:
    m = model()
    images, ids, lengths = inputs()
    u = torch.cat([m.encode_question(ids, lengths), m.encode_image(images)[0]], dim=1)
    torch.testing.assert_close(m(images, ids, lengths), m.mlp(u))


def test_stacked_attention_against_a_loop() -> None:
    """Yang et al. 2016, eq. 15-19, one example and one location at a time."""
    m = model(attention_layers=2)
    images, ids, lengths = inputs()
    q = m.encode_question(ids, lengths)
    _, grid = m.encode_image(images)
    expected, last = [], []
    for b in range(3):
        u = m.question_proj.weight @ q[b] + m.question_proj.bias
        g = [m.grid_proj.weight @ grid[b, i] + m.grid_proj.bias for i in range(grid.shape[1])]
        for k in range(2):
            scores = []
            for g_i in g:
                h = torch.tanh(m.att_image[k].weight @ g_i + m.att_query[k].weight @ u
                               + m.att_query[k].bias)  # fmt: skip
                scores.append(m.att_score[k].weight[0] @ h + m.att_score[k].bias[0])
            p = torch.softmax(torch.stack(scores), dim=0)
            u = sum(p_i * g_i for p_i, g_i in zip(p, g, strict=True)) + u
        expected.append(m.mlp(u))
        last.append(p)
    logits, weights = m.answer(images, ids, lengths)
    torch.testing.assert_close(logits, torch.stack(expected))
    torch.testing.assert_close(weights, torch.stack(last))
    torch.testing.assert_close(weights.sum(1), torch.ones(3))


def test_features_and_blind() -> None:
    m = model(encoder="features", attention_layers=1)
    _, ids, lengths = inputs()
    grid = torch.randn(3, 4, 10)
    assert m(grid, ids, lengths).shape == (3, 5)
    with pytest.raises(ShapeError, match="attention needs a grid"):
        m(torch.randn(3, 10), ids, lengths)
    with pytest.raises(ShapeError, match="expected"):
        m(torch.randn(3, 4, 9), ids, lengths)
    blind = model(encoder="none")
    torch.testing.assert_close(blind(None, ids, lengths), blind(inputs()[0], ids, lengths))
    assert not any("cnn" in n for n, _ in blind.named_parameters())
    with pytest.raises(ConfigError, match="attention_layers"):
        VQAConfig(vocab_size=5, num_answers=3, encoder="none", attention_layers=1)
    with pytest.raises(ShapeError, match="only a blind model"):
        model()(None, ids, lengths)


def colour_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solid red/green/blue 8x8 images; "what color ?" answers the colour (ids 2-4), "is it
    <colour> ?" answers yes (0) or no (1): the answer needs the image and the question."""
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)
    images, ids, answers = [], [], []
    # words: 0 pad, 1 unk, 2 what, 3 color, 4 is, 5 it, 6 red, 7 green, 8 blue
    for c in range(3):
        image = colours[c][:, None, None].expand(3, 8, 8)
        images.append(image)
        ids.append([2, 3, 0])
        answers.append(2 + c)
        for asked in range(3):
            images.append(image)
            ids.append([4, 5, 6 + asked])
            answers.append(0 if asked == c else 1)
    lengths = torch.tensor([2 if row[-1] == 0 else 3 for row in ids])
    return torch.stack(images), torch.tensor(ids), lengths, torch.tensor(answers)


@pytest.mark.parametrize("changes", [{}, {"attention_layers": 1}, {"fusion": "product"}])
def test_learns_and_answers_depend_on_image_and_question(changes: dict[str, Any]) -> None:
    images, ids, lengths, answers = colour_set()
    m = model(vocab_size=9, num_answers=5, **changes).train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = F.cross_entropy(m(images, ids, lengths), answers)
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        predicted = m(images, ids, lengths).argmax(1)
    assert predicted.tolist() == answers.tolist()
    # only the image changes: "what color?" about red, then about blue
    assert predicted[0] != predicted[8] and ids[0].tolist() == ids[8].tolist()
    # only the question changes: the red image, "what color?" then "is it red?"
    assert predicted[0] != predicted[1] and torch.equal(images[0], images[1])
    blind = model(vocab_size=9, num_answers=5, encoder="none")
    assert blind(None, ids[[0]], lengths[[0]]).shape == (1, 5)
