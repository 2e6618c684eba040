"""rnnlab.decoding against brute force, hand-computed cases and one-row-at-a-time decoding."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnlab.decoding import (
    beam_search,
    filter_logprobs,
    greedy,
    length_penalty,
    reorder_rows,
    sample,
)


def markov(table: torch.Tensor):
    """A model whose next-token distribution depends only on the last token: table (V, V)."""
    logp = table.log_softmax(-1)

    def step(tokens, state):
        return logp[tokens], state + 1  # state: (B,) step counters, to check reordering

    return step, logp


def reorder0(state, index):
    return reorder_rows(state, index, dim=0)


class TinyRNN(torch.nn.Module):
    """A state-dependent decoder: (B,) tokens, (B, H) state -> (B, V) log-probabilities."""

    def __init__(self, V: int = 7, H: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(V, H)
        self.cell = torch.nn.GRUCell(H, H)
        self.out = torch.nn.Linear(H, V)
        with torch.no_grad():
            self.out.weight.mul_(4)

    def step(self, tokens, state):
        h = self.cell(self.emb(tokens), state)
        return self.out(h).log_softmax(-1), h


def brute_force(logp: torch.Tensor, start: int, eos: int, L: int, alpha: float):
    """Every sequence of at most L steps: finished ones end in eos, unfinished have L tokens."""
    V = logp.shape[0]
    found = []
    for n in range(1, L + 1):
        for seq in itertools.product(range(V), repeat=n):
            if any(s == eos for s in seq[:-1]):
                continue
            finished = seq[-1] == eos
            if not finished and n < L:
                continue
            prev, total = start, 0.0
            for s in seq:
                total += float(logp[prev, s])
                prev = s
            tokens = list(seq[:-1]) if finished else list(seq)
            found.append((total / length_penalty(n if finished else L, alpha), tokens, finished))
    found.sort(key=lambda x: -x[0])
    return found


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_wide_beam_equals_exhaustive_search(alpha):
    torch.manual_seed(1)
    V, eos, L = 4, 3, 4
    table = torch.randn(V, V) * 2
    step, logp = markov(table)
    want = brute_force(logp.double(), 0, eos, L, alpha)
    got = beam_search(step, reorder0, torch.zeros(1), 0, beam=V**L, max_length=L, eos=eos,
                      batch_size=1, alpha=alpha, num_return=5)[0]  # fmt: skip
    # A Markov chain has exact ties (the same transitions in another order): compare scores,
    # and check each returned sequence really has the score it claims.
    assert [h.score for h in got] == pytest.approx([w[0] for w in want[:5]], abs=1e-9)
    by_tokens = {(tuple(w[1]), w[2]): w[0] for w in want}
    for h in got:
        assert by_tokens[(tuple(h.tokens), h.finished)] == pytest.approx(h.score, abs=1e-9)
        assert h.logprob == pytest.approx(sum(h.steps), abs=1e-9)
    assert len({(tuple(h.tokens), h.finished) for h in got}) == 5


def plain_beam(logp, start, eos, K, L, alpha):
    """Textbook beam search for one source, run to max_length with no early stop: per step the
    best 2K extensions, eos ones finish, the best K others live on; the live ones join at L."""
    live, finished = [(0.0, [])], []
    for _ in range(L):
        prev = [(s + float(logp[toks[-1] if toks else start, v]), toks, v)
                for s, toks in live for v in range(logp.shape[0])]  # fmt: skip
        prev.sort(key=lambda x: -x[0])
        live = []
        for s, toks, v in prev[: 2 * K]:
            if len(live) == K:
                break
            if v == eos:
                finished.append((s / length_penalty(len(toks) + 1, alpha), toks))
            else:
                live.append((s, [*toks, v]))
    pool = finished + [(s / length_penalty(L, alpha), toks) for s, toks in live]
    return sorted(pool, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha", [0.0, 0.8, 2.0])
def test_early_stop_never_changes_the_result(alpha):
    torch.manual_seed(2)
    V, eos, K, L = 6, 5, 3, 9
    for trial in range(20):
        table = torch.randn(V, V) * 2
        table[:, eos] += trial % 4  # from rarely to often finishing
        step, logp = markov(table)
        got = beam_search(step, reorder0, torch.zeros(1), 0, beam=K, max_length=L, eos=eos,
                          batch_size=1, alpha=alpha, num_return=K)[0]  # fmt: skip
        want = plain_beam(logp.double(), 0, eos, K, L, alpha)[:K]
        assert [h.score for h in got] == pytest.approx([w[0] for w in want], abs=1e-9)


def test_greedy_follows_the_argmax_path_by_hand():
    table = torch.tensor(
        [[0.0, 3.0, 1.0, 0.0], [0.0, 0.0, 4.0, 1.0], [5.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    )
    step, logp = markov(table)
    # from 0: argmax 1; from 1: argmax 2; from 2: argmax 0; from 0: 1 ... (eos=3 never wins)
    (h,) = greedy(step, reorder0, torch.zeros(1), 0, max_length=5, eos=3, batch_size=1)
    assert h.tokens == [1, 2, 0, 1, 2] and not h.finished
    expected = float(logp[0, 1] + logp[1, 2] + logp[2, 0] + logp[0, 1] + logp[1, 2])
    assert h.logprob == pytest.approx(expected)
    table[2, 3] = 9.0  # now 2 -> eos
    step, _ = markov(table)
    (h,) = greedy(step, reorder0, torch.zeros(1), 0, max_length=5, eos=3, batch_size=1)
    assert h.tokens == [1, 2] and h.finished and len(h.steps) == 3


def test_beam_one_equals_greedy_on_a_recurrent_model():
    model = TinyRNN()
    start = torch.tensor([0, 1, 2, 3, 4, 5])
    h0 = torch.randn(6, 5)
    g = greedy(model.step, reorder0, h0, start, max_length=12, eos=6)
    b = beam_search(model.step, reorder0, h0, start, beam=1, max_length=12, eos=6)
    assert [x.tokens for x in g] == [x[0].tokens for x in b]
    assert [x.finished for x in g] == [x[0].finished for x in b]
    for x, y in zip(g, b, strict=True):
        assert x.logprob == pytest.approx(y[0].logprob, abs=1e-5)


def test_batched_decoding_equals_one_row_at_a_time():
    model = TinyRNN(seed=3)
    start = torch.tensor([0, 1, 2, 3])
    h0 = torch.randn(4, 5)
    together_g = greedy(model.step, reorder0, h0, start, max_length=15, eos=6)
    together_b = beam_search(model.step, reorder0, h0, start, beam=3, max_length=15, eos=6,
                             alpha=0.6, num_return=3)  # fmt: skip
    assert any(h.finished for h in together_g) and len({len(h.tokens) for h in together_g}) > 1
    for i in range(4):
        (alone,) = greedy(model.step, reorder0, h0[i : i + 1], start[i : i + 1], max_length=15,
                          eos=6)  # fmt: skip
        assert alone.tokens == together_g[i].tokens
        (alone_b,) = beam_search(model.step, reorder0, h0[i : i + 1], start[i : i + 1], beam=3,
                                 max_length=15, eos=6, alpha=0.6, num_return=3)  # fmt: skip
        assert [h.tokens for h in alone_b] == [h.tokens for h in together_b[i]]


def test_reorder_follows_the_beams():
    """The state a step receives is the state of the beam being extended (counters agree)."""
    torch.manual_seed(0)
    table = torch.randn(5, 5)
    logp = table.log_softmax(-1)
    seen = []

    def step(tokens, state):  # state: (B,) number of tokens consumed by this row
        seen.append(state.clone())
        return logp[tokens], state + 1

    beam_search(step, reorder0, torch.zeros(2), 0, beam=3, max_length=4, eos=4, batch_size=2)
    for t, s in enumerate(seen):
        assert torch.equal(s, torch.full_like(s, t))


def test_filter_logprobs_hand_computed():
    lp = torch.tensor([[0.1, 0.4, 0.2, 0.3]]).log()
    assert torch.isinf(filter_logprobs(lp, top_k=2)).tolist() == [[True, False, True, False]]
    # nucleus 0.6: 0.4 (before 0) then 0.3 (before 0.4) kept; 0.2 comes after 0.7 >= 0.6
    assert torch.isinf(filter_logprobs(lp, top_p=0.6)).tolist() == [[True, False, True, False]]
    assert torch.isinf(filter_logprobs(lp, top_p=0.7)).tolist() == [[True, False, True, False]]
    assert torch.isinf(filter_logprobs(lp, top_p=0.71)).tolist() == [[True, False, False, False]]
    assert torch.isinf(filter_logprobs(lp, top_p=0.01)).tolist() == [[True, False, True, True]]


def test_filter_top_k_keeps_exactly_k():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 1.0]])
    kept = filter_logprobs(logits, top_k=2).isfinite()[0].tolist()
    assert kept == [False, True, False, True, False]


def test_filter_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    logits = probs.log()
    kept = lambda p: filter_logprobs(logits, top_p=p).isfinite()[0].tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]  # 0.4 alone reaches 0.4
    assert kept(0.41) == [False, True, False, True]  # needs 0.4 + 0.3
    assert kept(0.75) == [False, True, True, True]
    assert kept(1e-9) == [False, True, False, False]  # always at least one
    assert kept(1.0) == [True] * 4


def test_sampling_matches_the_distribution_and_is_reproducible():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logp = probs.log()

    def step(tokens, state):
        return logp.expand(tokens.shape[0], 3), state

    n = 20000
    hyps = sample(step, reorder0, None, 0, max_length=1, batch_size=n,
                  generator=torch.Generator().manual_seed(5))  # fmt: skip
    counts = torch.bincount(torch.tensor([h.tokens[0] for h in hyps]), minlength=3).double() / n
    assert torch.allclose(counts, probs.double(), atol=0.015)
    # temperature 0.5 squares the odds: p^2 / sum p^2
    hyps = sample(step, reorder0, None, 0, max_length=1, batch_size=n, temperature=0.5,
                  generator=torch.Generator().manual_seed(6))  # fmt: skip
    counts = torch.bincount(torch.tensor([h.tokens[0] for h in hyps]), minlength=3).double() / n
    assert torch.allclose(counts, (probs**2 / (probs**2).sum()).double(), atol=0.015)
    a = sample(step, reorder0, None, 0, max_length=1, batch_size=50,
               generator=torch.Generator().manual_seed(7))  # fmt: skip
    b = sample(step, reorder0, None, 0, max_length=1, batch_size=50,
               generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert [h.tokens for h in a] == [h.tokens for h in b]
    assert hyps[0].logprob == pytest.approx(math.log(probs[hyps[0].tokens[0]]))


def test_top_k_one_and_temperature_zero_are_greedy():
    model = TinyRNN(seed=4)
    start, h0 = torch.tensor([0, 1, 2]), torch.randn(3, 5)
    g = greedy(model.step, reorder0, h0, start, max_length=10, eos=6)
    for kwargs in ({"top_k": 1}, {"temperature": 0.0}):
        s = sample(model.step, reorder0, h0, start, max_length=10, eos=6, **kwargs)
        assert [h.tokens for h in s] == [h.tokens for h in g]


def test_errors_name_the_argument():
    step, _ = markov(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="max_length"):
        greedy(step, reorder0, torch.zeros(1), 0, max_length=-1, batch_size=1)
    with pytest.raises(ValueError, match="num_return"):
        beam_search(step, reorder0, torch.zeros(1), 0, beam=2, max_length=3, num_return=3,
                    batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match="batch_size"):
        greedy(step, reorder0, torch.zeros(1), 0, max_length=3)

    def bad(tokens, state):
        return torch.full((tokens.shape[0], 3), math.nan), state

    with pytest.raises(ValueError, match="NaN"):
        greedy(bad, reorder0, torch.zeros(1), 0, max_length=3, batch_size=1)
    with pytest.raises(ValueError, match="top_p"):
        sample(step, reorder0, torch.zeros(1), 0, max_length=3, batch_size=1, top_p=0.0)


def test_max_length_zero_returns_empty_hypotheses():
    step, _ = markov(torch.zeros(3, 3))
    assert greedy(step, reorder0, torch.zeros(2), 0, max_length=0, batch_size=2)[1].tokens == []
    (b,) = beam_search(step, reorder0, torch.zeros(1), 0, beam=2, max_length=0, batch_size=1)
    assert b == [] or b[0].tokens == []
