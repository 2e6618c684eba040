"""Tests for rnnlab.sample: sampling against softmax, beam search against brute force, primes,
streams and bfloat16 weights; the char-LM decodes through rnnlab.decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from rnnlab import decoding
from rnnlab.models import CharLM, CharLMConfig
from rnnlab.sample import SampleConfig, decode, generate, prime_ids, run_prime, step_protocol

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def char_lm(cell: str = "lstm", vocab: int = 7, seed: int = 0, **kw) -> CharLM:
    torch.manual_seed(seed)
    config = CharLMConfig(vocab_size=vocab, cell=cell, hidden_size=8, num_layers=1, **kw)
    return CharLM(config).eval()


class TableLM(nn.Module):
    """A bigram model whose logits we write: ``logits[b, t] = table[idx[b, t]]``.

    State (1, B, 1) counts the tokens seen, so it has a batch dim to carry and reorder.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.float())  # (V, V): row = previous token
        self.max_chunk = 0
        self.tokens_seen = 0

    def forward(self, idx, state=None):
        if state is None:
            state = self.initial_state(idx.shape[0], idx.device)
        self.max_chunk = max(self.max_chunk, idx.shape[1])
        self.tokens_seen += idx.numel()
        return self.table[idx], state + idx.shape[1]  # (B, T, V)

    def initial_state(self, batch, device="cpu"):
        return torch.zeros(1, batch, 1, device=device)


class SteppingTableLM(TableLM):
    """TableLM with the fast per-token path; counts its calls."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(table)
        self.step_calls = 0

    def step(self, idx, state):
        assert idx.dim() == 1 and state.shape[1] == idx.shape[0]
        self.step_calls += 1
        return self.table[idx], state + 1  # (B, V)


def fixed_lm(logits: list[float]) -> TableLM:
    """Every step has the same next-token distribution softmax(logits)."""
    row = torch.tensor(logits)
    return TableLM(row.expand(len(logits), -1).clone())


def sequence_scores(model, prime: list[int], seqs: torch.Tensor) -> torch.Tensor:
    """Teacher-forced sum of log-probs of each row of seqs (N, n) after prime, in one forward."""
    N, n = seqs.shape
    idx = torch.cat([torch.tensor(prime).expand(N, -1), seqs], dim=1)  # (N, P + n)
    with torch.no_grad():
        logits, _ = model(idx[:, :-1])  # (N, P + n - 1, V)
    logp = logits[:, len(prime) - 1 :].float().log_softmax(-1)  # (N, n, V)
    return logp.gather(-1, seqs[..., None]).squeeze(-1).sum(-1)  # (N,)


def all_sequences(V: int, n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(V), repeat=n)))  # (V**n, n)


def beam_search(model, prime, beam_width: int, length: int, num: int | None = None):
    """The best ``num`` (default all ``beam_width``) beams of ``rnnlab sample --beam`` as
    (tokens, summed log-probability), best first: rnnlab.decoding's beam over the char-LM."""
    config = SampleConfig(length=length, beam=beam_width, num_samples=num or beam_width)
    return [(h.tokens, h.logprob) for h in decode(model, prime, config)]


# -- configuration and prime ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"length": -1}, "length"),
        ({"num_samples": 0}, "num_samples"),
        ({"beam": -1}, "beam"),
        ({"beam": 2, "num_samples": 3}, "num_samples"),
        ({"unknown": "ignore"}, "unknown"),
    ],
)
def test_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError) as err:
        SampleConfig(**kw)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_config_greedy():
    assert SampleConfig(temperature=0).greedy and SampleConfig(argmax=True).greedy
    assert not SampleConfig(temperature=1e-6).greedy


STOI = {ch: i for i, ch in enumerate("helo ")}


def test_prime_unseen_characters_error_lists_each_once():
    with pytest.raises(ValueError) as err:
        prime_ids("héllo☃é", STOI)
    message = str(err.value)
    assert "not in the vocabulary: 'é', '☃';" in message
    assert "--unknown skip" in message and "\n" not in message


def test_prime_unseen_skip_and_replace():
    assert prime_ids("héllo☃", STOI, "skip") == prime_ids("hllo", STOI)
    assert prime_ids("héllo☃", STOI, "replace", replacement=4) == [0, 4, 2, 2, 3, 4]
    assert prime_ids("☃", STOI, "skip") == []
    with pytest.raises(ValueError, match="replacement"):
        prime_ids("héllo", STOI, "replace")
    with pytest.raises(ValueError, match="unknown"):
        prime_ids("hello", STOI, "drop")


def test_prime_validation():
    model = char_lm()
    config = SampleConfig(length=3)
    with pytest.raises(ValueError, match="at least one"):
        generate(model, [], config)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        generate(model, [1, 7], config)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        generate(model, [-1], SampleConfig(length=3, beam=2))
    with pytest.raises(ValueError, match="1-D"):
        generate(model, [[1, 2]], config)


# -- filters ----------------------------------------------------------------------------------


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the support was sampled"
    expected = n * probs[support]
    return float(((counts[support] - expected) ** 2 / expected).sum())


LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0]


@pytest.mark.parametrize(
    "kw, probs",
    [
        ({}, torch.tensor(LOGITS).softmax(0)),
        ({"temperature": 2.0}, (torch.tensor(LOGITS) / 2).softmax(0)),
        ({"top_k": 2}, torch.tensor([2.0, 1.0, -math.inf, -math.inf, -math.inf]).softmax(0)),
        # softmax(LOGITS) = .563 .207 .126 .076 .028: 0.77 < 0.8, so the top three
        ({"top_p": 0.8}, torch.tensor([2.0, 1.0, 0.5, -math.inf, -math.inf]).softmax(0)),
    ],
)
def test_sample_frequencies_match_softmax(kw, probs):
    config = SampleConfig(length=5, num_samples=4000, seed=3, **kw)
    out = torch.tensor(generate(fixed_lm(LOGITS), [0], config))  # (4000, 5)
    counts = torch.bincount(out.flatten(), minlength=len(LOGITS)).double()
    # 20 000 draws; chi-square with <= 4 degrees of freedom: 25 is p ~ 5e-5.
    assert chi_square(counts, probs.double()) < 25


# -- sampling ---------------------------------------------------------------------------------


def test_same_seed_same_sample_and_global_rng_untouched():
    model = char_lm()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate(model, [1, 2, 3], SampleConfig(length=50, seed=7))
    b = generate(model, [1, 2, 3], SampleConfig(length=50, seed=7))
    c = generate(model, [1, 2, 3], SampleConfig(length=50, seed=8))
    generate(model, [1, 2, 3], SampleConfig(length=50))  # seed None: fresh, not global
    assert torch.equal(torch.get_rng_state(), before)
    assert a == b and a != c
    assert len(a) == 1 and len(a[0]) == 50 and all(0 <= i < 7 for i in a[0])


def test_prime_tensor_equals_list():
    model = char_lm()
    config = SampleConfig(length=20, seed=1)
    assert generate(model, torch.tensor([4, 5, 6]), config) == generate(model, [4, 5, 6], config)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_greedy_variants_equal_argmax(cell):
    model = char_lm(cell)
    prime = [3, 1, 4, 1, 5]
    greedy = generate(model, prime, SampleConfig(length=40, argmax=True, seed=1))
    for kw in [
        {"argmax": True, "seed": 2},
        {"argmax": True},
        {"temperature": 0.0, "seed": 3},
        {"temperature": 1e-6, "seed": 4},
        {"top_k": 1, "seed": 5},
        {"top_p": 1e-9, "seed": 6},
    ]:
        assert generate(model, prime, SampleConfig(length=40, **kw)) == greedy, kw
    # and greedy is the argmax of the teacher-forced logits at every position
    idx = torch.tensor([prime + greedy[0]])
    with torch.no_grad():
        logits, _ = model(idx[:, :-1])
    assert logits[0, len(prime) - 1 :].argmax(-1).tolist() == greedy[0]


def test_high_temperature_gives_valid_ids():
    out = generate(char_lm(), [0], SampleConfig(length=100, temperature=100.0, seed=0))
    assert all(0 <= i < 7 for i in out[0])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_num_samples_one_batch_rows_follow_their_own_state(cell):
    model = char_lm(cell)
    prime = [2, 2, 6]
    out = generate(model, prime, SampleConfig(length=30, num_samples=4, top_k=3, seed=0))
    assert len(out) == 4 and all(len(row) == 30 for row in out)
    assert len({tuple(row) for row in out}) == 4
    # Each row, replayed alone in one forward, picked one of its own top-3 tokens at every step:
    # the batched loop carried each stream's state separately.
    idx = torch.tensor([prime + row for row in out])  # (4, P + 30)
    with torch.no_grad():
        logits, _ = model(idx[:, :-1])
    top3 = logits[:, len(prime) - 1 :].topk(3, dim=-1).indices  # (4, 30, 3)
    assert (top3 == idx[:, len(prime) :, None]).any(-1).all()
    greedy = generate(model, prime, SampleConfig(length=30, num_samples=4, argmax=True))
    assert greedy == [greedy[0]] * 4


def test_length_zero_returns_empty():
    calls = []
    config = SampleConfig(length=0, num_samples=3, seed=0)
    out = generate(char_lm(), [1], config, on_token=lambda t, ids: calls.append(t))
    assert out == [[], [], []] and calls == []
    assert beam_search(char_lm(), [1], 3, 0, num=1) == [([], 0.0)]


def test_on_token_called_in_order():
    calls = []

    def record(step, ids):
        assert ids.shape == (2,) and ids.dtype == torch.long
        calls.append((step, ids.tolist()))

    out = generate(
        char_lm(), [1, 2], SampleConfig(length=12, num_samples=2, seed=5), on_token=record
    )
    assert [t for t, _ in calls] == list(range(12))
    assert [[ids[b] for _, ids in calls] for b in range(2)] == out


def test_step_method_is_used_and_agrees_with_forward():
    table = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    stepping, plain = SteppingTableLM(table), TableLM(table)
    config = SampleConfig(length=10, num_samples=3, seed=11)
    out = generate(stepping, [1, 2, 3], config)
    assert stepping.step_calls == 9  # the last token needs no forward
    assert stepping.tokens_seen == 3  # forward only ran the prime
    assert out == generate(plain, [1, 2, 3], config)
    assert beam_search(stepping, [1], 3, 4) == beam_search(plain, [1], 3, 4)


def test_eval_mode_during_sampling_and_mode_restored():
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(vocab_size=7, hidden_size=8, num_layers=2, dropout=0.5))
    model.train()
    a = generate(model, [1, 2], SampleConfig(length=30, argmax=True))
    b = generate(model, [1, 2], SampleConfig(length=30, argmax=True))
    assert a == b  # no dropout noise
    assert model.training and all(m.training for m in model.modules())


# -- prime ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_prime_in_chunks_equals_prime_whole(cell):
    model = char_lm(cell, backend="reference")
    prime = torch.randint(0, 7, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        logits_whole, state_whole = run_prime(model, prime, chunk_size=300)
        logits_chunks, state_chunks = run_prime(model, prime, chunk_size=7)
    torch.testing.assert_close(logits_chunks, logits_whole)
    parts = lambda s: s if isinstance(s, tuple) else (s,)  # noqa: E731
    for a, b in zip(parts(state_chunks), parts(state_whole), strict=True):
        torch.testing.assert_close(a, b)
    config = SampleConfig(length=40, num_samples=2, seed=9)
    assert generate(model, prime, config, prime_chunk=7) == generate(model, prime, config)


def test_long_prime_is_consumed_in_bounded_chunks():
    prime = torch.randint(0, 7, (100_000,), generator=torch.Generator().manual_seed(2))
    table_model = fixed_lm([0.0] * 7)
    generate(table_model, prime, SampleConfig(length=5, seed=0))
    assert table_model.max_chunk == 4096 and table_model.tokens_seen == 100_000 + 4
    out = generate(char_lm(), prime, SampleConfig(length=20, seed=0))
    assert len(out[0]) == 20


# -- beam search ------------------------------------------------------------------------------


def greedy_trap() -> TableLM:
    """From token 0 the likeliest next token (1) leads to a flat row; 2 leads to a sure thing."""
    probs = torch.tensor(
        [
            [0.10, 0.50, 0.40],  # after 0
            [0.34, 0.33, 0.33],  # after 1
            [0.90, 0.05, 0.05],  # after 2
        ]
    )
    return TableLM(probs.log())


def test_beam_beats_greedy_and_matches_brute_force():
    model, prime, n = greedy_trap(), [0], 3
    seqs = all_sequences(3, n)
    scores = sequence_scores(model, prime, seqs)
    best = seqs[scores.argmax()].tolist()
    greedy = generate(model, prime, SampleConfig(length=n, argmax=True))[0]
    assert greedy != best  # greedy is not optimal here
    tokens, score = beam_search(model, prime, 3, n)[0]
    assert tokens == best and score == pytest.approx(scores.max().item(), abs=1e-5)
    assert generate(model, prime, SampleConfig(length=n, beam=3))[0] == best


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_search_against_brute_force_on_char_lm(cell):
    V, n, prime = 4, 4, [1, 3, 0]
    model = char_lm(cell, vocab=V, seed=5)
    seqs = all_sequences(V, n)  # (256, 4)
    scores = sequence_scores(model, prime, seqs)
    order = scores.argsort(descending=True)
    # A beam as wide as the whole space is exhaustive: it must reproduce the full ranking.
    beams = beam_search(model, prime, V**n, n)
    assert len(beams) == V**n
    assert [b[0] for b in beams[:10]] == seqs[order[:10]].tolist()
    torch.testing.assert_close(
        torch.tensor([b[1] for b in beams]), scores[order], atol=1e-5, rtol=0
    )
    # A narrow beam: sorted, each score is its sequence's true score, none beats the optimum.
    narrow = beam_search(model, prime, 3, n)
    assert len(narrow) == 3
    got = torch.tensor([b[1] for b in narrow])
    assert torch.all(got[:-1] >= got[1:])
    replayed = sequence_scores(model, prime, torch.tensor([b[0] for b in narrow]))
    torch.testing.assert_close(got, replayed, atol=1e-5, rtol=0)
    assert got[0] <= scores.max() + 1e-5


def test_generate_with_beam_returns_top_beams_and_replays_on_token():
    model = char_lm(vocab=5)
    beams = beam_search(model, [2, 1], 4, 6)
    calls = []
    out = generate(
        model,
        [2, 1],
        SampleConfig(length=6, beam=4, num_samples=2),
        on_token=lambda t, ids: calls.append((t, ids.tolist())),
    )
    assert out == [beams[0][0], beams[1][0]]
    assert [t for t, _ in calls] == list(range(6))
    assert [[ids[b] for _, ids in calls] for b in range(2)] == out


def test_beam_search_rejects_bad_arguments():
    step, reorder = step_protocol(char_lm())
    with pytest.raises(ValueError, match="beam"):
        decoding.beam_search(step, reorder, None, 1, batch_size=1, beam=0, max_length=3)
    with pytest.raises(ValueError, match="max_length"):
        decoding.beam_search(step, reorder, None, 1, batch_size=1, beam=2, max_length=-1)
    with pytest.raises(ValueError, match="^beam"):
        SampleConfig(length=3, beam=-1)
    with pytest.raises(ValueError, match="^length"):
        SampleConfig(length=-1, beam=2)


# -- device -----------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_and_beam():
    model = char_lm().cuda()
    prime = torch.randint(0, 7, (10_000,))
    config = SampleConfig(length=50, num_samples=3, top_k=4, top_p=0.9, seed=1)
    a = generate(model, prime, config)
    assert a == generate(model, prime, config) and len(a) == 3
    short = SampleConfig(length=20, argmax=True)
    assert generate(model, prime[:100], short) == generate(model.cpu(), prime[:100], short)
    model.cuda()
    beams = beam_search(model, prime[:50], 3, 5)
    assert len(beams) == 3 and beams[0][1] >= beams[-1][1]


# -- non-finite logits, tiny temperatures, --length 0 in every mode ----------------------------


MODES = [SampleConfig(length=5, seed=0), SampleConfig(length=5, argmax=True),
         SampleConfig(length=5, beam=3)]  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("config", MODES)
def test_non_finite_logits_are_a_clear_error_in_every_mode(bad, config):
    from rnnlab.sample import DecodingError

    table = torch.zeros(4, 4)
    table[2, 1] = bad  # reached after a couple of tokens
    table[:, 2] = 5.0
    with pytest.raises(DecodingError, match="non-finite logits .* diverged or damaged"):
        generate(TableLM(table), [0], config)


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_tiny_temperatures_cannot_underflow_and_equal_argmax(temperature):
    model = char_lm(vocab=9, seed=3)
    greedy = generate(model, [1, 2], SampleConfig(length=40, argmax=True))
    tiny = generate(model, [1, 2], SampleConfig(length=40, temperature=temperature, seed=5))
    assert tiny == greedy


def test_length_zero_gives_num_samples_empty_texts_in_every_mode():
    for config in (SampleConfig(length=0, num_samples=2, beam=2), SampleConfig(length=0, beam=3),
                   SampleConfig(length=0, num_samples=2, argmax=True)):  # fmt: skip
        assert generate(char_lm(), [1], config) == [[]] * config.num_samples
    with pytest.raises(ValueError, match="prime"):
        generate(char_lm(), [], SampleConfig(length=0, beam=2))


def _rounded(model: CharLM, skip: tuple[str, ...] = ("weight_ih_l0",)) -> CharLM:
    """A copy whose recurrent weight matrices are rounded to bfloat16 (layer 0's input weights
    are folded into the float32 embedding table, so they stay float32 in the bfloat16 path)."""
    import copy

    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in copy_.rnn.named_parameters():
            if p.dim() == 2 and name not in skip:
                p.copy_(p.bfloat16().float())
    return copy_


@pytest.mark.parametrize("streams", [3, 12])  # bf16 reads up to 8, widened copies above
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mut1", "mut2", "mut3"])
def test_bfloat16_weights_equal_float32_with_rounded_weights(cell, streams):
    """weight_dtype=bfloat16 is exactly float32 arithmetic on weights rounded to bfloat16 (the
    engine widens them exactly and accumulates in float32), state carried over steps."""
    torch.manual_seed(0)
    model = CharLM(CharLMConfig(vocab_size=11, cell=cell, hidden_size=24, num_layers=2)).eval()
    reference = _rounded(model)
    idx, state, want_state = torch.randint(0, 11, (streams,)), None, None
    with torch.no_grad():
        for _ in range(5):
            got, state = model.step(idx, state, weight_dtype=torch.bfloat16)
            want, want_state = reference.step(idx, want_state)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            plain, _ = model.step(idx, want_state)
            assert not torch.equal(plain, got)  # the rounding did happen
            idx = got.argmax(-1)
    with torch.no_grad():  # vector input (no embedding): layer 0's W_ih is rounded as well
        x, rnn = torch.randn(streams, 24), model.rnn
        got, _ = rnn.step(x, None, weight_dtype=torch.bfloat16)
        want, _ = _rounded(model, skip=()).rnn.step(x, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_weights_follow_weight_changes_and_refuse_what_cannot_run():
    model = char_lm("gru")
    idx = torch.tensor([1, 2])
    with torch.no_grad():
        model.step(idx, None, weight_dtype=torch.bfloat16)
        model.rnn.weight_hh_l0.mul_(3.0)  # in place, like an optimizer step
        got, _ = model.step(idx, None, weight_dtype=torch.bfloat16)
        want, _ = _rounded(model).step(idx, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weight_dtype"):  # grad mode: no engine
        model.rnn.step(idx, None, embedding=model.embedding.weight, weight_dtype=torch.bfloat16)
    with torch.no_grad(), pytest.raises(ValueError, match="weight_dtype"):
        char_lm("gru", backend="reference").step(idx, None, weight_dtype=torch.bfloat16)
    with torch.no_grad(), pytest.raises(ValueError, match="weight_dtype"):
        model.double().step(idx, None, weight_dtype=torch.bfloat16)


@pytest.mark.parametrize("mode", [{}, {"argmax": True}, {"top_k": 3}, {"beam": 3}])
def test_generate_with_bfloat16_weights_every_decoding_mode(mode):
    """SampleConfig(weights="bfloat16") decodes with the rounded weights in every mode: the same
    text as float32 decoding of a model whose weights were rounded."""
    model = char_lm("lstm", 9)
    config = SampleConfig(length=30, seed=3, weights="bfloat16", **mode)
    got = generate(model, [1, 2, 3], config)
    want = generate(_rounded(model), [1, 2, 3], SampleConfig(length=30, seed=3, **mode))
    assert got == want


def test_bfloat16_weights_need_a_step_that_takes_them():
    table = torch.randn(5, 5)
    with pytest.raises(ValueError, match="weights"):
        generate(TableLM(table), [1], SampleConfig(length=3, seed=0, weights="bfloat16"))
