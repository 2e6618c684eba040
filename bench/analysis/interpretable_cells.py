"""Reproduce the README's "Looking inside" numbers: train a char-LSTM for a few CPU minutes on
Linux kernel C and on Shakespeare, then search its cells, count gate saturation, compare it with
a 20-gram baseline per character, and draw the figures and a viewer screenshot.

    python bench/analysis/interpretable_cells.py                 # both corpora, 4 minutes each
    python bench/analysis/interpretable_cells.py --corpus linux --minutes 2

Each corpus is cut in two: the first 90% trains (the run's own 5% validation split included), the
last 10% is never trained on; the cell search and the error analysis read the first ``--chars``
characters of it (the search ranks units on the first half of those and scores them on the rest).
The n-gram baseline is fitted on exactly the run's training split. Runs go to ``--work``
(default runs/analysis, git-ignored); figures and ``<corpus>.json`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from pathlib import Path

import numpy as np

from rnnlab.analysis import analyze
from rnnlab.analysis.export import write_json
from rnnlab.analysis.ngram import error_analysis, ngram_probs
from rnnlab.analysis.plots import plot_errors, plot_saturation
from rnnlab.cli import main as rnnlab_main
from rnnlab.data import prepare_corpus
from rnnlab.runs import load_run
from rnnlab.viewer import viewer_data, write_html

DATA = Path("/work/shared/data")
CORPORA = {
    "linux": {
        "source": DATA / "linux_kernel_6.1_subset.txt.xz",
        "features": [
            "bracket_depth",
            "paren_depth",
            "brace_depth",
            "in_comment",
            "in_string",
            "indent_depth",
            "line_position",
            "in_if_condition",
            "in_if_block",
            "word_start",
        ],
        "headline": ["paren_depth", "in_comment"],
        "view_unit_of": "in_comment",
    },
    "shakespeare": {
        "source": DATA / "tinyshakespeare.txt",
        "features": [
            "line_position",
            "line_length",
            "in_quote",
            "word_start",
            "vowel",
            "consonant",
            "bracket_depth",
        ],
        "headline": ["line_position"],
        "view_unit_of": "line_position",
    },
}
VAL_FRAC, TEST_FRAC = 0.05, 0.0


def read_source(path: Path) -> str:
    raw = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    return raw.decode("utf-8")


def prepare(name: str, work: Path) -> tuple[Path, Path]:
    """(train file, held-out file) of a corpus: first 90% / last 10%, cut at a newline."""
    train, held = work / f"{name}-train.txt", work / f"{name}-heldout.txt"
    if not train.exists():
        text = read_source(CORPORA[name]["source"])
        cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
        work.mkdir(parents=True, exist_ok=True)
        train.write_text(text[:cut], encoding="utf-8")
        held.write_text(text[cut:], encoding="utf-8")
    return train, held


def train(name: str, train_file: Path, work: Path, args: argparse.Namespace) -> Path:
    run = work / f"{name}-lstm"
    if args.skip_train and run.exists():
        return run
    argv = [
        "train",
        str(train_file),
        "--out-dir",
        str(run),
        "--cell",
        "lstm",
        "--hidden-size",
        str(args.hidden_size),
        "--num-layers",
        str(args.num_layers),
        "--batch-size",
        "32",
        "--seq-len",
        "100",
        "--max-minutes",
        str(args.minutes),
        "--max-steps",
        "1000000",
        "--decay-steps",
        str(args.decay_steps),
        "--eval-every",
        "250",
        "--eval-batches",
        "20",
        "--sample-length",
        "0",
        "--keep-last",
        "40",
        "--val-frac",
        str(VAL_FRAC),
        "--test-frac",
        str(TEST_FRAC),
        "--no-progress",
    ]
    if run.exists():  # a fresh run each time the script trains
        import shutil

        shutil.rmtree(run)
    code = rnnlab_main(argv)
    if code != 0:
        raise SystemExit(f"training {name} failed with exit code {code}")
    return run


def study(name: str, args: argparse.Namespace) -> dict:
    spec = CORPORA[name]
    work, out = Path(args.work), Path(args.out)
    train_file, held_file = prepare(name, work)
    run_dir = train(name, train_file, work, args)
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    train_s = json.loads(metrics[-1])["elapsed_s"]
    run = load_run(run_dir)
    with held_file.open(encoding="utf-8", newline="") as f:
        text = f.read(args.chars)
    ids = run.vocab.encode(text, unknown="replace")
    t0 = time.perf_counter()
    result = analyze(run.model, ids, text, spec["features"], view_chars=3000)
    analyze_s = time.perf_counter() - t0
    split = (1 - VAL_FRAC - TEST_FRAC, VAL_FRAC, TEST_FRAC)
    train_ids = np.asarray(prepare_corpus(train_file, split=split).split("train"))
    t0 = time.perf_counter()
    p = ngram_probs(train_ids, np.asarray(ids), len(run.vocab), order=20)
    ngram_s = time.perf_counter() - t0
    rows = error_analysis(text, result.loss, p)
    figures = out / "figures"
    plot_saturation(result.saturation, figures / f"{name}_saturation.png", f"{name}: LSTM gates")
    plot_errors(rows, figures / f"{name}_errors.png", f"{name}: LSTM vs 20-gram")
    view_unit = result.cells.best(spec["view_unit_of"]).unit
    data = viewer_data(result, run.vocab.tokens, run.model)
    write_html(data.payload, work / f"{name}_cells.html")
    if not args.no_screenshot:
        screenshot(data, view_unit, figures / f"viewer_{name}.png")
    record = {
        "corpus": name,
        "model": f"LSTM {args.num_layers}x{args.hidden_size}",
        "train_seconds": round(train_s),
        "train_steps": run.step,
        "train_chars": len(train_ids),
        "heldout_chars": len(text),
        "analyze_seconds": round(analyze_s, 1),
        "ngram_seconds": round(ngram_s, 1),
        "cells": result.cells.to_dict(),
        "saturation": result.saturation.summary(),
        "errors": {k: [vars(r) for r in v] for k, v in rows.items()},
        "view_unit": view_unit,
    }
    write_json(record, out / f"{name}.json")
    report(record, spec["headline"])
    return record


def screenshot(data, unit: str, path: Path) -> None:
    """The served viewer with ``unit`` chosen, in headless Chromium."""
    import threading

    from playwright.sync_api import sync_playwright

    from rnnlab.viewer import ViewerServer

    server = ViewerServer(data)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url)
            page.wait_for_selector("body[data-ready='1']")
            page.select_option("#unit", unit)
            page.wait_for_selector(f"body[data-unit='{unit}']")
            page.locator("#text > span").nth(200).hover()
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


def report(record: dict, headline: list[str]) -> None:
    cells = record["cells"]
    print(
        f"\n== {record['corpus']}: {record['model']}, {record['train_steps']} steps in "
        f"{record['train_seconds']} s; held-out {record['heldout_chars']:,} chars =="
    )
    for name, rep in cells["features"].items():
        s = rep["top"][0]
        acc = (
            f", accuracy {s['accuracy']:.3f} (majority {rep['majority_accuracy']:.3f})"
            if (s["accuracy"] is not None)
            else ""
        )
        mark = "  <-- headline" if name in headline else ""
        print(f"  {name:<16} {s['unit']:<9} held-out r = {s['corr']:+.3f}{acc}{mark}")
    (total,) = record["errors"]["all"]
    print(
        f"  loss: LSTM {total['rnn_loss']:.3f}, 20-gram {total['ngram_loss']:.3f} nats/char; "
        f"errors LSTM {total['rnn_error']:.1%}, 20-gram {total['ngram_error']:.1%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("linux", "shakespeare", "both"), default="both")
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes per corpus")
    parser.add_argument("--decay-steps", type=int, default=3000, help="cosine LR horizon")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--chars", type=int, default=100_000, help="held-out characters read")
    parser.add_argument("--work", default="runs/analysis")
    parser.add_argument("--out", default="bench/analysis")
    parser.add_argument("--skip-train", action="store_true", help="reuse existing runs")
    parser.add_argument("--no-screenshot", action="store_true")
    args = parser.parse_args()
    names = ["linux", "shakespeare"] if args.corpus == "both" else [args.corpus]
    records = [study(n, args) for n in names]
    failed = []
    for rec in records:
        for feat in CORPORA[rec["corpus"]]["headline"]:
            r = abs(rec["cells"]["features"][feat]["top"][0]["corr"])
            if r < 0.5:
                failed.append(f"{rec['corpus']} {feat}: |r| = {r:.3f} < 0.5")
    print("\n" + ("\n".join(failed) if failed else "every headline unit has |r| >= 0.5"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
