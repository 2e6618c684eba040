"""Validation loss after N minutes of CPU training: rnnlab's default preset against plain PyTorch
loops, and the search that chose the default.

    .venv/bin/python bench/quality.py               # default vs 2 baselines, 1 and 3 min (~13 min)
    .venv/bin/python bench/quality.py --search      # every candidate preset too (~45 min)
    .venv/bin/python bench/quality.py --marks 0.2   # a quick look
    .venv/bin/python bench/quality.py --marks 1 --cells mingru,minlstm   # other cells, default size

Every run trains on tinyshakespeare with nanoGPT's 90/10 split for a wall-clock budget (its own
run per budget: a user types ``rnnlab train --max-minutes 3``, and rnnlab's cosine anneals by that
deadline), then the last weights are scored by the same evaluator on the whole validation split
(state carried, every character predicted), in nats/char. rnnlab runs go through
``rnnlab.training.train`` with everything a user gets (evaluations, checkpoints, the metrics log,
within the budget). The baselines are the loop a user writes from the PyTorch docs:
nn.Embedding -> nn.LSTM -> nn.Linear, Adam (constant lr 2e-3), truncated BPTT with the state
carried, gradient clipping at 5; char-rnn's default 2x128 model with its batch 50 x 50, and a
2x256 one. The machine must be quiet: the budget is wall time.

Reference figure: nanoGPT's published CPU setting reaches about 1.88 nats/char after ~3 minutes.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rnnlab.data import StreamBatcher, prepare_corpus
from rnnlab.evaluate import evaluate_tokens
from rnnlab.runs import load_run
from rnnlab.train import PRESETS, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_3MIN = 1.88
UNLIMITED = 10**12


@dataclass
class Candidate:
    """A preset tried for the default: TrainConfig fields over the defaults."""

    name: str
    settings: dict = field(default_factory=dict)

    def describe(self) -> str:
        s = {**TrainConfig().to_dict(), **self.settings}
        return (f"{s['cell']} {s['num_layers']}x{s['hidden_size']}, B{s['batch_size']} "
                f"T{s['seq_len']}, lr {s['lr']:g}, dropout {s['dropout']:g}")  # fmt: skip


# What was tried for the default preset (README "How the default was chosen"); the first is the
# default as shipped, the rest are the alternatives it beat.
SEARCH = [
    Candidate("default", PRESETS["small"]),
    Candidate("lstm 1x256 (the old default)", {"cell": "lstm", "hidden_size": 256, "lr": 3e-3}),
    Candidate("lstm 1x384", {"cell": "lstm", "hidden_size": 384, "lr": 3e-3}),
    Candidate("lstm 1x512", {"cell": "lstm", "hidden_size": 512, "lr": 2e-3}),
    Candidate("lstm 2x256", {"cell": "lstm", "hidden_size": 256, "num_layers": 2, "lr": 3e-3}),
    Candidate("gru 1x256", {"cell": "gru", "hidden_size": 256, "lr": 3e-3}),
    Candidate("gru 1x512", {"cell": "gru", "hidden_size": 512, "lr": 2e-3}),
    Candidate("gru 1x384, lr 5e-3", {"cell": "gru", "hidden_size": 384, "lr": 5e-3}),
    Candidate("gru 1x384, lr 2e-3", {"cell": "gru", "hidden_size": 384, "lr": 2e-3}),
]


class PlainCharLSTM(nn.Module):
    """What a user writes: embedding, nn.LSTM, linear head (same call shape as rnnlab's CharLM)."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, state=None):  # noqa: ANN001, ANN201
        h, state = self.lstm(self.embedding(idx), state)
        return self.head(h), state


def run_baseline(corpus, minutes: float, val: StreamBatcher, hidden: int) -> tuple[float, int]:  # noqa: ANN001
    """(validation loss, steps) of the plain loop trained for ``minutes``."""
    torch.manual_seed(1337)
    model = PlainCharLSTM(len(corpus.vocab), hidden, 2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = StreamBatcher(corpus.split("train"), 50, 50)
    state, k, steps, start = None, 0, 0, time.perf_counter()
    while time.perf_counter() - start < 60 * minutes:
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
        loss.item()
        steps += 1
    return evaluate_tokens(model, val).loss, steps  # type: ignore[arg-type]


def run_rnnlab(
    path: Path, minutes: float, val: StreamBatcher, settings: dict
) -> tuple[float, int, nn.Module]:
    """(validation loss, steps, trained model) of ``rnnlab train --max-minutes`` with
    ``settings``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        config = TrainConfig(**{"input": str(path), "out_dir": str(out), "val_frac": 0.1,
                                "test_frac": 0.0, "max_steps": UNLIMITED,
                                "max_minutes": minutes, **settings})  # fmt: skip
        result = train(config)
        model = load_run(out, which="latest").model
        return evaluate_tokens(model, val).loss, result.step, model


@torch.no_grad()
def step_loss(model, tokens: torch.Tensor, weight_dtype: torch.dtype | None) -> float:  # noqa: ANN001
    """nats/char of one stream fed character by character through ``model.step`` (how
    ``rnnlab sample`` runs it), with float32 or reduced-precision recurrent weights."""
    state, total = None, 0.0
    for t in range(len(tokens) - 1):
        logits, state = model.step(tokens[t : t + 1], state, weight_dtype=weight_dtype)
        total -= float(logits[0].log_softmax(-1)[tokens[t + 1]])
    return total / (len(tokens) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--marks", default="1,3", help="training budgets, minutes, comma-separated")
    parser.add_argument("--search", action="store_true", help="also train every candidate preset")
    parser.add_argument("--cells", default="", help="also train these cells (comma-separated) "
                        "with the default preset's size and settings")  # fmt: skip
    args = parser.parse_args()
    if not args.data.is_file():
        parser.error(f"{args.data}: no such file; pass --data with a text corpus")
    marks = [float(m) for m in args.marks.split(",")]
    corpus = prepare_corpus(args.data, split=(0.9, 0.1, 0.0))
    val = StreamBatcher(corpus.split("val"), 16, 100, name="val")
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, train "
          f"{len(corpus.split('train')):,} / val {len(corpus.split('val')):,} chars",
          file=sys.stderr)  # fmt: skip

    rows: list[tuple[str, str, list[tuple[float, int]]]] = []
    for hidden in (128, 256):
        name = f"plain PyTorch LSTM 2x{hidden} (B50 T50, Adam 2e-3)"
        rows.append((name, "baseline", [run_baseline(corpus, m, val, hidden) for m in marks]))
        print(f"  {name}: {rows[-1][2]}", file=sys.stderr, flush=True)
    default_model = None  # the default preset trained for the longest budget
    others = [Candidate(f"{cell}, the default's size", {**PRESETS["small"], "cell": cell})
              for cell in args.cells.split(",") if cell]  # fmt: skip
    for candidate in [*(SEARCH if args.search else SEARCH[:1]), *others]:
        runs = [run_rnnlab(args.data, m, val, candidate.settings) for m in marks]
        results = [(loss, steps) for loss, steps, _ in runs]
        default_model = runs[-1][2] if default_model is None else default_model
        rows.append((f"rnnlab {candidate.name}: {candidate.describe()}", "rnnlab", results))
        print(f"  {rows[-1][0]}: {results}", file=sys.stderr, flush=True)

    if default_model is not None:  # what --weights bfloat16 costs in loss, on the same model
        tokens = torch.as_tensor(corpus.split("val")[:20_000].astype("int64"))
        fp32 = step_loss(default_model, tokens, None)
        bf16 = step_loss(default_model, tokens, torch.bfloat16)
        print(f"\n`--weights bfloat16` on the default model, first 20,000 validation chars "
              f"fed one by one: float32 {fp32:.4f}, bfloat16 {bf16:.4f} nats/char "
              f"({bf16 - fp32:+.4f})")  # fmt: skip
    head = " | ".join(f"{m:g} min: val (steps)" for m in marks)
    print(f"\n| run | {head} |\n|---|" + "---:|" * len(marks))
    best = [min(r[2][i][0] for r in rows) for i in range(len(marks))]
    for name, _, results in rows:
        cells = " | ".join(
            (f"**{loss:.4f}**" if loss == best[i] else f"{loss:.4f}") + f" ({steps:,})"
            for i, (loss, steps) in enumerate(results)
        )
        print(f"| {name} | {cells} |")
    print(f"\nnats/char on the whole validation split (10%); nanoGPT's CPU figure at 3 min: "
          f"{NANOGPT_3MIN}; bits/char = nats/char / ln 2 = nats x "
          f"{1 / math.log(2):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
