"""Validation loss after N minutes of CPU training: rnnlab's default preset vs a plain PyTorch loop.

Both train on tinyshakespeare with nanoGPT's 90/10 split, in this one process, one after the
other, and are scored by the same evaluator on the whole validation split (state carried, every
character predicted). The baseline is the loop a user would write from the PyTorch docs with
char-rnn's default model: nn.Embedding -> nn.LSTM(2 x 128) -> nn.Linear, Adam 2e-3, batch 50,
seq_len 50, truncated BPTT with the state carried, gradient clipping at 5.

    .venv/bin/python bench/quality.py                  # marks at 1, 3, 6 minutes (~20 min)
    .venv/bin/python bench/quality.py --marks 0.2,0.5  # a quick look

Reference figure: nanoGPT's published CPU setting reaches 1.88 nats/char after ~3 minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rnnlab.data import StreamBatcher, prepare_corpus
from rnnlab.evaluate import evaluate_tokens
from rnnlab.runs import load_run
from rnnlab.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_3MIN = 1.88


class PlainCharLSTM(nn.Module):
    """What a user writes: embedding, nn.LSTM, linear head (same call shape as rnnlab's CharLM)."""

    def __init__(self, vocab_size: int, hidden_size: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, state=None):
        h, state = self.lstm(self.embedding(idx), state)
        return self.head(h), state


def val_loss(model: nn.Module, val: StreamBatcher) -> float:
    return evaluate_tokens(model, val).loss  # type: ignore[arg-type]


def run_baseline(corpus, marks: list[float], val: StreamBatcher) -> list[float]:
    torch.manual_seed(1337)
    model = PlainCharLSTM(len(corpus.vocab))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = StreamBatcher(corpus.split("train"), 50, 50)
    results, state, k, trained = [], None, 0, 0.0
    for mark in marks:
        start = time.perf_counter()
        while trained + (time.perf_counter() - start) < 60 * mark:
            if k == data.num_batches:
                k, state = 0, None
            x, y = data.get(k)
            k += 1
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        trained += time.perf_counter() - start
        results.append(val_loss(model, val))
        model.train()
        print(f"  baseline  {mark:g} min: val {results[-1]:.4f}", file=sys.stderr, flush=True)
    return results


def run_rnnlab(path: Path, marks: list[float], val: StreamBatcher, out: Path) -> list[float]:
    """The default preset, trained for the same wall time (stopped and resumed at each mark,
    so this also exercises exact resume)."""
    results, done = [], 0.0
    for i, mark in enumerate(marks):
        config = TrainConfig(input=str(path), out_dir=str(out), val_frac=0.1, test_frac=0.0,
                             max_steps=10**9, max_minutes=mark - done, eval_every=10**9,
                             sample_length=0)  # fmt: skip
        train(config, resume=out if i else None)
        done = mark
        model = load_run(out, which="latest").model
        results.append(val_loss(model, val))
        print(f"  rnnlab    {mark:g} min: val {results[-1]:.4f}", file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--marks", default="1,3,6", help="minutes of training, comma-separated")
    args = parser.parse_args()
    marks = [float(m) for m in args.marks.split(",")]
    corpus = prepare_corpus(args.data, split=(0.9, 0.1, 0.0))
    val = StreamBatcher(corpus.split("val"), 16, 100)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, train "
          f"{len(corpus.split('train')):,} / val {len(corpus.split('val')):,} chars",
          file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ours = run_rnnlab(args.data, marks, val, Path(tmp) / "run")
    base = run_baseline(corpus, marks, val)
    print("\n| minutes | plain PyTorch LSTM 2x128 | rnnlab default | ratio | beats baseline |")
    print("|---:|---:|---:|---:|:---:|")
    for m, b, o in zip(marks, base, ours, strict=True):
        print(f"| {m:g} | {b:.4f} | {o:.4f} | {o / b:.3f} | {'yes' if o < b else 'no'} |")
    print(f"\nnats/char on the validation split; nanoGPT's CPU figure at 3 min: {NANOGPT_3MIN}; "
          f"bits/char = nats/char / ln 2 = nats x {1 / math.log(2):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
