"""The benchmark's workloads still run (a smoke test: `make bench` must not rot when the library
changes). Tiny sizes; the numbers themselves are for bench/run.py, not for tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKLOADS = Path(__file__).resolve().parent.parent / "bench" / "workloads.py"
TINY = ["--hidden", "8", "--layers", "2", "--batch", "4", "--seq", "6", "--vocab", "11"]


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--cell", "lstm", "--backend", "baseline", "--steps", "1", "--warmup", "1"],
        ["train", "--cell", "gru", "--backend", "fused", "--steps", "1", "--warmup", "1"],
        ["train", "--cell", "mut1", "--backend", "fused-nofold", "--steps", "1", "--warmup", "1"],
        ["sample", "--cell", "lstm", "--backend", "fused", "--steps", "2", "--warmup", "1"],
        ["sample", "--cell", "lstm", "--backend", "baseline", "--steps", "2", "--warmup", "1"],
    ],
)
def test_benchmark_workloads_run(args):
    done = subprocess.run(
        [sys.executable, str(WORKLOADS), *args, *TINY], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["chars_per_s"] > 0
