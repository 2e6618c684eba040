"""Data-parallel throughput: ``rnnlab train`` in 1 process and in 2 processes (torchrun, gloo) on
the same global batch, characters per second and scaling efficiency, printed as a table.

    .venv/bin/python bench/ddp.py                  # 2 sizes x 3 layouts, 20 s each (~3 min)
    .venv/bin/python bench/ddp.py --seconds 60 --repeats 3
    .venv/bin/python bench/ddp.py --quick          # smoke run: a tiny model, 3 s each

Each measurement is the real command a user types (``python -m rnnlab train`` or ``torchrun
--nproc_per_node 2 -m rnnlab train``): a char-LM (the default 1x384 GRU, and a 2x512 LSTM; the
cell is given, so a new default does not change the bench) on tinyshakespeare for ``--seconds``
of training (``--max-minutes``), its rate read from ``metrics.jsonl`` (rank 0's clock; the ranks
move in lockstep) after the first quarter of the run, so start-up, the engine load and the final
evaluation are left out. Three layouts, the global batch B the same in each:

- 1 process x 1 thread: the baseline of the efficiency;
- 1 process x 2 threads: what one process does with both cores of a 2-core machine;
- 2 processes x 1 thread: data parallel, each rank B/2 streams.

Scaling efficiency = rate(2 processes) / (2 x rate(1 process, 1 thread)). The layouts are
interleaved per repeat and the median is reported; anything else running on the machine moves
the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"
# (cell, H, L, B, T): the default model (a 1x384 GRU, batch 32 x 64) and a 2x512 LSTM
SIZES = [("gru", 384, 1, 32, 64), ("lstm", 512, 2, 64, 100)]
QUICK = [("lstm", 32, 1, 8, 32)]
LAYOUTS = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)


def measure(data: Path, size: tuple[str, int, int, int, int], processes: int, threads: int,
            seconds: float, scratch: Path) -> float:  # fmt: skip
    """Sustained characters per second of one ``rnnlab train`` run."""
    cell, hidden, layers, batch, seq = size
    run = scratch / f"run-{len(list(scratch.iterdir()))}"  # a fresh run directory each time
    args = ["train", str(data), "--out-dir", str(run), "--cell", cell, "--hidden-size", str(hidden),
            "--num-layers", str(layers), "--batch-size", str(batch), "--seq-len", str(seq),
            "--max-minutes", str(seconds / 60), "--max-steps", str(10**12),
            "--eval-every", str(10**12), "--eval-batches", "1", "--sample-length", "0",
            "--log-every", str(10**12), "--threads", str(threads)]  # fmt: skip
    launcher = [sys.executable, "-m", "rnnlab"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={processes}", "-m", "rnnlab"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench/ddp.py: {' '.join(launcher)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["elapsed_s"] >= records[-1]["elapsed_s"] / 4)
    end = records[-1]
    return (end["step"] - start["step"]) * batch * seq / (end["elapsed_s"] - start["elapsed_s"])


def table(data: Path, sizes: list, seconds: float, repeats: int) -> list[str]:
    rows = [
        "| model, global batch B x T | 1 process x 1 thread | 1 process x 2 threads "
        "| 2 processes x 1 thread | speed-up vs 1x1 | scaling efficiency "
        "| vs 1 process x 2 threads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            rates: dict[tuple[int, int], list[float]] = {layout: [] for layout in LAYOUTS}
            for _ in range(repeats):
                for layout in LAYOUTS:  # interleaved: a slow minute hurts every layout alike
                    rates[layout].append(measure(data, size, *layout, seconds, Path(tmp)))
            one, both, ddp = (statistics.median(rates[layout]) for layout in LAYOUTS)
            cell, h, n, b, t = size
            rows.append(
                f"| {n}x{h} {cell.upper()}, {b} x {t} | {one:,.0f} chars/s | {both:,.0f} chars/s "
                f"| {ddp:,.0f} chars/s | {ddp / one:.2f}x | {ddp / (2 * one):.0%} "
                f"| {ddp / both:.2f}x |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="training text (tinyshakespeare)")
    p.add_argument("--seconds", type=float, default=20.0, help="training seconds per run")
    p.add_argument("--repeats", type=int, default=1, help="runs per layout (median)")
    p.add_argument("--quick", action="store_true", help="a tiny model, 3 s per run (smoke)")
    a = p.parse_args()
    if not a.data.is_file():
        p.error(f"{a.data}: no such file; pass --data with a text corpus")
    sizes = QUICK if a.quick else SIZES
    seconds = 3.0 if a.quick else a.seconds
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {seconds:g} s per run, "
          f"{a.repeats} repeat(s), data {a.data.name}", flush=True)  # fmt: skip
    rows = table(a.data, sizes, seconds, a.repeats)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
