"""G2P on CMUdict: a 2-layer LSTM encoder-decoder, without and with attention, trained on CPU for
3,000 steps or 22 minutes, whichever comes first, then scored on the test split (PER and WER,
greedy and beam search).

The two runs train at the same time, one CPU thread each (``rnnlab seq2seq train`` in two
processes); on the 2-vCPU build machine both finished 3,000 steps in about 12 minutes (README,
"G2P on this CPU"). Split: rnnlab's hash split of
CMUdict by word (``rnnlab.data.cmudict``: 85 / 5 / 10 %, stress removed, all pronunciations of a
word in one split; a word is right if it matches any of them).

    .venv/bin/python bench/g2p.py                      # about 15 minutes here, test included
    .venv/bin/python bench/g2p.py --minutes 1 --max-steps 50 --split val --out /tmp/g2p  # a look

Published figures for comparison use another split (the older standard split of CMUdict from
Bisani & Ney 2008, about 106k training and 12k test words, also without stress): LSTM
encoder-decoders report about 23-31% WER (Yao & Zweig 2015; Rao et al. 2015). Our split differs,
so the numbers are a sanity check, not a comparison on equal terms.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RNNLAB = [sys.executable, "-m", "rnnlab.cli"]
METHODS = ("greedy", "beam")
MODELS = {
    "plain": ["--attention", "none"],
    "luong": ["--attention", "luong"],
}
COMMON = [
    "--task", "g2p", "--num-layers", "2", "--hidden-size", "256", "--embedding-size", "64",
    "--encoder-cell", "lstm", "--decoder-cell", "lstm", "--bidirectional",
    "--batch-size", "64", "--lr", "0.003", "--warmup-steps", "100",
    "--eval-every", "500", "--eval-size", "1000", "--threads", "1", "--no-progress",
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=22.0, help="training wall time per run")
    parser.add_argument("--out", default=str(ROOT / "runs" / "g2p"), help="where the runs go")
    parser.add_argument("--beam", type=int, default=5, help="beam width for the second score")
    parser.add_argument("--max-steps", type=int, default=3000, help="cosine schedule length")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="scored split")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, flags in MODELS.items():
        run_dir = out / name
        # The cosine schedule spans --max-steps (about what two parallel runs reach in 22 minutes
        # here); --minutes stops a slower run on time, its learning rate not fully decayed.
        cmd = [*RNNLAB, "seq2seq", "train", *COMMON, *flags, "--out-dir", str(run_dir),
               "--max-minutes", str(args.minutes), "--max-steps", str(args.max_steps)]  # fmt: skip
        log = open(out / f"{name}.train.log", "w")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    for name, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        if code != 0:
            print(f"{name}: training failed (exit {code}); see {out / name}.train.log")
            return 1
    results: dict[str, dict] = {}
    evals = {}
    for name in MODELS:  # both models' test scores at once, one thread each
        results[name] = {"steps": _last_step(out / name / "metrics.jsonl")}
        script = " && ".join(shlex.join(_eval_command(out / name, m, args)) for m in METHODS)
        evals[name] = subprocess.Popen(script, shell=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    for name, proc in evals.items():
        lines = proc.communicate()[0].strip().splitlines()
        results[name]["eval"] = lines
        for line in lines:
            print(f"{name:6} {results[name]['steps']} steps: {line}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


def _eval_command(run_dir: Path, method: str, args: argparse.Namespace) -> list[str]:
    beam = ["--beam", str(args.beam)] if method == "beam" else []
    output = ["--output", str(run_dir.parent / f"{run_dir.name}.{method}.tsv")]
    return [*RNNLAB, "seq2seq", "eval", str(run_dir), "--split", args.split, "--method", method,
            *beam, *output]  # fmt: skip


def _last_step(path: Path) -> int:
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


if __name__ == "__main__":
    sys.exit(main())
