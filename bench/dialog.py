"""Visual dialog numbers for the README: the synthetic dialogs (``rnnlab dialog clevr``), test set.

Trains late-fusion and hierarchical encoders with discriminative and generative decoders, with and
without the history (without it both encoders are one model), and the question-only baseline,
all on the same data with the same budget; ranks the 100 candidates of every test round and
reports VisDial's six metrics (R@1, R@5, R@10, mean rank, MRR, NDCG on the densely annotated
round of each dialog) and R@1 by coreference distance. Writes a Markdown table and the results
as JSON.

    python bench/dialog.py                 # about 25 minutes on one CPU thread
    python bench/dialog.py --quick         # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from rnnlab.data.clevr_dialog import write_clevr_dialog
from rnnlab.runs import load_run
from rnnlab.tasks.dialog import (
    DialogTrainConfig,
    dialog_metrics,
    load_split,
    rank_options,
    train_dialog,
)

MODELS = {  # name -> (encoder, decoder, history, image)
    "LF, discriminative": ("late_fusion", "discriminative", True, True),
    "HRE, discriminative": ("hierarchical", "discriminative", True, True),
    "no history, discriminative": ("late_fusion", "discriminative", False, True),
    "question only, discriminative": ("late_fusion", "discriminative", False, False),
    "LF, generative": ("late_fusion", "generative", True, True),
    "HRE, generative": ("hierarchical", "generative", True, True),
    "no history, generative": ("late_fusion", "generative", False, True),
}
COLUMNS = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "mean_rank": "mean rank", "mrr": "MRR",
           "ndcg": "NDCG", "r1_coref_0": "R@1 d=0", "r1_coref_1": "R@1 d=1",
           "r1_coref_2": "R@1 d=2", "r1_coref_3": "R@1 d=3", "r1_coref_4+": "R@1 d>=4"}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/rnnlab-dialog-bench", help="data and runs")
    parser.add_argument("--dialogs", type=int, default=2000, help="synthetic dialogs in all")
    parser.add_argument("--steps", type=int, default=2500, help="training steps per model")
    parser.add_argument("--minutes", type=float, default=3.0, help="time cap per model")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    parser.add_argument("--out", default="bench/DIALOG_RESULTS.md", help="Markdown table")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    if args.quick:
        args.dialogs, args.steps, args.minutes = 24, 3, 1.0
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = work / f"clevr-dialog-{args.dialogs}"
    held_out = 4 if args.quick else 200
    paths = write_clevr_dialog(data, args.dialogs, num_val=held_out, num_test=held_out, seed=0)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()] or list(MODELS)
    unknown = [m for m in wanted if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    results = {}
    for name in wanted:
        encoder, decoder, history, image = MODELS[name]
        run_dir = work / "runs" / name.replace(", ", "-").replace(" ", "_")
        config = DialogTrainConfig(
            data=str(paths["train"]), val_data=str(paths["val"]), dense=str(paths["val_dense"]),
            out_dir=str(run_dir), encoder=encoder, decoder=decoder, history=history,
            image=image, max_steps=args.steps, max_minutes=args.minutes,
            eval_every=max(1, args.steps // 5), hidden_size=128 if not args.quick else 16,
            embedding_size=64 if not args.quick else 8, image_size=48 if not args.quick else 16,
            cnn_channels=16 if not args.quick else 4, cnn_blocks=3 if not args.quick else 2,
            feature_size=128 if not args.quick else 16, batch_size=16 if not args.quick else 4,
            eval_dialogs=50 if not args.quick else 0, lr=3e-3, threads=args.threads, seed=1,
        )  # fmt: skip
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        start = time.perf_counter()
        fit = train_dialog(config)
        minutes = (time.perf_counter() - start) / 60
        run = load_run(run_dir, tasks=("dialog",))
        test, _ = load_split(paths["test"], run.train_config, run.vocab, str(paths["test_dense"]))
        scores, loss = rank_options(run.model, test, torch.device("cpu"))
        metrics = dialog_metrics(scores, test.encoded)
        results[name] = {**metrics, "test_loss": loss, "steps": fit.step,
                         "train_minutes": minutes}  # fmt: skip
        print(name, json.dumps({k: round(v, 4) for k, v in results[name].items()}), flush=True)
    table = _table(results, args)
    print(table)
    if not args.quick:
        Path(args.out).write_text(table + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


def _table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    cpu = platform.machine()
    head = (f"Synthetic dialogs, test split ({'4' if args.quick else '200'} dialogs x 10 rounds, "
            f"100 candidates each; NDCG on one densely annotated round per dialog); {cpu} CPU, "
            f"{args.threads} thread(s), torch {torch.__version__}; `python bench/dialog.py"
            f"{' --quick' if args.quick else ''}`. d = coreference distance (rounds back to the "
            "referent; 0: the question names its object or none).")  # fmt: skip
    cols = [c for c in COLUMNS if any(c in r for r in results.values())]
    names = " | ".join(COLUMNS[c] for c in cols)
    lines = [
        head,
        "",
        f"| model | {names} | steps | training |",
        "|---|" + "---:|" * (len(cols) + 2),
    ]
    for name, r in results.items():
        cells = [f"{r[c]:.2f}" if c == "mean_rank" else f"{r[c]:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | {r['steps']} | {r['train_minutes']:.1f} min |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
