"""An n-gram character model (n up to 20) with interpolated Witten-Bell backoff, and the per-
character error analysis of the RNN against it.

Karpathy, Johnson & Fei-Fei 2015 ("Visualizing and Understanding Recurrent Networks", section 4.3)
compare the LSTM with n-gram models fitted on the same training split, per character, and break
the difference down by character class and by the distance into a word or a line. Our baseline
smooths with interpolated Witten-Bell (Witten & Bell 1991), a proper distribution at every order:

    P_n(c | u) = (N(u, c) + T(u) * P_{n-1}(c | u')) / (N(u) + T(u))   (u': u minus its first char)
    P_0(c)     = (N(c) + 1) / (N + V)

with N(u, c) the count of context u followed by c, N(u) = sum_c N(u, c) and T(u) the number of
distinct c seen after u; an unseen context (N(u) = 0) falls back to P_{n-1}.

Counting uses 64-bit polynomial hashes of every substring ending at each position (one numpy array
per order: G_k[j] hashes text[j-k+1 .. j]), so the pair (u, c) of order k is G_{k+1}[j] and its
context is G_k[j-1]; tables are built one order at a time (np.unique, searchsorted), so memory is
a few arrays of the training length, never a dict of strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio); wraps mod 2^64


def _next_hash(prev: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """G_{k+1}[j] = G_k[j-1] * M + ids[j] + 1 (mod 2^64), for j >= 1; G[0] of order > 1 unused."""
    out = np.empty_like(prev)
    with np.errstate(over="ignore"):
        out[1:] = prev[:-1] * _MULT + ids[1:] + np.uint64(1)
    out[0] = np.uint64(0)
    return out


def _lookup(keys: np.ndarray, table_keys: np.ndarray, table_values: np.ndarray) -> np.ndarray:
    """table_values at each key's position in the sorted ``table_keys``; 0 where absent."""
    pos = np.searchsorted(table_keys, keys)
    pos = np.minimum(pos, len(table_keys) - 1)
    found = table_keys[pos] == keys
    return np.where(found, table_values[pos], 0)


def ngram_probs(
    train_ids: np.ndarray, test_ids: np.ndarray, vocab_size: int, order: int = 20
) -> np.ndarray:
    """(N_test,) probability an order-``order`` Witten-Bell model fitted on ``train_ids`` gives
    each test character given the (up to ``order - 1``) test characters before it."""
    if order < 1:
        raise ValueError(f"order: expected a positive integer, got {order}")
    train = np.asarray(train_ids, np.uint64)
    test = np.asarray(test_ids, np.uint64)
    if len(train) < 2 or len(test) == 0:
        raise ValueError("train_ids/test_ids: need at least 2 training and 1 test characters")
    counts = np.bincount(train.astype(np.int64), minlength=vocab_size).astype(np.float64)
    p = (counts[test.astype(np.int64)] + 1.0) / (len(train) + vocab_size)  # P_0
    g_train = train + np.uint64(1)  # G_1: single characters
    g_test = test + np.uint64(1)
    for k in range(1, order):  # context length k
        ctx_train, pair_train = g_train, _next_hash(g_train, train)
        ctx_test, pair_test = g_test, _next_hash(g_test, test)
        # contexts followed by a character: positions k-1 .. N-2; pairs: k .. N-1
        ctx_keys, ctx_counts = np.unique(ctx_train[k - 1 : -1], return_counts=True)
        pair_keys, pair_first, pair_counts = np.unique(
            pair_train[k:], return_index=True, return_counts=True
        )
        # T(u): distinct successors of each context = number of distinct pairs sharing it
        pair_ctx = ctx_train[k - 1 : -1][pair_first]
        ctx_of_pairs, types = np.unique(pair_ctx, return_counts=True)
        usable = np.arange(len(test)) >= k  # a test position with k characters before it
        q_ctx = ctx_test[np.maximum(np.arange(len(test)) - 1, 0)]
        n_u = _lookup(q_ctx, ctx_keys, ctx_counts).astype(np.float64)
        t_u = _lookup(q_ctx, ctx_of_pairs, types).astype(np.float64)
        n_uc = _lookup(pair_test, pair_keys, pair_counts).astype(np.float64)
        seen = usable & (n_u > 0)
        p = np.where(seen, (n_uc + t_u * p) / np.maximum(n_u + t_u, 1.0), p)
        g_train, g_test = pair_train, pair_test
    return p


# -- error analysis ------------------------------------------------------------------------------

CHAR_CLASSES = ("letter", "digit", "space", "newline", "punctuation", "other")
POSITION_BUCKETS = (0, 1, 2, 3, 4, 5, 10, 20, 40, 80)  # lower edges; the last is open


def char_class(ch: str) -> str:
    if ch == "\n":
        return "newline"
    if ch.isalpha():
        return "letter"
    if ch.isdigit():
        return "digit"
    if ch.isspace():
        return "space"
    if ch.isprintable():
        return "punctuation"
    return "other"


def _positions(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(index into the current word (-1 outside words), index into the current line)."""
    word = np.full(len(text), -1, np.int64)
    line = np.zeros(len(text), np.int64)
    w = col = 0
    for t, ch in enumerate(text):
        line[t] = col
        col = 0 if ch == "\n" else col + 1
        if ch.isalnum() or ch == "_":
            word[t] = w
            w += 1
        else:
            w = 0
    return word, line


@dataclass
class ErrorRow:
    """One group of characters: their count, mean loss (nats) and error rate of each model (an
    error: the probability of the right character is below 0.5, as in the paper), and the share
    of characters the RNN gets right where the n-gram errs (``rnn_only``) and vice versa."""

    group: str
    count: int
    rnn_loss: float
    ngram_loss: float
    rnn_error: float
    ngram_error: float
    rnn_only: float
    ngram_only: float


def error_analysis(
    text: str, rnn_loss: np.ndarray, ngram_p: np.ndarray
) -> dict[str, list[ErrorRow]]:
    """Per-character comparison: ``text`` (N chars), ``rnn_loss`` (N,) nats (NaN = skip) and
    ``ngram_p`` (N,) probabilities of the same characters. Returns rows ``"all"``, by
    ``"char_class"``, by ``"word_position"`` (0 = a word's first character) and by
    ``"line_position"`` (bucketed by ``POSITION_BUCKETS``)."""
    n = len(text)
    if rnn_loss.shape != (n,) or ngram_p.shape != (n,):
        raise ValueError(f"rnn_loss/ngram_p: expected shape ({n},) each")
    ok = np.isfinite(rnn_loss)
    r_loss = rnn_loss
    g_loss = -np.log(np.maximum(ngram_p, 1e-30))
    r_err = np.exp(-r_loss) < 0.5
    g_err = ngram_p < 0.5
    classes = np.array([char_class(c) for c in text])
    word, line = _positions(text)

    def row(name: str, mask: np.ndarray) -> ErrorRow:
        m = mask & ok
        c = int(m.sum())
        if c == 0:
            return ErrorRow(name, 0, *([float("nan")] * 6))
        return ErrorRow(
            name,
            c,
            float(r_loss[m].mean()),
            float(g_loss[m].mean()),
            float(r_err[m].mean()),
            float(g_err[m].mean()),
            float((~r_err & g_err)[m].mean()),
            float((r_err & ~g_err)[m].mean()),
        )

    def buckets(pos: np.ndarray) -> list[ErrorRow]:
        rows = []
        edges = list(POSITION_BUCKETS) + [np.iinfo(np.int64).max]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            label = str(lo) if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi < edges[-1] else f"{lo}+")
            rows.append(row(label, (pos >= lo) & (pos < hi)))
        return [r for r in rows if r.count]

    return {
        "all": [row("all", np.ones(n, bool))],
        "char_class": [r for r in (row(c, classes == c) for c in CHAR_CLASSES) if r.count],
        "word_position": buckets(word),
        "line_position": buckets(line),
    }
