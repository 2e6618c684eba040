"""The n-gram baseline (Kneser-Ney and Witten-Bell over hashed counts) against plain dictionary
implementations of the same formulas, and the error analysis breakdown."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from rnnlab.analysis.ngram import char_class, error_analysis, ngram_probs


def _kneser_ney(train: list[int], test: list[int], V: int, order: int) -> np.ndarray:
    N = len(train)
    raw: dict[int, dict[tuple, Counter]] = {k: defaultdict(Counter) for k in range(1, order)}
    cont: dict[int, dict[tuple, Counter]] = {k: defaultdict(Counter) for k in range(1, order)}
    for k in range(1, order):
        for j in range(k, N):
            raw[k][tuple(train[j - k : j])][train[j]] += 1
        for g in {tuple(train[j - k - 1 : j + 1]) for j in range(k + 1, N)}:
            cont[k][g[1:-1]][g[-1]] += 1  # one per distinct left neighbour g[0]
    if order == 1:
        base = Counter(train)
    else:
        base = Counter(c for _, c in {(train[j - 1], train[j]) for j in range(1, N)})
    discount = {}
    for k in range(1, order):
        table = raw[k] if k == order - 1 else cont[k]
        counts = [v for succ in table.values() for v in succ.values()]
        n1, n2 = counts.count(1), counts.count(2)
        discount[k] = min(n1 / (n1 + 2 * n2), 0.95) if n1 else 0.5
    out = []
    for i, c in enumerate(test):
        p = (base[c] + 1) / (sum(base.values()) + V)
        for k in range(1, order):
            if i < k:
                break
            table = raw[k] if k == order - 1 else cont[k]
            succ = table.get(tuple(test[i - k : i]))
            if not succ:
                continue
            n, t, d = sum(succ.values()), len(succ), discount[k]
            p = max(succ[c] - d, 0) / n + d * t / n * p
        out.append(p)
    return np.array(out)


def _witten_bell(train: list[int], test: list[int], V: int, order: int) -> np.ndarray:
    pairs: dict[tuple, Counter] = defaultdict(Counter)
    for k in range(1, order):
        for j in range(k, len(train)):
            pairs[tuple(train[j - k : j])][train[j]] += 1
    uni = Counter(train)
    out = []
    for i, c in enumerate(test):
        p = (uni[c] + 1) / (len(train) + V)
        for k in range(1, order):
            if i < k:
                break
            succ = pairs.get(tuple(test[i - k : i]))
            if not succ:
                continue
            n, t = sum(succ.values()), len(succ)
            p = (succ[c] + t * p) / (n + t)
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("smoothing", ["kneser-ney", "witten-bell"])
def test_matches_dictionary_counts(order, smoothing):
    rng = np.random.default_rng(order)
    V = 4
    base = rng.integers(0, V, 40).tolist()
    train = (base * 12)[:400] + rng.integers(0, V, 100).tolist()  # repeats give long contexts
    test = base[:30] + rng.integers(0, V, 30).tolist()
    got = ngram_probs(np.array(train), np.array(test), V, order, smoothing)
    reference = _kneser_ney if smoothing == "kneser-ney" else _witten_bell
    np.testing.assert_allclose(got, reference(train, test, V, order), rtol=1e-12)


@pytest.mark.parametrize("smoothing", ["kneser-ney", "witten-bell"])
def test_is_a_distribution(smoothing):
    rng = np.random.default_rng(0)
    V = 5
    train = rng.integers(0, V, 2000)
    context = train[100:110].tolist()
    probs = [ngram_probs(train, np.array(context + [c]), V, 8, smoothing)[-1] for c in range(V)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="smoothing"):
        ngram_probs(train, train, V, 3, "good-turing")


def test_high_order_memorises_a_repeated_text():
    text = np.array(list(range(20)) * 10)  # a 20-periodic sequence: order >= 2 predicts it
    for smoothing in ("kneser-ney", "witten-bell"):
        p = ngram_probs(text, text[:60], 20, 20, smoothing)
        assert p[19:].min() > 0.9  # from the first full 19-character context on
    with pytest.raises(ValueError, match="order"):
        ngram_probs(text, text, 20, order=0)


def test_error_analysis_groups():
    text = "ab cd\nefg h"
    rnn_loss = np.full(len(text), np.log(2.0))  # p = 0.5: not an error
    rnn_loss[0] = np.nan
    rnn_loss[1] = 3.0  # an error on 'b'
    ngram_p = np.full(len(text), 0.1)  # every character an error
    rows = error_analysis(text, rnn_loss, ngram_p)
    (all_row,) = rows["all"]
    assert all_row.count == len(text) - 1
    assert all_row.ngram_error == 1.0
    assert all_row.rnn_error == pytest.approx(1 / (len(text) - 1))
    assert all_row.rnn_only == pytest.approx(1 - 1 / (len(text) - 1))
    classes = {r.group: r.count for r in rows["char_class"]}
    assert classes == {"letter": 7, "space": 2, "newline": 1}
    word = {r.group: r.count for r in rows["word_position"]}
    assert word["0"] == 3 and word["1"] == 3 and word["2"] == 1  # 'a' is skipped (NaN)
    assert sum(r.count for r in rows["line_position"]) == len(text) - 1
    assert char_class("\t") == "space" and char_class("7") == "digit"
