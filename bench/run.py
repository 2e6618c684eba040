"""rnnlab's benchmark: char-LM training and sampling speed against plain PyTorch, with ratios.

    .venv/bin/python bench/run.py            # the full table (about 10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # a smoke run: smallest size, few steps
    .venv/bin/python bench/run.py --output bench/RESULTS.md

For each size and cell it trains (truncated BPTT, Adam) with: the plain PyTorch baseline
(nn.Embedding -> nn.LSTM/GRU/RNN -> nn.Linear; standard cells only), rnnlab's ``reference``
backend (the hand-written Python loop over a cell's step), ``native`` (torch's oneDNN kernels under
rnnlab) and ``fused`` (rnnlab's C++ engine, with CharLM's embedding folded into layer 0's input
projection; ``fused-nofold`` without the fold), and reports characters/s, achieved GFLOP/s
(forward + backward counted as 3x forward), that rate as a fraction of torch.mm's on the same size's
input-projection GEMM, peak RSS growth over the training steps, and the ratio to the baseline
(MUT cells: GFLOP/s ratio to nn.GRU's). ``auto`` is whichever backend
``rnnlab.kernels.choose_backend`` picks. Then sampling characters/s, 1 and 32 streams. Each
measurement runs in its own process and times the best of several steps: the machine may be shared.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SIZES = [(128, 1, 32, 64), (256, 2, 64, 100), (512, 2, 64, 100)]  # (H, L, B, T)
CELLS = ["rnn", "lstm", "gru", "mut1", "mut2", "mut3"]
STANDARD = ("rnn", "lstm", "gru")


def measure(kind: str, **options: object) -> dict:
    from workloads import run_json

    args = [sys.executable, str(HERE / "workloads.py"), kind]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return run_json(args)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")  # fmt: skip


def train_table(sizes: list, cells: list[str], steps: int, log) -> tuple[list[str], dict]:  # noqa: ANN001
    from rnnlab.kernels import choose_backend

    rows, results = [], {}
    header = ("| size | cell | backend | chars/s | GFLOP/s | of mm | peak MiB | vs baseline |\n"
              "|---|---|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for H, L, B, T in sizes:
        size = f"H{H} L{L} B{B} T{T}"
        dims = {"hidden": H, "layers": L, "batch": B, "seq": T}
        gru_base = None
        for cell in cells:
            mm = measure("mm", cell=cell, **dims)["mm_large_gflops"]
            backends = ["baseline", "reference", "native", "fused-nofold", "fused"]
            if cell not in STANDARD:
                backends = ["reference", "fused-nofold", "fused"]
                if gru_base is None:
                    gru_base = measure("train", cell="gru", backend="baseline", steps=steps, **dims)
            auto = choose_backend(cell, H, torch.device("cpu"), lookup_input=True)  # CharLM
            base = None
            for backend in backends:
                r = measure("train", cell=cell, backend=backend, steps=steps, **dims)
                results[(size, cell, backend)] = r
                if backend == "baseline":
                    base = r
                if cell in STANDARD:
                    ratio = f"{r['chars_per_s'] / base['chars_per_s']:.2f}x"
                else:  # no nn.* MUT: compare achieved GFLOP/s with nn.GRU's at this size
                    ratio = f"{r['gflops'] / gru_base['gflops']:.2f}x GRU"
                name = f"{backend} (auto)" if backend == auto else backend
                rows.append(f"| {size} | {cell} | {name} | {r['chars_per_s']:,.0f} | "
                            f"{r['gflops']:.0f} | {r['gflops'] / mm:.0%} | "
                            f"{r['peak_mib']:.0f} | {ratio} |")  # fmt: skip
                log(rows[-1])
            results[(size, cell, "auto")] = results[(size, cell, auto)]
            results[(size, cell, "mm")] = mm
        if gru_base is not None:
            results[(size, "gru", "baseline_for_mut")] = gru_base
    return [header, *rows], results


def sample_table(hidden: int, layers: int, steps: int, log) -> tuple[list[str], dict]:  # noqa: ANN001
    rows = ["| model | streams | baseline chars/s | rnnlab chars/s | ratio |",
            "|---|---:|---:|---:|---:|"]  # fmt: skip
    results = {}
    for streams in (1, 32):
        dims = {"cell": "lstm", "hidden": hidden, "layers": layers, "streams": streams,
                "steps": steps, "warmup": 5}  # fmt: skip
        base = measure("sample", backend="baseline", **dims)["chars_per_s"]
        ours = measure("sample", backend="fused", **dims)["chars_per_s"]
        results[streams] = (base, ours)
        rows.append(f"| lstm {layers}x{hidden} | {streams} | {base:,.0f} | {ours:,.0f} | "
                    f"{ours / base:.2f}x |")  # fmt: skip
        log(rows[-1])
    return rows, results


def targets(results: dict, samples: dict, sizes: list) -> list[str]:
    """The issue's targets, each marked met or missed from this run's numbers."""
    lines = []

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    small = f"H{sizes[0][0]} L{sizes[0][1]} B{sizes[0][2]} T{sizes[0][3]}"
    for size in {k[0] for k in results}:
        for cell in STANDARD:
            if (size, cell, "auto") not in results:
                continue
            ratio = (
                results[(size, cell, "auto")]["chars_per_s"]
                / results[(size, cell, "baseline")]["chars_per_s"]
            )
            need = 1.3 if size == small else 1.0
            lines.append(f"- {size} {cell}: auto {ratio:.2f}x baseline (target >= {need}x): "
                         f"{mark(ratio >= need)}")  # fmt: skip
        gru = results.get((size, "gru", "baseline_for_mut")) or results.get(
            (size, "gru", "baseline")
        )
        for cell in ("mut1", "mut2", "mut3"):
            if (size, cell, "fused") in results and gru:
                ratio = results[(size, cell, "fused")]["gflops"] / gru["gflops"]
                lines.append(f"- {size} {cell}: fused {ratio:.2f}x nn.GRU's GFLOP/s "
                             f"(target >= 0.9x): {mark(ratio >= 0.9)}")  # fmt: skip
        for cell in CELLS:
            auto, base = results.get((size, cell, "auto")), results.get((size, cell, "baseline"))
            if auto and base:
                ok = auto["peak_mib"] <= base["peak_mib"]
                near = "" if ok or auto["peak_mib"] > base["peak_mib"] * 1.05 else " (by < 5%)"
                lines.append(f"- {size} {cell}: peak memory {auto['peak_mib']:.0f} MiB vs baseline "
                             f"{base['peak_mib']:.0f} (target <=): {mark(ok)}{near}")  # fmt: skip
    big = "H512 L2 B64 T100"
    for cell in STANDARD:
        if (big, cell, "auto") in results:
            g = results[(big, cell, "auto")]["gflops"]
            lines.append(f"- {big} {cell}: auto {g:.0f} GFLOP/s (target >= 110): {mark(g >= 110)}")
    for streams, need in ((1, 5.0), (32, 1.5)):
        if streams in samples:
            base, ours = samples[streams]
            lines.append(f"- sampling lstm, {streams} stream(s): {ours / base:.2f}x nn.LSTM "
                         f"(target >= {need}x): {mark(ours / base >= need)}")  # fmt: skip
    return sorted(lines)


def main() -> None:
    p = argparse.ArgumentParser(description="rnnlab benchmark (see the module docstring)")
    p.add_argument("--quick", action="store_true", help="smallest size, lstm+mut1, few steps")
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells")
    p.add_argument("--output", type=Path, help="also write the tables as Markdown here")
    a = p.parse_args()
    cells = a.cells.split(",")
    sizes, steps = SIZES, 4
    if a.quick:
        sizes, steps, cells = SIZES[:1], 2, [c for c in cells if c in ("lstm", "mut1")]

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"machine: {machine()}")
    train_rows, results = train_table(sizes, cells, steps, log)
    hidden, layers = (128, 1) if a.quick else (512, 2)
    sample_rows, samples = sample_table(hidden, layers, 20 if a.quick else 100, log)
    target_lines = targets(results, samples, sizes)
    report = "\n".join([
        f"Machine: {machine()}.", "", "## Training (char-LM, truncated BPTT, Adam)", "",
        *train_rows, "", "## Sampling (one character per step, multinomial)", "", *sample_rows,
        "", "## Targets", "", *target_lines, "",
    ])  # fmt: skip
    print("\n" + report)
    if a.output:
        a.output.write_text(report)


if __name__ == "__main__":
    main()
