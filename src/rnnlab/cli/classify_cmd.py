"""``rnnlab classify train|eval|predict``: many-to-one sequence classification of text rows."""

from __future__ import annotations

import argparse

from rnnlab.cli.common import given, usage
from rnnlab.cli.training import add_train_arguments, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.tasks.classify import ClassifyTrainConfig

    p = sub.add_parser("classify", help="sequence classification: train, evaluate, predict")
    p.set_defaults(run=lambda args: usage(p))
    actions = p.add_subparsers(dest="action", metavar="ACTION", help="train, eval or predict")

    t = actions.add_parser("train", help="train a classifier on a TSV/CSV of text, label")
    t.add_argument("file", nargs="?", default=None, help="training rows (same as --data)")
    add_train_arguments(t, ClassifyTrainConfig)
    t.set_defaults(run=run_train)

    e = actions.add_parser("eval", help="accuracy, macro-F1 and confusion matrix on a file")
    e.add_argument("run_dir", help="run directory or checkpoint directory")
    e.add_argument("file", help="TSV/CSV of text, label (read like the training file)")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of the run (default: best)")  # fmt: skip
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    e.set_defaults(run=run_eval)

    r = actions.add_parser("predict", help="a label for each text")
    r.add_argument("run_dir", help="run directory or checkpoint directory")
    r.add_argument("texts", nargs="*", help="texts to classify (default: --input)")
    r.add_argument("--input", default=None, help="a file of texts, one per line")
    r.add_argument(
        "--unknown",
        choices=("error", "replace"),
        default="error",
        help="symbols unseen in training: error, or replace by <unk>",
    )
    r.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of the run (default: best)")  # fmt: skip
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    r.set_defaults(run=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from rnnlab.tasks.classify import ClassifyTrainConfig, train_classifier

    values = given(args, ClassifyTrainConfig)
    if args.file is not None:
        if values.get("data", args.file) != args.file:
            raise ValueError("data: given twice (FILE and --data); give one")
        values["data"] = args.file
    return run_training(args, ClassifyTrainConfig, train_classifier, "classify train", values,
                        then="rnnlab classify eval {run_dir} FILE")  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    from rnnlab.data.pairs import check_known, read_labeled
    from rnnlab.evaluate import require_finite
    from rnnlab.metrics.classification import format_confusion
    from rnnlab.runs import load_run
    from rnnlab.runtime import resolve_device
    from rnnlab.tasks.classify import evaluate_rows

    device = resolve_device(args.device)
    run = load_run(args.run_dir, args.checkpoint, str(device), tasks=("classify",),
                   command="rnnlab classify eval")  # fmt: skip
    config = run.train_config
    rows = read_labeled(args.file, tokens=config.tokens, header=config.header)
    check_known(rows, run.vocab, run.labels, args.file, "label")
    result = evaluate_rows(run.model, rows, run.vocab, run.labels, device=device)
    report = result.report
    require_finite({"loss": result.loss}, f"{args.run_dir} on {args.file}")
    print(f"{args.file}: accuracy {100 * report.accuracy:.2f}%  macro-F1 "
          f"{100 * report.macro_f1:.2f}%  over {report.examples} rows, loss "
          f"{result.loss:.4f} nats")  # fmt: skip
    print(format_confusion(report, list(run.labels.tokens)))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from rnnlab.data.errors import DataError
    from rnnlab.data.pairs import pad_batch, split_symbols
    from rnnlab.runs import load_run
    from rnnlab.runtime import resolve_device

    device = resolve_device(args.device)
    run = load_run(args.run_dir, args.checkpoint, str(device), tasks=("classify",),
                   command="rnnlab classify predict")  # fmt: skip
    from rnnlab.data.text import check_length

    texts = [check_length(t, f"text {i + 1}", "text") for i, t in enumerate(args.texts)]
    where = [f"text {i + 1} ({t!r})" for i, t in enumerate(texts)]
    if args.input:
        from rnnlab.cli.seq2seq_cmd import read_lines

        for text, at in read_lines(args.input):
            texts.append(text)
            where.append(at)
    if not texts:
        raise ValueError("no texts: give them as arguments or with --input FILE")
    ids = []
    for text, at in zip(texts, where, strict=True):
        symbols = split_symbols(text, run.train_config.tokens)
        if not symbols:
            raise DataError(f"{at}: empty text")
        unseen = run.vocab.unseen(symbols)
        if unseen and args.unknown == "error":
            raise DataError(f"{at}: symbol(s) not seen in training: "
                            + ", ".join(repr(s) for s in unseen[:10])
                            + " (--unknown replace maps them to <unk>)")  # fmt: skip
        ids.append(run.vocab.encode(symbols, "replace"))
    with torch.no_grad():
        for start in range(0, len(ids), 256):
            x, n = pad_batch(ids[start : start + 256])
            probs = run.model(x.to(device), n).softmax(-1)
            for text, p in zip(texts[start : start + 256], probs, strict=True):
                k = int(p.argmax())
                print(f"{run.labels.tokens[k]}\t{float(p[k]):.3f}\t{text}")
    return 0
