"""Models with hand-set weights for the analysis tests: a planted bracket counter and quote flag."""

from __future__ import annotations

import numpy as np
import torch

from rnnlab.data import Vocab
from rnnlab.models import CharLM, CharLMConfig

PLANTED_CHARS = ' "()ab'
BIG = 30.0


def planted_lstm(seed: int = 0) -> tuple[CharLM, Vocab]:
    """A 1-layer LSTM CharLM (H=4, one-hot embedding) whose unit 0 counts bracket depth in its
    cell state and whose unit 1 flips sign at every double quote; units 2 and 3 are random.

    Gate blocks (i, f, g, o), H rows each. Unit 0: i = f = o = 1 always, g = +1 on '(' and -1 on
    ')', 0 otherwise, so c0 = depth exactly. Unit 1: on '"' the input gate opens and the forget
    gate shuts, g = tanh(5 - 20 h1) writes the opposite sign of the previous h1; elsewhere i = 0,
    f = 1 hold it.
    """
    vocab = Vocab.from_text(PLANTED_CHARS)
    V, H = len(vocab), 4
    col = {ch: vocab.tokens.index(ch) for ch in PLANTED_CHARS}
    model = CharLM(
        CharLMConfig(V, "lstm", hidden_size=H, num_layers=1, embedding_size=V, backend="reference")
    )
    g = torch.Generator().manual_seed(seed)
    w_ih = torch.zeros(4 * H, V)
    w_hh = torch.zeros(4 * H, H)
    b = torch.zeros(4 * H)
    i, f, gg, o = 0, H, 2 * H, 3 * H  # row offsets of the gate blocks
    # unit 0: the bracket counter
    b[i + 0] = b[f + 0] = b[o + 0] = BIG
    w_ih[gg + 0, col["("]] = BIG
    w_ih[gg + 0, col[")"]] = -BIG
    # unit 1: the quote flag
    b[i + 1] = -BIG
    w_ih[i + 1, col['"']] = 2 * BIG
    b[f + 1] = BIG
    w_ih[f + 1, col['"']] = -2 * BIG
    b[gg + 1] = 5.0
    w_hh[gg + 1, 1] = -20.0
    b[o + 1] = BIG
    # units 2, 3: noise
    for u in (2, 3):
        for off in (i, f, gg, o):
            w_ih[off + u] = 0.5 * torch.randn(V, generator=g)
            w_hh[off + u] = 0.5 * torch.randn(H, generator=g)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.eye(V))
        model.rnn.weight_ih_l0.copy_(w_ih)
        model.rnn.weight_hh_l0.copy_(w_hh)
        model.rnn.bias_ih_l0.copy_(b)
        model.rnn.bias_hh_l0.zero_()
        model.head.weight.copy_(0.1 * torch.randn(V, H, generator=g))
        model.head.bias.zero_()
    return model.eval(), vocab


def planted_text(n: int, seed: int = 0) -> str:
    """Random text over ``PLANTED_CHARS`` with nested brackets (depth 0..6) and quoted spans."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    depth = 0
    for _ in range(n):
        r = rng.random()
        if r < 0.12 and depth < 6:
            out.append("(")
            depth += 1
        elif r < 0.24 and depth > 0:
            out.append(")")
            depth -= 1
        elif r < 0.27:
            out.append('"')
        else:
            out.append(rng.choice(list("ab ")))
    return "".join(out)


XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>"


def tiny_viewer(text: str | None = None, seed: int = 0):
    """(ViewerData, text) for a random 1-layer LSTM CharLM over ``text`` whose second half (the
    viewer's window) holds the XSS payload; a fresh model, no training needed to render."""
    from rnnlab.analysis import analyze
    from rnnlab.viewer import viewer_data

    if text is None:
        text = ('the cat (sat) on "the" mat;\n' * 4) + XSS + ' said "x" </script>\n'
        text = "a" * (len(text) - 1) + "\n" + text  # pad so the whole text above is held out
    vocab = Vocab.from_text(text)
    torch.manual_seed(seed)
    model = CharLM(
        CharLMConfig(len(vocab), "lstm", hidden_size=8, num_layers=1, backend="reference")
    ).eval()
    analysis = analyze(model, vocab.encode(text), text, view_chars=len(text))
    return viewer_data(analysis, vocab.tokens, model), text
