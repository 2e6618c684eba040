"""VQA numbers for the README: easy-vqa's shipped test split and Sort-of-CLEVR, each model beside
the most-frequent-answer-per-question-type and question-only ("blind") baselines.

easy-vqa: a CNN+LSTM (SmallCNN trained end to end, LSTM question encoder, concatenation, MLP)
trained on the shipped train split (its validation questions a hash split of it by image),
scored on the shipped test split, overall and per answer type (yes/no, shape, color).
Sort-of-CLEVR (Santoro et al. 2017, questions as text): CNN+LSTM without and with stacked
attention, relational and non-relational accuracy side by side, on the test images.

    python bench/vqa.py                  # both sets, about 50 minutes on a 2-core CPU
    python bench/vqa.py --only easy-vqa  # one set
    python bench/vqa.py --quick          # a smoke run (seconds): tiny data, a few steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from rnnlab.data.easy_vqa import easy_vqa_root
from rnnlab.data.sort_of_clevr import write_sort_of_clevr
from rnnlab.data.vqa import VQADataset, read_vqa
from rnnlab.metrics.vqa import VQAReport, most_frequent_answers, predict_most_frequent, vqa_report
from rnnlab.runs import load_run
from rnnlab.tasks.vqa import (
    VQATrainConfig,
    evaluate_questions,
    image_inputs,
    split_questions,
    train_vqa,
)

# name -> (set, settings beyond the shared ones, minutes as a fraction of --minutes)
MODELS: dict[str, tuple[str, dict[str, Any], float]] = {
    "easy-vqa CNN+LSTM": ("easy-vqa", {}, 1.0),
    "easy-vqa blind LSTM": ("easy-vqa", {"blind": True}, 0.25),
    "Sort-of-CLEVR CNN+LSTM": ("sort-of-clevr", {"image_size": 64, "cnn_blocks": 4}, 1.0),
    "Sort-of-CLEVR CNN+LSTM + stacked attention": (
        "sort-of-clevr",
        {"image_size": 64, "cnn_blocks": 4, "attention_layers": 2},
        1.0,
    ),
    "Sort-of-CLEVR blind LSTM": ("sort-of-clevr", {"blind": True}, 0.25),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/rnnlab-vqa-bench", help="data and runs")
    parser.add_argument("--only", choices=("easy-vqa", "sort-of-clevr"), help="one set")
    parser.add_argument("--minutes", type=float, default=13.0, help="time cap per image model")
    parser.add_argument("--steps", type=int, default=3000, help="step cap per model")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--easy-vqa", help="easy-vqa data folder (default: the wheel's)")
    parser.add_argument("--out", default="bench/VQA_RESULTS.md", help="Markdown table")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    sets = {"easy-vqa", "sort-of-clevr"} if args.only is None else {args.only}
    data: dict[str, tuple[Path, Path]] = {}  # set -> (train, test)
    if "easy-vqa" in sets:
        root = Path(args.easy_vqa) if args.easy_vqa else easy_vqa_root()
        data["easy-vqa"] = (root / "train", root / "test")
    if "sort-of-clevr" in sets:
        soc = work / ("soc-quick" if args.quick else "soc")
        if not (soc / "test" / "annotations.json").exists():
            sizes = (12, 4, 4, 2) if args.quick else (9800, 200, 200, 10)
            write_sort_of_clevr(soc, *sizes[:3], questions_per_image=sizes[3], seed=0)
        data["sort-of-clevr"] = (soc / "train", soc / "test")
    sections = []
    results: dict[str, Any] = {"machine": machine(args.threads), "models": {}}
    for name, (which, settings, fraction) in MODELS.items():
        if which not in sets:
            continue
        train, test = data[which]
        run_dir = work / "runs" / name.replace(" ", "-").replace("+", "")
        started = time.perf_counter()
        config = VQATrainConfig(
            data=str(train),
            val_data=str(train.parent / "val") if which == "sort-of-clevr" else "",
            out_dir=str(run_dir),
            max_steps=4 if args.quick else args.steps,
            max_minutes=args.minutes * fraction,
            eval_every=2 if args.quick else 250,
            threads=args.threads,
            device="cpu",
            **(
                {
                    "image_size": 16,
                    "cnn_blocks": 2,
                    "cnn_channels": 4,
                    "feature_size": 16,
                    "hidden_size": 16,
                    "mlp_size": 16,
                    "fusion_size": 16,
                }
                if args.quick
                else {}
            ),  # fmt: skip
            **{
                k: v
                for k, v in settings.items()
                if not (args.quick and k in ("image_size", "cnn_blocks"))
            },  # fmt: skip
        )
        fit = train_vqa(config, on_event=None)
        trained = time.perf_counter() - started
        run = load_run(run_dir, "best", "cpu", tasks=("vqa",))
        test_set = read_vqa(test)
        train_set, _, _ = split_questions(run.train_config)
        report = evaluate(run, test_set)
        results["models"][name] = {
            "set": which,
            "command": command(config),
            "steps": fit.step,
            "train_seconds": round(trained, 1),
            "report": report_json(report),
        }
        if which not in results.setdefault("baselines", {}):
            results["baselines"][which] = report_json(baseline(train_set, test_set))
        print(f"{name}: {100 * report.accuracy:.2f}% in {trained / 60:.1f} min, {fit.step} steps",
              flush=True)  # fmt: skip
    for which in sorted(sets):
        sections.append(table(which, results))
    text = render(results, sections)
    if not args.quick:
        Path(args.out).write_text(text, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


def evaluate(run: Any, dataset: VQADataset) -> VQAReport:
    inputs = image_inputs(dataset, run.train_config, "")
    found = evaluate_questions(run.model, dataset, inputs, run.vocab, run.vocabs["answers"],
                               run.train_config.max_length)  # fmt: skip
    return found.report


def baseline(train: VQADataset, test: VQADataset) -> VQAReport:
    """The most frequent training answer of each question type."""
    table_ = most_frequent_answers([q.question_type for q in train.questions],
                                   [q.answer for q in train.questions])  # fmt: skip
    qs = test.questions
    types = [q.question_type for q in qs]
    return vqa_report(predict_most_frequent(table_, types), [q.answer for q in qs], types,
                      [q.answer_type for q in qs])  # fmt: skip


def report_json(report: VQAReport) -> dict[str, Any]:
    relational: dict[str, float] = {}
    for group in ("rel", "nonrel"):
        kinds = [t for t in report.per_question_type if t.startswith(group + "-")]
        n = sum(report.question_type_counts[t] for t in kinds)
        if n:
            relational[group] = sum(report.per_question_type[t] * report.question_type_counts[t]
                                    for t in kinds) / n  # fmt: skip
    return {"accuracy": report.accuracy, "examples": report.examples,
            "per_answer_type": report.per_answer_type,
            "per_question_type": report.per_question_type, "groups": relational}  # fmt: skip


def command(config: VQATrainConfig) -> str:
    defaults = VQATrainConfig(data="x")
    flags = []
    values = config.to_dict()
    first = ("data", "val_data")  # what it trains on, then the settings that differ
    for name, value in sorted(values.items(), key=lambda kv: kv[0] not in first):
        if name in ("out_dir",) or value == getattr(defaults, name):
            continue
        flag = "--" + name.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value}")
    return "rnnlab vqa train " + " ".join(flags)


def machine(threads: int) -> str:
    """The CPU's model name (Linux), its core count and the threads torch used."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {threads} torch threads"


def table(which: str, results: dict[str, Any]) -> str:
    models = {n: r for n, r in results["models"].items() if r["set"] == which}
    rows = [(n, r["report"], f"{r['train_seconds'] / 60:.1f} min, {r['steps']} steps")
            for n, r in models.items()]  # fmt: skip
    rows.append(("most frequent answer per question type", results["baselines"][which], "-"))
    if which == "easy-vqa":
        kinds = ["yes/no", "shape", "color"]
        head = "| method | test accuracy | " + " | ".join(kinds) + " | training |"
        cells = [f"| {n} | {100 * r['accuracy']:.2f} | "
                 + " | ".join(f"{100 * r['per_answer_type'].get(k, 0):.2f}" for k in kinds)
                 + f" | {t} |" for n, r, t in rows]  # fmt: skip
        sep = "|---|---:|" + "---:|" * len(kinds) + "---|"
    else:
        head = "| method | test accuracy | relational | non-relational | training |"
        cells = [f"| {n} | {100 * r['accuracy']:.2f} | {100 * r['groups'].get('rel', 0):.2f} "
                 f"| {100 * r['groups'].get('nonrel', 0):.2f} | {t} |"
                 for n, r, t in rows]  # fmt: skip
        sep = "|---|---:|---:|---:|---|"
    return "\n".join([f"### {which}", "", head, sep, *cells])


def render(results: dict[str, Any], sections: list[str]) -> str:
    commands = "\n".join(f"    {r['command']}   # {n}" for n, r in results["models"].items())
    return ("# VQA results (bench/vqa.py)\n\n" + f"Machine: {results['machine']}.\n\n"
            + "\n\n".join(sections) + "\n\nCommands:\n\n" + commands + "\n")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
