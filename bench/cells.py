"""Training speed of the newer cells in ``rnnlab train`` against the plain nn.GRU / nn.LSTM char-LM
loops, at equal hidden size and at equal parameter count, in one run; chars/s and ratios printed.

    .venv/bin/python bench/cells.py                    # H384 L1 B32 T64 (the char-LM default)
    .venv/bin/python bench/cells.py --sizes 128x1x32x64,256x2x64x100 --repeats 3 --seconds 5

The cells: minGRU and minLSTM (Feng et al. 2024), IndRNN (Li et al. 2018), LayerNorm LSTM and GRU
(Ba et al. 2016), and rnnlab's own gru and lstm for comparison. Each number is one of
``bench/trainer.py``'s measurements, in its own process: rnnlab through ``rnnlab.training.train``
(what ``rnnlab train`` runs: two whole runs differenced, the steady rate left), the baseline the
plain loop nn.Embedding -> nn.GRU/nn.LSTM -> nn.Linear with Adam and clipping on the same batches
(median step); the median of ``--repeats`` runs each. Every newer cell runs with ``--backend
auto`` and with its other path: the log-space parallel scan (``fused``) for minGRU/minLSTM, the
reference loop for IndRNN (the measure of its C++ loop) and the LayerNorm cells (the measure of
folding the embedding lookup). "Same params": the plain model's hidden size whose whole char-LM
(embedding, recurrence, head) has the parameter count nearest the cell's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trainer import DATA, median_of  # noqa: E402
from workloads import BaselineCharLM  # noqa: E402

NEWER_CELLS = ("mingru", "minlstm", "indrnn", "layernorm_lstm", "layernorm_gru")
OTHER_PATH = {"mingru": "fused", "minlstm": "fused", "indrnn": "reference",
              "layernorm_lstm": "reference", "layernorm_gru": "reference"}  # fmt: skip
PATH_NAME = {"fused": "scan", "reference": "loop"}


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


def table(a: argparse.Namespace) -> list[str]:
    from rnnlab.data import prepare_corpus

    vocab = len(prepare_corpus(a.data, split=(0.9, 0.1, 0.0)).vocab)
    rows = ["| size | model | backend | parameters | chars/s | vs nn.GRU (same H) | "
            "vs nn.LSTM (same H) | vs nn.GRU (same params) | vs nn.LSTM (same params) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for size in a.sizes.split(","):
        H, L, B, T = (int(v) for v in size.split("x"))
        dims = {"layers": L, "batch": B, "seq": T, "seconds": a.seconds, "data": a.data}
        label = f"H{H} L{L} B{B} T{T}"
        plain: dict[tuple[str, int], float] = {}

        def baseline(twin: str, h: int, dims: dict = dims, label: str = label, L: int = L,
                     plain: dict = plain) -> float:  # fmt: skip
            if (twin, h) not in plain:
                rate = median_of("baseline", a.repeats, cell=twin, hidden=h, **dims)["chars_per_s"]
                plain[twin, h] = rate
                n = parameters(twin, vocab, h, L)
                rows.append(f"| {label} | plain nn.{twin.upper()} H{h} | torch | {n:,} | "
                            f"{rate:,.0f} | | | | |")  # fmt: skip
                print(rows[-1], flush=True)
            return plain[twin, h]

        gru, lstm = baseline("gru", H), baseline("lstm", H)
        runs = [(c, b) for c in NEWER_CELLS for b in ("auto", OTHER_PATH[c])]
        for cell, backend in [*runs, ("gru", "auto"), ("lstm", "auto")]:
            rate = median_of("rnnlab", a.repeats, cell=cell, hidden=H, backend=backend,
                             **dims)["chars_per_s"]  # fmt: skip
            count = parameters(cell, vocab, H, L)
            same = " | "
            if cell in NEWER_CELLS:
                twins = {t: equal_parameters(t, count, vocab, L) for t in ("gru", "lstm")}
                g, m = (baseline(t, twins[t]) for t in ("gru", "lstm"))
                same = (f"{rate / g:.2f}x (H{twins['gru']}) | "
                        f"{rate / m:.2f}x (H{twins['lstm']})")  # fmt: skip
            how = PATH_NAME.get(backend, backend) if backend != "auto" else "auto"
            rows.append(f"| {label} | rnnlab {cell} | {how} | {count:,} | {rate:,.0f} | "
                        f"{rate / gru:.2f}x | {rate / lstm:.2f}x | {same} |")  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="384x1x32x64", help="comma-separated HxLxBxT")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    p.add_argument("--seconds", type=float, default=4.0, help="sustained seconds per measurement")
    p.add_argument("--data", type=Path, default=DATA)
    a = p.parse_args()
    if not a.data.is_file():
        p.error(f"{a.data}: no such file; pass --data with a text corpus")
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, seconds {a.seconds:g}, "
          f"repeats {a.repeats}", flush=True)  # fmt: skip
    print("\n" + "\n".join(table(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
