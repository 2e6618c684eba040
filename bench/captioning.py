"""Captioning numbers for the README: the synthetic shapes set, held-out test images.

Trains three captioners (LSTM decoder, SmallCNN encoder trained end to end) on the same data:
the lecture's per-step conditioning (``W_ih v`` at every step), Show and Tell's image as the
initial state, and initial state plus soft attention (Show, Attend and Tell); scores each on the
200 test images with greedy decoding and beam search (BLEU-1..4, CIDEr-D), next to the
most-frequent-caption and nearest-neighbour baselines; writes a Markdown table, the results as
JSON and the HTML report of the attention model.

    python bench/captioning.py                       # about 12 minutes on a 2-core CPU
    python bench/captioning.py --quick               # a smoke run (a minute)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from rnnlab.data.captions import read_caption_json
from rnnlab.data.shapes import write_shapes_dataset
from rnnlab.report import captions as report
from rnnlab.runs import load_run
from rnnlab.tasks.caption import CaptionTrainConfig, train_captioner

MODELS = {  # name -> (conditioning, attention, steps as a fraction of --steps)
    "per-step W_ih v": ("step", False, 1.0),
    "initial state (Show and Tell)": ("init", False, 1.0),
    "initial state + attention": ("init", True, 0.6),  # a step costs ~3x: a Python step loop
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/rnnlab-caption-bench", help="data and runs")
    parser.add_argument("--steps", type=int, default=1400, help="training steps per model")
    parser.add_argument("--minutes", type=float, default=8.0, help="time cap per model")
    parser.add_argument("--images", type=int, default=2400, help="synthetic images in all")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--beam", type=int, default=3, help="beam width for the beam rows")
    parser.add_argument("--out", default="bench/CAPTION_RESULTS.md", help="Markdown table")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.minutes, args.images = 30, 1.0, 300
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = work / f"shapes-{args.images}" / "captions.json"
    if not data.exists():
        write_shapes_dataset(
            data.parent,
            args.images,
            num_val=200 if not args.quick else 30,
            num_test=200 if not args.quick else 30,
            image_size=64,
            seed=0,
        )
    dataset = read_caption_json(data)
    results, rows = {}, []
    shown = None
    baselines = None
    for name, (conditioning, attention, fraction) in MODELS.items():
        run_dir = work / "runs" / f"{conditioning}{'-attention' if attention else ''}"
        config = CaptionTrainConfig(
            data=str(data),
            out_dir=str(run_dir),
            conditioning=conditioning,
            attention=attention,
            max_steps=max(1, int(args.steps * fraction)),
            max_minutes=args.minutes,
            eval_every=max(1, args.steps // 4),
            hidden_size=128,
            cnn_channels=16,
            threads=args.threads,
            seed=1,
        )
        if run_dir.exists():
            for child in sorted(run_dir.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
        started = time.perf_counter()
        result = train_captioner(config)
        seconds = time.perf_counter() - started
        run = load_run(run_dir, "best", tasks=("caption",))
        inputs = report.model_inputs(run, dataset)
        if baselines is None:
            baselines = [
                report.most_frequent_baseline(dataset, "test"),
                report.nearest_neighbour_baseline(dataset, inputs, "test"),
            ]
        entry = {
            "train_seconds": round(seconds, 1),
            "steps": result.step,
            "parameters": run.model.num_parameters(),
        }
        for beam in (1, args.beam):
            evaluation = report.evaluate_run(run, dataset, inputs, "test", beam=beam)
            entry[evaluation.method] = evaluation.scores.as_dict()
            rows.append((f"{name}, {evaluation.method}", evaluation.scores.as_dict(), seconds))
            if attention and beam == args.beam:  # the report shows where each word looked
                shown = (evaluation, name, report.attention_of(run, evaluation, inputs))
        results[name] = entry
        print(f"{name}: {json.dumps(entry)}", file=sys.stderr, flush=True)
    assert baselines is not None and shown is not None
    for evaluation in baselines:
        rows.append((evaluation.method, evaluation.scores.as_dict(), None))
        results[evaluation.method] = evaluation.scores.as_dict()
    evaluation, name, maps = shown
    page = report.render_report(
        evaluation,
        baselines,
        title="rnnlab captioning: shapes test set",
        subtitle=f"{name}, {evaluation.method} decoding; attention for each word (bright: "
        "looked at) under the first images",
        attention=maps,
    )
    html = report.write_report(work / "report.html", page)
    table = markdown(rows, args, len(dataset.split("test")))
    Path(args.out).write_text(table, encoding="utf-8")
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table)
    print(f"report: {html}\nresults: {work / 'results.json'}", file=sys.stderr)
    return 0


def markdown(rows: list, args: argparse.Namespace, test_images: int) -> str:
    lines = [
        f"Shapes test set ({test_images} held-out images, 5 references each); "
        f"{platform.machine()} CPU, "
        f"{args.threads} thread(s), torch {torch.__version__}; `python bench/captioning.py`.",
        "",
        "| model, decoding | BLEU-1 | BLEU-4 | CIDEr-D | training |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, scores, seconds in rows:
        took = f"{seconds / 60:.1f} min" if seconds is not None else "-"
        lines.append(
            f"| {label} | {scores['BLEU-1']:.3f} | {scores['BLEU-4']:.3f} | "
            f"{scores['CIDEr-D']:.3f} | {took} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
