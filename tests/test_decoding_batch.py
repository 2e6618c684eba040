"""A decoded output is a function of its own source: decoded alone it equals itself decoded in any
batch (greedy, beam, sampling with a seed), for rnnlab.decoding, seq2seq and captioning
(issue 23: the default limit was 2*S + 10 with S the padded batch length, and one generator
was shared by the batch)."""

from __future__ import annotations

import pytest
import torch

from rnnlab import decoding
from rnnlab.models.captioner import Captioner, CaptionerConfig, generate_captions
from rnnlab.models.seq2seq import EOS, DecodeConfig, Seq2Seq, Seq2SeqConfig, translate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- rnnlab.decoding: per-row limits and per-row generators ------------------------------------


class TinyRNN(torch.nn.Module):
    """(B,) tokens, (B, H) state -> (B, V) log-probabilities; token V-1 is the end token."""

    def __init__(self, V: int = 7, H: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(V, H)
        self.cell = torch.nn.GRUCell(H, H)
        self.out = torch.nn.Linear(H, V)

    def step(self, tokens, state):
        h = self.cell(self.emb(tokens), state)
        return self.out(h).log_softmax(-1), h


def reorder0(state, index):
    return decoding.reorder_rows(state, index, dim=0)


def decode_rows(method, model, h0, start, limits, rows, seed=0):
    """Decode ``rows`` of (h0, start) as one batch with their per-row limits."""
    index = torch.tensor(rows)
    kw = {"max_length": [limits[r] for r in rows], "eos": 6}
    state, ids = h0[index], start[index]
    if method == "greedy":
        return decoding.greedy(model.step, reorder0, state, ids, **kw)
    if method == "beam":
        found = decoding.beam_search(model.step, reorder0, state, ids, beam=3, alpha=0.5, **kw)
        return [hyps[0] for hyps in found]
    generators = [torch.Generator().manual_seed(seed * 1000 + r) for r in rows]
    return decoding.sample(model.step, reorder0, state, ids, generator=generators, **kw)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_decoding_rows_with_their_own_limits_and_generators_equal_alone(method):
    model = TinyRNN(seed=2)
    with torch.no_grad():
        model.out.bias[6] -= 3.0  # ends sometimes, not always: both ways of finishing occur
    B = 6
    start, h0 = torch.arange(B), torch.randn(B, 5, generator=torch.Generator().manual_seed(1))
    limits = [1, 4, 9, 2, 13, 0]
    alone = [decode_rows(method, model, h0, start, limits, [r])[0] for r in range(B)]
    for h, n in zip(alone, limits, strict=True):
        assert len(h.tokens) + h.finished <= n
    assert any(len(h.tokens) == n and not h.finished for h, n in zip(alone, limits, strict=True))
    for rows in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 4], [4, 1, 3]):
        together = decode_rows(method, model, h0, start, limits, rows)
        for r, h in zip(rows, together, strict=True):
            assert (h.tokens, h.finished) == (alone[r].tokens, alone[r].finished), (rows, r)
            assert h.logprob == pytest.approx(alone[r].logprob, abs=1e-5)


def test_source_generators_depend_on_seed_and_content_only():
    a, b = torch.tensor([3, 4, 5]), torch.tensor([3, 4, 6])
    draw = lambda gens: [torch.rand((), generator=g).item() for g in gens]  # noqa: E731
    assert (
        draw(decoding.source_generators(7, [a, b]))
        == draw(decoding.source_generators(7, [b, a]))[::-1]
    )
    assert draw(decoding.source_generators(7, [a])) != draw(decoding.source_generators(8, [a]))
    assert draw(decoding.source_generators(7, [a])) != draw(decoding.source_generators(7, [b]))
    with pytest.raises(ValueError, match="seed"):
        decoding.source_generators(-1, [a])


# -- seq2seq ----------------------------------------------------------------------------------


def seq2seq(attention: str, never_ends: bool) -> Seq2Seq:
    torch.manual_seed(4)
    config = Seq2SeqConfig(source_vocab_size=11, target_vocab_size=9, embedding_size=6,
                           hidden_size=8, num_layers=2, encoder_cell="gru", decoder_cell="lstm",
                           bidirectional=True, attention=attention)  # fmt: skip
    model = Seq2Seq(config).eval()
    if never_ends:  # a word that never emits </s>: every row runs to its own limit
        with torch.no_grad():
            model.output.bias[EOS] = -1e4
    return model


SOURCES = [[5, 6, 2], [7, 8, 9, 10, 4, 3, 5, 2], [3, 2], [9, 9, 4, 2], [6, 3, 8, 7, 5, 2]]


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(len(r) for r in rows)
    source = torch.tensor([r + [0] * (S - len(r)) for r in rows])
    return source, torch.tensor([len(r) for r in rows])


METHODS = [
    DecodeConfig(method="greedy"),
    DecodeConfig(method="beam", beam=3, alpha=0.6),
    DecodeConfig(method="sample", seed=5),
    DecodeConfig(method="sample", seed=5, temperature=0.8, top_k=4),
]


@pytest.mark.parametrize("config", METHODS, ids=["greedy", "beam", "sample", "sample-top-k"])
@pytest.mark.parametrize("attention", ["none", "luong"])
@pytest.mark.parametrize("never_ends", [True, False], ids=["never-ends", "ends"])
def test_seq2seq_each_source_alone_equals_it_in_any_batch(config, attention, never_ends):
    model = seq2seq(attention, never_ends)
    alone = [translate(model, *padded([src]), config)[0] for src in SOURCES]
    if never_ends:  # the default limit is the source's own: 2 * length + 10
        assert [len(h.tokens) for h in alone] == [2 * len(s) + 10 for s in SOURCES]
        assert not any(h.finished for h in alone)
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 1], [3, 0, 4]):
        together = translate(model, *padded([SOURCES[i] for i in order]), config)
        for i, h in zip(order, together, strict=True):
            assert (h.tokens, h.finished) == (alone[i].tokens, alone[i].finished), (order, i)


def test_seq2seq_given_max_length_applies_to_every_row():
    model = seq2seq("none", never_ends=True)
    hyps = translate(model, *padded(SOURCES), DecodeConfig(max_length=7))
    assert [len(h.tokens) for h in hyps] == [7] * len(SOURCES)


# -- captioning -------------------------------------------------------------------------------


def captioner() -> Captioner:
    torch.manual_seed(3)
    config = CaptionerConfig(vocab_size=12, embedding_size=8, hidden_size=16, image_size=16,
                             cnn_channels=4, cnn_blocks=2, feature_size=12)  # fmt: skip
    return Captioner(config).eval()


CAPTION_METHODS = [
    {"beam": 1},
    {"beam": 3, "alpha": 0.5},
    {"temperature": 1.0, "seed": 11},
    {"temperature": 1.0, "generator": "seeded"},  # a generator stands for its seed
]


@pytest.mark.parametrize("kw", CAPTION_METHODS, ids=["greedy", "beam", "seed", "generator"])
def test_captions_alone_equal_captions_in_any_batch(kw):
    model = captioner()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip

    def caption(rows: list[int]) -> list[list[int]]:
        args = dict(kw)
        if args.get("generator") == "seeded":
            args["generator"] = torch.Generator().manual_seed(11)
        return generate_captions(model, images[rows], max_length=9, **args)

    alone = [caption([i])[0] for i in range(5)]
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 3]):
        assert caption(order) == [alone[i] for i in order], order
    if "seed" in kw or "generator" in kw:  # and it is a sample, reproducible, seed-dependent
        assert caption([0, 1, 2, 3, 4]) == alone
        other = generate_captions(model, images, max_length=9, temperature=1.0, seed=12)
        assert other != alone
