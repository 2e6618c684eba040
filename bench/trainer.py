"""What users run, timed as they run it: ``rnnlab train`` and ``rnnlab sample`` against the plain
PyTorch loops a user would write, at sustained throughput, ratios printed.

    .venv/bin/python bench/trainer.py                   # every cell x 3 sizes + sampling
    .venv/bin/python bench/trainer.py --repeats 3       # median of 3 interleaved runs
    .venv/bin/python bench/trainer.py --quick           # smoke run: smallest size, lstm + mut1
    .venv/bin/python bench/trainer.py --only sample     # the sampling table alone
    PYTHONPATH=/tmp/old/src .venv/bin/python bench/trainer.py --only sample --sample-run /tmp/r
                                                        # another tree's sampling, on one model

Training. rnnlab is timed through ``rnnlab.training.train`` (the function behind
``rnnlab train``; the CLI adds only argument parsing) with the defaults a user gets (Adam, cosine
schedule, clipping at 5, metrics log, non-finite guard, checkpoint at the end) on
tinyshakespeare, as two whole runs of different lengths, differenced: start-up, the final
evaluation and checkpoint cancel, what is left is the steady rate of the loop, over at least
``--seconds`` of training. The baseline is nn.Embedding -> nn.LSTM/GRU/RNN -> nn.Linear, Adam at
the same learning rate, ``clip_grad_norm_(5)``, the state carried and detached, ``loss.item()``
each step, on the same batches; its rate is the median step over at least ``--seconds`` after
warm-up. MUT cells have no torch.nn twin: their ratio is achieved GFLOP/s (forward + backward
counted as 3x forward) against nn.GRU's at the same size.

Sampling. ``rnnlab sample RUN --length N`` of a 2x512 LSTM char-LM, two lengths differenced (the
process start, model load and prime cancel), for 1 stream and ``--num-samples 32``; the baseline
is the plain per-character loop (embedding, nn.LSTM at T = 1, head, softmax, multinomial),
median step time; each with float32 weights and with ``--weights bfloat16``.

Each measurement runs in its own process, rnnlab and baseline interleaved, so neither keeps the
other's allocator or thread state. The machine must be quiet: anything else running moves both
numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "tinyshakespeare.txt"
SIZES = [(128, 1, 32, 64), (256, 2, 64, 100), (512, 2, 64, 100)]  # (H, L, B, T)
CELLS = ["lstm", "gru", "rnn", "mut1", "mut2", "mut3"]
STANDARD = ("rnn", "lstm", "gru")
LR = 3e-3  # rnnlab's default peak learning rate; the baseline uses the same


# -- one measurement per process --------------------------------------------------------------


def _corpus(path: Path):  # noqa: ANN202
    from rnnlab.data import prepare_corpus

    return prepare_corpus(path, split=(0.9, 0.1, 0.0))


def measure_baseline(a: argparse.Namespace) -> dict:
    """The plain loop: median step over at least ``a.seconds`` after warm-up."""
    sys.path.insert(0, str(HERE))
    from workloads import BaselineCharLM, flops_per_char

    from rnnlab.data import StreamBatcher

    corpus = _corpus(a.data)
    torch.manual_seed(0)
    model = BaselineCharLM(a.cell, len(corpus.vocab), a.hidden, a.layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    data = StreamBatcher(corpus.split("train"), a.batch, a.seq)
    state, times, k, start = None, [], 0, time.perf_counter()
    while len(times) < a.warmup + 5 or sum(times[a.warmup :]) < a.seconds:
        t0 = time.perf_counter()
        if k == data.num_batches:
            k, state = 0, None
        x, y = data.get(k)
        k += 1
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        loss.item()  # a user logs the loss
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 20 * a.seconds:
            break
    step = statistics.median(times[a.warmup :])
    chars = a.batch * a.seq
    return {"chars_per_s": chars / step, "gflops": 3 * flops_per_char(model) * chars / step / 1e9,
            "steps": len(times) - a.warmup}  # fmt: skip


def measure_rnnlab(a: argparse.Namespace) -> dict:
    """``train()`` twice, n1 and n2 steps, differenced; n2 - n1 steps take >= ``a.seconds``."""
    sys.path.insert(0, str(HERE))
    from workloads import flops_per_char

    from rnnlab.models import CharLM, CharLMConfig
    from rnnlab.train import TrainConfig, train

    def run(steps: int, tmp: str) -> tuple[float, list[dict]]:
        out = Path(tmp) / f"run{steps}-{time.monotonic_ns()}"
        config = TrainConfig(input=str(a.data), out_dir=str(out), cell=a.cell,
                             hidden_size=a.hidden, num_layers=a.layers, batch_size=a.batch,
                             seq_len=a.seq, max_steps=steps, eval_every=10**9, eval_batches=4,
                             sample_length=0, val_frac=0.1, test_frac=0.0, lr=LR,
                             backend=a.backend)  # fmt: skip
        start = time.perf_counter()
        train(config)
        took = time.perf_counter() - start
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return took, [json.loads(line) for line in lines]

    with tempfile.TemporaryDirectory() as tmp:
        run(2, tmp)  # corpus cache, engine build, allocator warm-up
        n1 = 4
        t1, records = run(n1, tmp)
        per_step = (records[-1]["elapsed_s"] - records[0]["elapsed_s"]) / max(1, n1 - 1)
        n2 = n1 + max(5, math.ceil(a.seconds / max(per_step, 1e-6)))
        t2, _ = run(n2, tmp)
    chars = (n2 - n1) * a.batch * a.seq
    vocab = len(_corpus(a.data).vocab)
    model = CharLM(CharLMConfig(vocab_size=vocab, cell=a.cell, hidden_size=a.hidden,
                                num_layers=a.layers))  # fmt: skip
    rate = chars / (t2 - t1)
    return {"chars_per_s": rate, "gflops": 3 * flops_per_char(model) * rate / 1e9,
            "steps": n2 - n1}  # fmt: skip


def measure_sample_cli(a: argparse.Namespace) -> dict:
    """``rnnlab sample`` of the run ``a.run`` at two lengths, differenced."""
    rnnlab = Path(sys.executable).with_name("rnnlab")

    def run(length: int) -> float:
        args = [str(rnnlab), "sample", str(a.run), "--length", str(length), "--seed", "1",
                "--num-samples", str(a.streams), "--weights", a.weights]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    run(20)  # page cache
    short = max(50, a.length // 6)
    t1, t2 = run(short), run(a.length)
    return {"chars_per_s": a.streams * (a.length - short) / (t2 - t1)}


@torch.no_grad()
def measure_sample_baseline(a: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    from workloads import BaselineCharLM

    vocab = len(_corpus(a.data).vocab)
    torch.manual_seed(0)
    model = BaselineCharLM("lstm", vocab, a.hidden, a.layers).eval()
    idx, state, times = torch.zeros(a.streams, dtype=torch.long), None, []
    while len(times) < 20 or sum(times[10:]) < a.seconds:
        t0 = time.perf_counter()
        h, state = model.rnn(model.embedding(idx)[:, None], state)
        probs = F.softmax(model.head(h[:, 0]), dim=-1)  # (S, V)
        idx = torch.multinomial(probs, 1)[:, 0]
        idx.tolist()  # a user prints each character
        times.append(time.perf_counter() - t0)
    return {"chars_per_s": a.streams / statistics.median(times[10:])}


WORKERS = {
    "baseline": measure_baseline,
    "rnnlab": measure_rnnlab,
    "sample-cli": measure_sample_cli,
    "sample-baseline": measure_sample_baseline,
}


# -- the driver -------------------------------------------------------------------------------


def child(kind: str, **options: object) -> dict:
    sys.path.insert(0, str(HERE))
    from workloads import run_json

    args = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return run_json(args)


def median_of(kind: str, repeats: int, **options: object) -> dict:
    runs = [child(kind, **options) for _ in range(repeats)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def train_table(a: argparse.Namespace, sizes: list, cells: list[str]) -> list[str]:
    rows = [
        "| size | cell | plain loop chars/s | rnnlab train chars/s | GFLOP/s | ratio | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for i, (H, L, B, T) in enumerate(sizes):
        dims = {"hidden": H, "layers": L, "batch": B, "seq": T, "seconds": a.seconds,
                "data": a.data}  # fmt: skip
        base: dict[str, dict] = {}
        for cell in cells:
            twin = cell if cell in STANDARD else "gru"
            if twin not in base:
                base[twin] = median_of("baseline", a.repeats, cell=twin, **dims)
            ours = median_of("rnnlab", a.repeats, cell=cell, **dims)
            if cell in STANDARD:
                ratio = ours["chars_per_s"] / base[twin]["chars_per_s"]
                need, shown = (1.3 if i == 0 else 1.15), f"{ratio:.2f}x"
            else:
                ratio = ours["gflops"] / base[twin]["gflops"]
                need, shown = 1.0, f"{ratio:.2f}x GRU GFLOP/s"
            plain = f"{base[twin]['chars_per_s']:,.0f}" + ("" if cell in STANDARD else " (gru)")
            rows.append(f"| H{H} L{L} B{B} T{T} | {cell} | {plain} | {ours['chars_per_s']:,.0f} | "
                        f"{ours['gflops']:.1f} | {shown} | >= {need}x "
                        f"{'met' if ratio >= need else '**missed**'} |")  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def sample_table(a: argparse.Namespace, hidden: int, layers: int) -> list[str]:
    from rnnlab.train import TrainConfig, train

    rows = ["| model | streams | weights | plain loop chars/s | rnnlab sample chars/s | ratio |",
            "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = a.sample_run or Path(tmp) / "run"
        if not run.is_dir() or not any(run.iterdir()):  # a given run is reused: one model
            train(TrainConfig(input=str(a.data), out_dir=str(run), cell="lstm",
                              hidden_size=hidden, num_layers=layers, max_steps=2, eval_batches=1,
                              sample_length=0))  # fmt: skip
        lengths = ((1, 600), (32, 100)) if a.quick else ((1, 3000), (32, 600))
        for streams, length in lengths:
            dims = {"hidden": hidden, "layers": layers, "streams": streams, "data": a.data,
                    "seconds": min(a.seconds, 5)}  # fmt: skip
            base = median_of("sample-baseline", a.repeats, **dims)["chars_per_s"]
            for weights in ("float32", "bfloat16"):
                ours = median_of("sample-cli", a.repeats, run=run, length=length, weights=weights,
                                 **dims)  # fmt: skip
                rate = ours["chars_per_s"]
                rows.append(f"| lstm {layers}x{hidden} | {streams} | {weights} | {base:,.0f} | "
                            f"{rate:,.0f} | {rate / base:.2f}x |")  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells")
    p.add_argument("--repeats", type=int, default=1, help="runs per measurement (median)")
    p.add_argument("--seconds", type=float, default=10.0, help="sustained seconds per measurement")
    p.add_argument("--quick", action="store_true", help="smallest size, lstm + mut1, 2 s each")
    p.add_argument("--no-sample", action="store_true", help="skip the sampling table")
    p.add_argument("--only", choices=("train", "sample"), help="run one table only")
    p.add_argument("--sample-run", type=Path, help="sampling table: this run directory (trained "
                   "there first if empty), e.g. to time two source trees on one model")  # fmt: skip
    p.add_argument("--data", type=Path, default=DATA)
    for name in ("hidden", "layers", "batch", "seq", "streams", "length", "warmup"):
        p.add_argument(f"--{name}", type=int, default=3 if name == "warmup" else 1,
                       help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument("--cell", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--weights", default="float32", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return 0
    if not a.data.is_file():
        p.error(f"{a.data}: no such file; pass --data with a text corpus")
    sizes, cells = SIZES, a.cells.split(",")
    if a.quick:
        sizes, a.seconds = SIZES[:1], 2.0
        cells = [c for c in cells if c in ("lstm", "mut1")]
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, seconds {a.seconds:g}, "
          f"repeats {a.repeats}", flush=True)  # fmt: skip
    rows = train_table(a, sizes, cells) if a.only != "sample" else []
    if not a.no_sample and a.only != "train":
        rows += ["", *sample_table(a, 128 if a.quick else 512, 1 if a.quick else 2)]
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
