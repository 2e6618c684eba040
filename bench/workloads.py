"""One benchmark measurement per process, printed as one JSON line (run.py drives these).

A fresh process per measurement keeps the peak-RSS figure to that model alone and stops one run's
allocator or thread state from leaking into the next. Kinds:

- ``train``: truncated-BPTT char-LM training steps (embedding -> recurrence -> linear, Adam) on
  random tokens (speed does not depend on the text), B parallel streams, state carried and
  detached between chunks of T. ``baseline`` is the plain PyTorch model a user would write;
  any other backend is ``rnnlab.CharLM`` with that backend (``reference`` is the Python loop;
  ``fused`` folds the embedding into layer 0's input projection, ``fused-nofold`` does not).
- ``sample``: generate characters one at a time for S streams (embedding, recurrence, head,
  softmax, multinomial): plain nn.LSTM/GRU/RNN at T = 1, or ``CharLM.step`` (one C++ call).
- ``mm``: torch.mm GFLOP/s on this size's large input-projection and per-step GEMM shapes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TORCH_RNN = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "mut1": 2, "mut2": 3, "mut3": 3, "mingru": 2, "minlstm": 3}


class BaselineCharLM(nn.Module):
    """The plain PyTorch char-LM: nn.Embedding -> nn.LSTM/GRU/RNN -> nn.Linear."""

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.rnn = TORCH_RNN[cell](hidden_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, state=None):  # noqa: ANN001, ANN201
        h, state = self.rnn(self.embedding(idx), state)  # (B, T, H)
        return self.head(h), state  # (B, T, V)


def build(cell: str, backend: str, vocab_size: int, hidden_size: int, num_layers: int):  # noqa: ANN201
    if backend == "baseline":
        return BaselineCharLM(cell, vocab_size, hidden_size, num_layers)
    from rnnlab.models.char_lm import CharLM, CharLMConfig

    nofold = backend == "fused-nofold"
    backend = "fused" if nofold else backend
    config = CharLMConfig(vocab_size=vocab_size, cell=cell, hidden_size=hidden_size,
                          num_layers=num_layers, backend=backend)  # fmt: skip
    model = CharLM(config)
    if nofold:
        model.rnn.fold_lookup = False  # the engine projects every token itself
    return model


def run_json(args: list[str]) -> dict:
    """Run a measurement process; its last stdout line is the JSON result (stderr on failure)."""
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def flops_per_char(model: nn.Module) -> int:
    """Forward multiply-adds x 2 of every weight matrix a character passes through (recurrence
    and head; the embedding is a lookup); a training step counts 3x this (forward + backward)."""
    return 2 * sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "emb" not in n
    )


def detach(state):  # noqa: ANN001, ANN201
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def train(a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build(a.cell, a.backend, a.vocab, a.hidden, a.layers)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = a.warmup + a.steps
    data = torch.randint(a.vocab, (a.batch, steps * a.seq + 1))  # B streams, walked in chunks of T
    state, times = None, []
    if a.backend != "baseline":  # map the C++ engine's code now, so RSS growth is the step's data
        from rnnlab.kernels.extension import load_extension

        load_extension()
    rss_before = rss_bytes()
    for i in range(steps):
        idx = data[:, i * a.seq : (i + 1) * a.seq]
        target = data[:, i * a.seq + 1 : (i + 1) * a.seq + 1]
        start = time.perf_counter()
        logits, state = model(idx, state)
        loss = F.cross_entropy(logits.reshape(-1, a.vocab), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state = detach(state)  # truncated BPTT: carry the state, not its graph
        times.append(time.perf_counter() - start)
    best = min(times[a.warmup :])
    chars = a.batch * a.seq
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"chars_per_s": chars / best, "gflops": 3 * flops_per_char(model) * chars / best / 1e9,
            "step_s": best, "peak_mib": peak / 2**20, "loss": loss.item()}  # fmt: skip


@torch.no_grad()
def sample(a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = build(a.cell, a.backend, a.vocab, a.hidden, a.layers).eval()
    idx = torch.zeros(a.streams, dtype=torch.long)
    state = None
    times = []
    for _ in range(a.warmup + a.steps):
        start = time.perf_counter()
        if a.backend == "baseline":
            h, state = model.rnn(model.embedding(idx)[:, None], state)  # one nn.LSTM call a char
            logits = model.head(h[:, 0])
        else:
            logits, state = model.step(idx, state)  # (S, V): all layers in one C++ call
        probs = F.softmax(logits, dim=-1)  # (S, V)
        idx = torch.multinomial(probs, 1)[:, 0]
        times.append(time.perf_counter() - start)
    timed = sorted(times[a.warmup :])
    median = timed[len(timed) // 2]
    return {"chars_per_s": a.streams / median, "step_s": median}


def mm(a: argparse.Namespace) -> dict:
    G = GATES[a.cell] * a.hidden
    rates = {}
    for name, rows in (("large", a.batch * a.seq), ("step", a.batch)):
        x, w = torch.randn(rows, a.hidden), torch.randn(G, a.hidden)
        out = torch.empty(rows, G)
        reps = max(3, int(3e9 / (2 * rows * a.hidden * G)))
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(x, w.t(), out=out)
            best = min(best, (time.perf_counter() - start) / reps)
        rates[f"mm_{name}_gflops"] = 2 * rows * a.hidden * G / best / 1e9
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["train", "sample", "mm"])
    p.add_argument("--cell", default="lstm")
    p.add_argument("--backend", default="baseline")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=96)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args()
    result = {"train": train, "sample": sample, "mm": mm}[a.kind](a)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
