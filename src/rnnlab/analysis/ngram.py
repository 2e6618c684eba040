"""An n-gram character model (n up to 20; interpolated Kneser-Ney or Witten-Bell), and the per-
character error analysis of the RNN against it.

Karpathy, Johnson & Fei-Fei 2015 ("Visualizing and Understanding Recurrent Networks", section 4.3)
compare the LSTM with n-gram models fitted on the same training split, per character, and break
the difference down by character class and by the distance into a word or a line. Our baseline
interpolates every order down to add-one unigrams, a proper distribution at each:

    Kneser-Ney:  P(c | u) = max(N(u, c) - D, 0) / N(u) + D T(u) / N(u) * P(c | u')
    Witten-Bell: P(c | u) = (N(u, c) + T(u) P(c | u')) / (N(u) + T(u))

with u' the context u without its first character, N(u, c) the count of u followed by c (for
Kneser-Ney below the top order: the number of distinct characters seen before u c), N(u) their
sum over c and T(u) the number of distinct c; an unseen context falls back to P(c | u').

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
    if len(table_keys) == 0:
        return np.zeros(len(keys), np.float64)
    pos = np.minimum(np.searchsorted(table_keys, keys), len(table_keys) - 1)
    return np.where(table_keys[pos] == keys, table_values[pos], 0).astype(np.float64)


SMOOTHINGS = ("kneser-ney", "witten-bell")
MAX_DISCOUNT = 0.95


def ngram_probs(
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    vocab_size: int,
    order: int = 20,
    smoothing: str = "kneser-ney",
) -> np.ndarray:
    """(N_test,) probability an order-``order`` model fitted on ``train_ids`` gives each test
    character given the (up to ``order - 1``) test characters before it.

    ``kneser-ney`` (default): interpolated Kneser-Ney (Kneser & Ney 1995; Chen & Goodman 1998),
    one discount per order D = n1 / (n1 + 2 n2) (at most 0.95), raw counts at the top order and
    continuation counts (distinct left extensions) below it. ``witten-bell``: interpolated
    Witten-Bell, whose weight 1/2 on every once-seen context makes it degrade above n = 5 on
    text (measured).
    """
    if order < 1:
        raise ValueError(f"order: expected a positive integer, got {order}")
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing: expected one of {'|'.join(SMOOTHINGS)}, got {smoothing!r}")
    train = np.asarray(train_ids, np.uint64)
    test = np.asarray(test_ids, np.uint64)
    if len(train) < 3 or len(test) == 0:
        raise ValueError("train_ids/test_ids: need at least 3 training and 1 test characters")
    kn = smoothing == "kneser-ney"
    g_train, g_test = train + np.uint64(1), test + np.uint64(1)  # G_1: single characters
    if kn and order > 1:  # continuation unigram: distinct left neighbours of each character
        _, first = np.unique(_next_hash(g_train, train)[1:], return_index=True)
        base = np.bincount(train[1:][first].astype(np.int64), minlength=vocab_size)
    else:
        base = np.bincount(train.astype(np.int64), minlength=vocab_size)
    p = (base[test.astype(np.int64)] + 1.0) / (base.sum() + vocab_size)  # P_0, add-one
    position = np.arange(len(test))
    for k in range(1, order):  # context length k
        pair_train, pair_test = _next_hash(g_train, train), _next_hash(g_test, test)
        # pairs (u, c) end at positions k .. N-1, their contexts u at k-1 .. N-2
        pair_keys, first, counts = np.unique(pair_train[k:], return_index=True, return_counts=True)
        pair_ctx = g_train[k - 1 : -1][first]
        if kn and k < order - 1 and len(train) > k + 1:
            # N'(u, c): distinct a with (a, u, c) seen = distinct (k+2)-grams ending in (u, c)
            _, ext_first = np.unique(_next_hash(pair_train, train)[k + 1 :], return_index=True)
            cont_keys, cont = np.unique(pair_train[k + 1 :][ext_first], return_counts=True)
            counts = _lookup(pair_keys, cont_keys, cont)
        keep = counts > 0
        pair_keys, counts, pair_ctx = pair_keys[keep], counts[keep], pair_ctx[keep]
        ctx_keys, inverse = np.unique(pair_ctx, return_inverse=True)
        total = np.bincount(inverse, weights=counts)  # N(u), or N'(u)
        types = np.bincount(inverse).astype(np.float64)  # T(u): distinct successors
        q_ctx = g_test[np.maximum(position - 1, 0)]
        n_u = _lookup(q_ctx, ctx_keys, total)
        t_u = _lookup(q_ctx, ctx_keys, types)
        n_uc = _lookup(pair_test, pair_keys, counts)
        seen = (position >= k) & (n_u > 0)
        den = np.maximum(n_u, 1.0)
        if kn:
            n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
            # D -> 1 (no n2) would discard the level's counts entirely: cap it
            d = min(n1 / (n1 + 2 * n2), MAX_DISCOUNT) if n1 else 0.5
            new = np.maximum(n_uc - d, 0.0) / den + d * t_u / den * p
        else:
            new = (n_uc + t_u * p) / np.maximum(n_u + t_u, 1.0)
        p = np.where(seen, new, p)
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
