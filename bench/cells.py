"""Training speed of minGRU and minLSTM (Feng et al. 2024) against the plain nn.GRU / nn.LSTM loops,
at equal hidden size and at equal parameter count, in one run; chars/s, ratios printed.

    .venv/bin/python bench/cells.py                   # H384 L1 B32 T64 (the char-LM default)
    .venv/bin/python bench/cells.py --sizes 128x1x32x64,384x1x32x64 --repeats 3 --seconds 5

Each number is one of ``bench/trainer.py``'s measurements, in its own process: rnnlab through
``rnnlab.training.train`` (what ``rnnlab train`` runs: two whole runs differenced, the steady
rate left), the baseline the plain loop nn.Embedding -> nn.GRU/nn.LSTM -> nn.Linear with Adam and
clipping on the same batches (median step); the median of ``--repeats`` runs each. rnnlab's rows:
each minimal cell with ``--backend auto`` (the one-step loop on CPU), with ``--backend fused``
(the log-space parallel scan, ``rnnlab.scan``), and rnnlab's own gru and lstm (the C++ engine /
oneDNN) for comparison. "Equal parameters": the plain model's hidden size whose whole char-LM
(embedding, recurrence, head) has the parameter count closest to the minimal cell's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trainer import DATA, median_of  # noqa: E402

MIN_CELLS = ("mingru", "minlstm")


def char_lm_parameters(cell: str, vocab: int, hidden: int, layers: int) -> int:
    """Parameters of the char-LM (E = H): embedding, recurrent layers, head."""
    from rnnlab.cells import cell_class

    if cell in ("gru", "lstm"):
        gates = 3 if cell == "gru" else 4  # torch.nn: W_ih, W_hh, b_ih, b_hh per layer
        per_layer = gates * hidden * (2 * hidden + 2)
    else:
        shapes = cell_class(cell).parameter_shapes(hidden, hidden)
        per_layer = sum(_numel(s) for s in shapes.values())
    return vocab * hidden + layers * per_layer + hidden * vocab + vocab


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def equal_parameters(cell: str, twin: str, vocab: int, hidden: int, layers: int) -> int:
    """The ``twin`` (gru|lstm) hidden size whose char-LM is closest in size to ``cell``'s."""
    target = char_lm_parameters(cell, vocab, hidden, layers)
    return min(range(8, hidden + 1),
               key=lambda h: abs(char_lm_parameters(twin, vocab, h, layers) - target))  # fmt: skip


def table(a: argparse.Namespace) -> list[str]:
    from rnnlab.data import prepare_corpus

    vocab = len(prepare_corpus(a.data, split=(0.9, 0.1, 0.0)).vocab)
    rows = ["| size | model | H | parameters | chars/s | vs nn.GRU (same H) | "
            "vs nn.LSTM (same H) | vs nn.GRU (same params) | vs nn.LSTM (same params) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    plain: dict[tuple[str, int, int, int, int], float] = {}

    def baseline(twin: str, h: int, L: int, B: int, T: int) -> float:
        if (twin, h, L, B, T) not in plain:
            rate = median_of("baseline", a.repeats, cell=twin, hidden=h, layers=L, batch=B,
                             seq=T, seconds=a.seconds, data=a.data)["chars_per_s"]  # fmt: skip
            plain[twin, h, L, B, T] = rate
            n = char_lm_parameters(twin, vocab, h, L)
            rows.append(f"| H{h} L{L} B{B} T{T} | plain nn.{twin.upper()} | {h} | {n:,} | "
                        f"{rate:,.0f} | | | | |")  # fmt: skip
            print(rows[-1], flush=True)
        return plain[twin, h, L, B, T]

    for size in a.sizes.split(","):
        H, L, B, T = (int(v) for v in size.split("x"))
        gru, lstm = baseline("gru", H, L, B, T), baseline("lstm", H, L, B, T)
        runs = [(c, b) for c in MIN_CELLS for b in ("auto", "fused")]
        for cell, backend in [*runs, ("gru", "auto"), ("lstm", "auto")]:
            dims = {"hidden": H, "layers": L, "batch": B, "seq": T, "seconds": a.seconds}
            ours = median_of("rnnlab", a.repeats, cell=cell, backend=backend, data=a.data, **dims)
            rate = ours["chars_per_s"]
            same, name = " | ", f"rnnlab {cell}"
            if cell in MIN_CELLS:
                g = baseline("gru", equal_parameters(cell, "gru", vocab, H, L), L, B, T)
                m = baseline("lstm", equal_parameters(cell, "lstm", vocab, H, L), L, B, T)
                same = f"{rate / g:.2f}x | {rate / m:.2f}x"
                name += " (scan)" if backend == "fused" else " (loop)"
            n = char_lm_parameters(cell, vocab, H, L)
            rows.append(f"| H{H} L{L} B{B} T{T} | {name} | {H} | {n:,} | {rate:,.0f} | "
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
