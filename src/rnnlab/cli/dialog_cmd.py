"""``rnnlab dialog train|eval|predict|clevr``: visual dialog (VisDial's ranking task).

rnnlab dialog clevr data/dialog                          # the synthetic CLEVR-Dialog-style set
rnnlab dialog train --data data/dialog/visdial_1.0_train.json \
    --val-data data/dialog/visdial_1.0_val.json \
    --dense data/dialog/visdial_1.0_val_dense_annotations.json
rnnlab dialog eval runs/visdial_1.0_train-dialog-late_fusion \
    --data data/dialog/visdial_1.0_test.json
rnnlab dialog predict RUN scene.png --caption "there are 3 squares and 3 circles" < questions.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnlab.cli.common import given, usage
from rnnlab.cli.training import add_train_arguments, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.tasks.dialog import DialogTrainConfig

    p = sub.add_parser("dialog", help="visual dialog: train, eval, predict, synthetic data")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", help="train, eval, predict or clevr")

    t = verbs.add_parser("train", help="train a dialog model on VisDial v1.0 JSON files")
    add_train_arguments(t, DialogTrainConfig)
    t.set_defaults(run=run_train)

    e = verbs.add_parser("eval", help="R@1/5/10, mean rank, MRR, NDCG, R@1 by coreference")
    e.add_argument("run_dir", help="run directory or checkpoint directory")
    e.add_argument("--data", help="VisDial JSON (default: the run's validation file)")
    e.add_argument(
        "--dense",
        help="dense annotations for NDCG (default: the run's, with the run's validation file)",
    )
    e.add_argument("--images", help="image folder (default: the run's)")
    e.add_argument("--max-dialogs", type=int, default=0, help="rank only the first N (0: all)")
    _common_flags(e)
    e.set_defaults(run=run_eval)

    r = verbs.add_parser("predict", help="answer questions about an image in turn, history kept")
    r.add_argument("run_dir", help="run directory or checkpoint directory")
    r.add_argument("image", help="image file (PNG, JPEG, ...)")
    r.add_argument("--caption", required=True, help="the image's caption (the dialog's start)")
    r.add_argument("--questions", help="file with one question per line (default: stdin)")
    r.add_argument(
        "--beam", type=int, default=1, help="generative decoder: beam width (1: greedy; default: 1)"
    )
    _common_flags(r)
    r.set_defaults(run=run_predict)

    s = verbs.add_parser("clevr", help="write the synthetic dialogs over Sort-of-CLEVR scenes")
    s.add_argument("out_dir", help="folder for the VisDial-layout JSON files and images/")
    s.add_argument("--num-dialogs", type=int, default=2000, help="dialogs in all (default: 2000)")
    s.add_argument("--num-val", type=int, default=200, help="of them for validation (default: 200)")
    s.add_argument("--num-test", type=int, default=200, help="of them for test (default: 200)")
    s.add_argument("--seed", type=int, default=0, help="same seed, same set (default: 0)")
    s.set_defaults(run=run_clevr)
    p.set_defaults(run=lambda args: usage(p))


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="(default: best, by validation MRR)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def run_train(args: argparse.Namespace) -> int:
    from rnnlab.tasks.dialog import DialogTrainConfig, train_dialog

    if not args.resume:
        values = given(args, DialogTrainConfig)
        if not values.get("data") or not values.get("val_data"):
            raise ValueError("--data and --val-data: give VisDial JSON files (or --resume RUN_DIR)")
    return run_training(
        args, DialogTrainConfig, train_dialog, "dialog train", then="rnnlab dialog eval {run_dir}"
    )


def run_eval(args: argparse.Namespace) -> int:
    from rnnlab.runs import load_run
    from rnnlab.tasks.dialog import dialog_metrics, load_split, rank_options

    if args.max_dialogs < 0:
        raise ValueError(f"--max-dialogs: expected >= 0, got {args.max_dialogs}")
    run = load_run(
        args.run_dir, args.checkpoint, args.device, tasks=("dialog",), command="rnnlab dialog eval"
    )
    config = run.train_config
    data = args.data or config.val_data
    dense = args.dense if args.dense is not None else (config.dense if not args.data else "")
    split, _ = load_split(data, config, run.vocab, dense or "", args.images or config.images)
    device = next(run.model.parameters()).device
    scores, loss = rank_options(run.model, split, device, args.max_dialogs, config.batch_size)
    metrics = dialog_metrics(scores, split.encoded)
    rounds = scores.shape[0] * scores.shape[1]
    print(f"{data}: {scores.shape[0]} dialogs, {rounds} rounds, {scores.shape[2]} options")
    names = {
        "r1": "R@1",
        "r5": "R@5",
        "r10": "R@10",
        "mean_rank": "mean rank",
        "mrr": "MRR",
        "ndcg": "NDCG",
    }
    print(f"{'loss':<12}{loss:>9.4f}")
    for key, value in metrics.items():
        label = names.get(key, key.replace("r1_coref_", "R@1, coref distance "))
        print(f"{label:<12}{value:>9.4f}" if key in names else f"{label}  {value:.4f}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from rnnlab.data.text import read_text
    from rnnlab.runs import load_run
    from rnnlab.tasks.dialog import answer_in_turn

    if not 1 <= args.beam <= 100:
        raise ValueError(f"--beam: expected 1..100, got {args.beam}")
    run = load_run(
        args.run_dir,
        args.checkpoint,
        args.device,
        tasks=("dialog",),
        command="rnnlab dialog predict",
    )
    if args.questions:
        text = read_text(args.questions)
    else:
        text = sys.stdin.read()
    questions = [line.strip() for line in text.splitlines() if line.strip()]
    if not questions:
        raise ValueError(f"{args.questions or 'stdin'}: no questions (one per line)")
    for question, answer in zip(
        questions,
        answer_in_turn(run, Path(args.image), args.caption, questions, beam=args.beam),
        strict=True,
    ):
        print(f"Q: {question}\nA: {answer}")
    return 0


def run_clevr(args: argparse.Namespace) -> int:
    from rnnlab.data.clevr_dialog import write_clevr_dialog

    paths = write_clevr_dialog(
        args.out_dir, args.num_dialogs, num_val=args.num_val, num_test=args.num_test, seed=args.seed
    )
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0
