"""Reproduce the README's gradient-flow numbers: how ||dL_T/dh_t|| decays with T - t for fresh
char-LMs of every cell at initialisation (vanilla RNN vs LSTM with forget bias 1, ...), the
lecture's one-unit case, and, when ``interpretable_cells.py`` has trained one, the Linux LSTM's
sigma_max(W_hh) per checkpoint and its clip events.

    python bench/analysis/gradient_flow.py          # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from rnnlab.analysis.export import write_json
from rnnlab.analysis.gradients import (
    clip_events,
    hidden_gradient_norms,
    largest_singular_values,
    one_unit_gradients,
)
from rnnlab.analysis.plots import plot_gradient_decay, plot_singular_values
from rnnlab.models import CharLM, CharLMConfig


def fresh_decay(cell: str, args: argparse.Namespace) -> np.ndarray:
    """Mean over seeds of the top layer's ||dL_T/dh_t|| / ||dL_T/dh_T||, indexed by T - t."""
    curves = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        config = CharLMConfig(args.vocab_size, cell, hidden_size=args.hidden_size, num_layers=1)
        flow = hidden_gradient_norms(CharLM(config), args.steps, args.batch_size, seed=seed)
        by_d = flow.by_distance()[:, -1]
        curves.append(by_d / by_d[0])
    return np.exp(np.mean(np.log(np.maximum(curves, 1e-300)), axis=0))  # geometric mean


def trained_history(run_dir: Path, out: Path) -> dict:
    from rnnlab.runs import load_run

    steps, sigma = [], []
    for ckpt in sorted(run_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        run = load_run(ckpt)
        steps.append(run.step)
        sigma.append(largest_singular_values(run.model.rnn)[0])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    events = clip_events(records, 5.0)
    plot_singular_values(
        steps,
        {g: [s[g] for s in sigma] for g in ("W_hh", "i", "f", "g", "o")},
        out / "figures" / "linux_singular_values.png",
    )
    return {
        "steps": steps,
        "sigma_max": sigma,
        "clip_events": len(events),
        "logged_steps": len(records),
        "first_clip_steps": events[:10],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--steps", type=int, default=101)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--run", default="runs/analysis/linux-lstm")
    parser.add_argument("--out", default="bench/analysis")
    args = parser.parse_args()
    out = Path(args.out)
    curves = {f"{c} at init": fresh_decay(c, args) for c in ("rnn", "gru", "lstm", "mut1")}
    for w in (0.9, 1.0, 1.1):
        curves[f"one unit, w = {w}"] = one_unit_gradients(w, args.steps - 1)
    plot_gradient_decay(curves, out / "figures" / "gradient_flow.png")
    at50 = {k: float(v[50]) for k, v in curves.items()}
    record = {
        "config": vars(args),
        "decay_at_50": at50,
        "rnn_vs_lstm_at_50": at50["lstm at init"] / at50["rnn at init"],
        "one_unit_exact": {
            str(w): float(np.max(np.abs(one_unit_gradients(w, 50) - abs(w) ** np.arange(51))))
            for w in (0.5, 0.9, 1.1, 1.5)
        },
    }
    run_dir = Path(args.run)
    if (run_dir / "metrics.jsonl").exists():
        record["linux_lstm"] = trained_history(run_dir, out)
    write_json(record, out / "gradient_flow.json")
    for k, v in at50.items():
        print(f"{k:<20} ||dL/dh_(T-50)|| / ||dL/dh_T|| = {v:.3e}")
    ratio = record["rnn_vs_lstm_at_50"]
    print(f"LSTM (forget bias 1) keeps {ratio:.2e}x more gradient over 50 steps than the RNN")
    if "linux_lstm" in record:
        h = record["linux_lstm"]
        print(
            f"Linux LSTM: sigma_max(W_hh) {h['sigma_max'][0]['W_hh']:.2f} at step "
            f"{h['steps'][0]} -> {h['sigma_max'][-1]['W_hh']:.2f} at step {h['steps'][-1]}; "
            f"{h['clip_events']} of {h['logged_steps']} logged steps clipped"
        )
    return 0 if ratio >= 100 else 1


if __name__ == "__main__":
    sys.exit(main())
