"""IndRNN and the LayerNorm LSTM / GRU in ``rnnlab train``, against the plain nn.GRU / nn.LSTM
char-LM loops: at equal hidden size, and at equal parameter count (the baseline's hidden size
chosen so that its whole char-LM has about as many parameters as the new cell's). Each cell also
runs on ``backend="reference"``: for IndRNN the measure of its C++ element-wise recurrence, for the
LayerNorm cells (whose ``auto`` is the same loop) the measure of folding the embedding lookup.

    .venv/bin/python bench/newer_cells.py                       # H128 L1 and H256 L2
    .venv/bin/python bench/newer_cells.py --sizes 256x2 --repeats 3

Every number is a child process of ``bench/trainer.py`` (the same measurements as its training
table: rnnlab's ``train()`` differenced over two run lengths, the baseline's median step), so the
columns compare with that table's. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trainer import DATA, median_of  # noqa: E402
from workloads import BaselineCharLM  # noqa: E402

NEW_CELLS = ("indrnn", "layernorm_lstm", "layernorm_gru")
BATCH_SEQ = {1: (32, 64), 2: (64, 100)}  # (B, T) by layers, as trainer.SIZES


def parameters(cell: str, vocab: int, hidden: int, layers: int) -> int:
    """A char-LM's parameter count (embedding E = H, recurrence, head)."""
    if cell in ("gru", "lstm"):
        model = BaselineCharLM(cell, vocab, hidden, layers)
    else:
        from rnnlab.models import CharLM, CharLMConfig

        config = CharLMConfig(vocab_size=vocab, cell=cell, hidden_size=hidden, num_layers=layers)
        model = CharLM(config)
    return sum(p.numel() for p in model.parameters())


def equal_parameters(twin: str, target: int, vocab: int, layers: int) -> int:
    """The hidden size of a ``twin`` char-LM whose parameter count is nearest ``target``."""
    lo, hi = 1, 4096
    while lo < hi:  # the count grows with H: the smallest H with count >= target
        mid = (lo + hi) // 2
        if parameters(twin, vocab, mid, layers) < target:
            lo = mid + 1
        else:
            hi = mid
    below = max(1, lo - 1)
    return min((below, lo), key=lambda h: abs(parameters(twin, vocab, h, layers) - target))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128x1,256x2", help="HxL, comma-separated")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--data", type=Path, default=DATA)
    a = p.parse_args()
    from rnnlab.data import prepare_corpus

    vocab = len(prepare_corpus(a.data, split=(0.9, 0.1, 0.0)).vocab)
    rows = ["| size | model | backend | params | chars/s | vs nn.GRU H | vs nn.LSTM H | "
            "vs nn.GRU, same params | vs nn.LSTM, same params |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    cache: dict[tuple[str, int], float] = {}
    for size in a.sizes.split(","):
        H, L = (int(v) for v in size.split("x"))
        B, T = BATCH_SEQ[min(L, 2)]
        dims = {"layers": L, "batch": B, "seq": T, "seconds": a.seconds, "data": a.data}
        label = f"H{H} L{L} B{B} T{T}"

        def baseline(twin: str, hidden: int, dims: dict = dims, label: str = label,
                     L: int = L) -> float:  # fmt: skip
            if (twin, hidden) not in cache:
                r = median_of("baseline", a.repeats, cell=twin, hidden=hidden, **dims)
                cache[(twin, hidden)] = r["chars_per_s"]
                rows.append(f"| {label} | nn.{twin.upper()} H{hidden} | torch | "
                            f"{parameters(twin, vocab, hidden, L):,} | "
                            f"{cache[(twin, hidden)]:,.0f} | | | | |")  # fmt: skip
                print(rows[-1], flush=True)
            return cache[(twin, hidden)]

        gru, lstm = baseline("gru", H), baseline("lstm", H)
        for cell in NEW_CELLS:
            count = parameters(cell, vocab, H, L)
            same = {t: equal_parameters(t, count, vocab, L) for t in ("gru", "lstm")}
            base_same = {t: baseline(t, same[t]) for t in same}
            for backend in ("auto", "reference"):
                r = median_of("rnnlab", a.repeats, cell=cell, hidden=H, backend=backend, **dims)
                rate = r["chars_per_s"]
                rows.append(f"| {label} | {cell} H{H} | {backend} | {count:,} | {rate:,.0f} | "
                            f"{rate / gru:.2f}x | {rate / lstm:.2f}x | "
                            f"{rate / base_same['gru']:.2f}x (H{same['gru']}) | "
                            f"{rate / base_same['lstm']:.2f}x (H{same['lstm']}) |")  # fmt: skip
                print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
