"""``rnnlab vqa train|eval|predict|easy-vqa|sort-of-clevr``: visual question answering.

rnnlab vqa easy-vqa                                   # prints the easy-vqa data folder
rnnlab vqa train --data DATA/train                    # easy-vqa layout (val: hash split)
rnnlab vqa train --data q.json --annotations a.json   # VQA v2 layout
rnnlab vqa eval runs/train-vqa-cnn --data DATA/test --blind runs/train-vqa-none
rnnlab vqa predict runs/train-vqa-cnn img.png "what color is the shape?" --report out.html
rnnlab vqa sort-of-clevr data/soc                     # the synthetic relational set
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from rnnlab.cli.common import check_output_file, given, usage
from rnnlab.cli.training import add_train_arguments, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.tasks.vqa import VQATrainConfig

    p = sub.add_parser("vqa", help="visual question answering: train, eval, predict, data")
    verbs = p.add_subparsers(dest="verb", metavar="VERB",
                             help="train, eval, predict, easy-vqa or sort-of-clevr")  # fmt: skip

    t = verbs.add_parser("train", help="train a VQA model (easy-vqa or VQA v2 layout)")
    add_train_arguments(t, VQATrainConfig)
    t.set_defaults(run=run_train)

    e = verbs.add_parser("eval", help="accuracy per question and answer type, beside baselines")
    e.add_argument("run_dir", help="run directory or checkpoint directory")
    e.add_argument("--data", help="questions to score (default: the run's validation questions)")
    e.add_argument("--annotations", help="VQA v2 annotations JSON of --data")
    e.add_argument("--images", help="image folder of --data (default: images/ beside it)")
    e.add_argument("--features", help="feature file of --data's images (runs on features)")
    e.add_argument("--blind", metavar="RUN_DIR", help="a question-only run to score beside it")
    _common(e)
    e.set_defaults(run=run_eval)

    r = verbs.add_parser("predict", help="the top answers to questions about images")
    r.add_argument("run_dir", help="run directory or checkpoint directory")
    r.add_argument("pairs", nargs="+", metavar="IMAGE QUESTION",
                   help="image file and question, repeated; a run on features takes a .npy/"
                   ".safetensors file of one row instead of the image")  # fmt: skip
    r.add_argument("--top", type=int, default=3, help="answers shown per question (default: 3)")
    r.add_argument("--report", metavar="HTML", help="also write a self-contained HTML page")
    _common(r)
    r.set_defaults(run=run_predict)

    d = verbs.add_parser("easy-vqa", help="print the easy-vqa data folder (fetched if needed)")
    d.add_argument("--wheel", help="a copy of the wheel to read instead of fetching it")
    d.add_argument("--cache-dir", help="where the data is extracted (default: rnnlab's cache)")
    d.set_defaults(run=run_easy_vqa)

    s = verbs.add_parser("sort-of-clevr", help="write the Sort-of-CLEVR set (VQA v2 layout)")
    s.add_argument("out_dir", help="folder for train/, val/ and test/")
    s.add_argument("--num-train", type=int, default=9800, help="training images (default 9800)")
    s.add_argument("--num-val", type=int, default=200, help="validation images (default 200)")
    s.add_argument("--num-test", type=int, default=200, help="test images (default 200)")
    s.add_argument(
        "--questions-per-image",
        type=int,
        default=10,
        help="relational and non-relational questions each, per image (default 10)",
    )
    s.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    s.set_defaults(run=run_sort_of_clevr)
    p.set_defaults(run=lambda args: usage(p))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="(default: best, by validation accuracy)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def run_train(args: argparse.Namespace) -> int:
    from rnnlab.tasks.vqa import VQATrainConfig, train_vqa

    if not args.resume and not given(args, VQATrainConfig).get("data"):
        raise ValueError("--data: give an easy-vqa split folder or a VQA v2 questions JSON "
                         "(or --resume RUN_DIR)")  # fmt: skip
    return run_training(args, VQATrainConfig, train_vqa, "vqa train",
                        then="rnnlab vqa eval {run_dir} --data TEST_QUESTIONS")  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    from rnnlab.metrics.vqa import most_frequent_answers, predict_most_frequent, vqa_report
    from rnnlab.runs import load_run
    from rnnlab.tasks.vqa import evaluate_questions, image_inputs, read_split, split_questions

    run = load_run(args.run_dir, args.checkpoint, args.device, tasks=("vqa",),
                   command="rnnlab vqa eval")  # fmt: skip
    config = run.train_config
    train, val, _ = split_questions(config)
    width = run.model.config.feature_size if config.features else None
    if args.data:
        if config.features and not args.features:
            raise ValueError("--features: this run reads precomputed features; give the feature "
                             "file of --data's images")  # fmt: skip
        dataset, name = read_split(args.data, args.annotations or "", args.images or ""), args.data
        inputs = image_inputs(dataset, config, args.features or "", width)
    else:
        if args.annotations or args.images or args.features:
            raise ValueError("--annotations/--images/--features: only with --data")
        dataset, name = val, "the run's validation questions"
        inputs = image_inputs(dataset, config, config.val_features or config.features, width)
    device = next(run.model.parameters()).device
    common = dict(device=device)
    rows: list[tuple[str, Any]] = []
    found = evaluate_questions(run.model, dataset, inputs, run.vocab, run.vocabs["answers"],
                               config.max_length, **common)  # fmt: skip
    rows.append((f"model ({run.model.config.encoder})", found.report))
    qs = dataset.questions
    types = [q.question_type for q in qs]
    table = most_frequent_answers([q.question_type for q in train.questions],
                                  [q.answer for q in train.questions])  # fmt: skip
    humans = [q.human_answers for q in qs] if dataset.has_human_answers else None
    rows.append(("most frequent per q-type", vqa_report(
        predict_most_frequent(table, types), [q.answer for q in qs], types,
        [q.answer_type for q in qs], humans)))  # fmt: skip
    if args.blind:
        blind = load_run(args.blind, args.checkpoint, args.device, tasks=("vqa",),
                         command="rnnlab vqa eval --blind")  # fmt: skip
        if blind.model.config.encoder != "none":
            raise ValueError(f"--blind: {args.blind} reads images; give a run trained with "
                             "--blind")  # fmt: skip
        got = evaluate_questions(blind.model, dataset, None, blind.vocab, blind.vocabs["answers"],
                                 blind.train_config.max_length, **common)  # fmt: skip
        rows.append(("blind (question only)", got.report))
    print(f"{name}: {len(qs)} questions, {len(dataset.images)} images")
    print(format_table(rows))
    return 0


def format_table(rows: list[tuple[str, Any]]) -> str:
    """Methods as rows; accuracy, VQA accuracy (when known), then per answer type and per
    question type, in percent."""
    first = rows[0][1]
    answer_types = list(first.per_answer_type)
    head = ["accuracy"] + (["VQA acc"] if first.vqa_accuracy is not None else []) + answer_types
    lines = [f"{'method':<26}" + "".join(f"{h:>12}" for h in head)]
    for method, r in rows:
        cells = [r.accuracy] + ([r.vqa_accuracy] if r.vqa_accuracy is not None else [])
        cells += [r.per_answer_type.get(t, 0.0) for t in answer_types]
        lines.append(f"{method:<26}" + "".join(f"{100 * c:>12.2f}" for c in cells))
    lines.append("")
    lines.append(f"{'question type':<44}{'n':>7}" + "".join(f"{m[:12]:>13}" for m, _ in rows))
    for t, n in first.question_type_counts.items():
        cells = "".join(f"{100 * r.per_question_type.get(t, 0.0):>13.2f}" for _, r in rows)
        lines.append(f"{t[:43]:<44}{n:>7}" + cells)
    return "\n".join(lines)


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from rnnlab.data.captions import read_features
    from rnnlab.data.errors import DataError
    from rnnlab.data.text import check_length
    from rnnlab.data.vqa import tokenize
    from rnnlab.runs import load_run

    if len(args.pairs) % 2:
        raise ValueError("IMAGE QUESTION: give pairs: an image file, then its question")
    if not 1 <= args.top <= 1000:
        raise ValueError(f"--top: expected 1..1000, got {args.top}")
    check_output_file("--report", args.report)  # before the work, not after
    run = load_run(args.run_dir, args.checkpoint, args.device, tasks=("vqa",),
                   command="rnnlab vqa predict")  # fmt: skip
    model, config = run.model, run.model.config
    device = next(model.parameters()).device
    files = [Path(f) for f in args.pairs[0::2]]
    questions = [check_length(q, f"question {i + 1}", "question")
                 for i, q in enumerate(args.pairs[1::2])]  # fmt: skip
    ids, lengths = [], []
    for i, q in enumerate(questions):
        words = tokenize(q)[: run.train_config.max_length]
        if not words:
            raise DataError(f"question {i + 1} ({q!r}): no words")
        unseen = run.vocab.unseen(words)
        if unseen:
            warnings.warn(f"question {i + 1}: word(s) not seen in training read as <unk>: "
                          + ", ".join(repr(w) for w in unseen[:10]), stacklevel=1)  # fmt: skip
        ids.append(run.vocab.encode(words, "replace"))
        lengths.append(len(words))
    x = torch.zeros(len(ids), max(lengths), dtype=torch.long)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.as_tensor(row)
    images = None
    if config.encoder == "cnn":
        from rnnlab.data.captions import load_images

        images = torch.from_numpy(load_images(files, config.image_size)).to(device)
    elif config.encoder == "features":
        if args.report:
            raise ValueError("--report: a run on features has no images to show")
        rows = []
        for f in files:
            array = read_features(f, width=config.feature_size)
            if len(array) != 1:
                raise DataError(f"{f}: expected one row of features, found {len(array)}")
            rows.append(torch.from_numpy(array))
        images = torch.cat(rows).to(device)
    with torch.no_grad():
        logits, attention = model.answer(images, x.to(device), torch.tensor(lengths))
        probs = logits.softmax(-1).cpu()
    answers = run.vocabs["answers"].tokens
    top = min(args.top, len(answers))
    predictions = []
    for i, (f, q) in enumerate(zip(files, questions, strict=True)):
        p, k = probs[i].topk(top)
        best = [(answers[j], float(v)) for v, j in zip(p.tolist(), k.tolist(), strict=True)]
        print(f"{f}\t{q}\t" + "  ".join(f"{a} {v:.3f}" for a, v in best))
        att = None if attention is None else attention[i].cpu().numpy()
        predictions.append((f, q, best, att))
    if args.report:
        from rnnlab.report.vqa import Prediction, render_predictions, write_report

        page = render_predictions([Prediction(*p) for p in predictions],
                                  subtitle=f"run {run.path}")  # fmt: skip
        print(f"report: {write_report(args.report, page)}", file=sys.stderr)
    return 0


def run_easy_vqa(args: argparse.Namespace) -> int:
    from rnnlab.data.easy_vqa import easy_vqa_root

    print(easy_vqa_root(args.cache_dir, args.wheel))
    return 0


def run_sort_of_clevr(args: argparse.Namespace) -> int:
    from rnnlab.data.sort_of_clevr import write_sort_of_clevr

    print(write_sort_of_clevr(args.out_dir, args.num_train, args.num_val, args.num_test,
                              args.questions_per_image, args.seed))  # fmt: skip
    return 0
