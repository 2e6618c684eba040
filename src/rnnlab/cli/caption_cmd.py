"""``rnnlab caption train|eval|predict|shapes``: image captioning (one-to-many).

rnnlab caption shapes data/shapes                       # the synthetic set (captions.json)
rnnlab caption train --data data/shapes/captions.json --images data/shapes/images
rnnlab caption eval runs/captions-caption-lstm --beam 3 --baselines --report report.html
rnnlab caption predict runs/captions-caption-lstm photo1.png photo2.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnlab.cli.common import check_output_file, given, usage
from rnnlab.cli.training import add_train_arguments, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.tasks.caption import CaptionTrainConfig

    p = sub.add_parser("caption", help="image captioning: train, eval, predict, synthetic data")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", help="train, eval, predict or shapes")

    t = verbs.add_parser("train", help="train a captioner on a Karpathy-split caption JSON")
    add_train_arguments(t, CaptionTrainConfig)
    t.set_defaults(run=run_train)

    e = verbs.add_parser("eval", help="BLEU-1..4 and CIDEr-D on a split; optional HTML report")
    e.add_argument("run_dir", help="run directory or checkpoint directory")
    _decoding_flags(e)
    e.add_argument("--split", choices=("val", "test"), default="test", help="(default: test)")
    e.add_argument("--data", help="caption JSON (default: the one the run was trained on)")
    e.add_argument("--images", help="image folder (default: the run's)")
    e.add_argument("--features", help="feature file (runs trained on features)")
    e.add_argument("--max-images", type=int, default=0, help="score only the first N (0: all)")
    e.add_argument(
        "--baselines",
        action="store_true",
        help="also score the most-frequent and nearest-neighbour captions",
    )
    e.add_argument("--report", metavar="HTML", help="write a static HTML report here")
    e.set_defaults(run=run_eval)

    r = verbs.add_parser("predict", help="print a caption for each image file")
    r.add_argument("run_dir", help="run directory or checkpoint directory")
    r.add_argument(
        "files",
        nargs="+",
        metavar="IMAGE",
        help="image files (PNG, JPEG, ...); feature files (.npy/.safetensors) for a "
        "run trained on features: one caption per row",
    )
    _decoding_flags(r)
    r.set_defaults(run=run_predict)

    s = verbs.add_parser("shapes", help="write the synthetic coloured-shapes caption set")
    s.add_argument("out_dir", help="folder for captions.json and images/")
    s.add_argument("--num-images", type=int, default=2400, help="images in all (default: 2400)")
    s.add_argument("--num-val", type=int, default=200, help="of them for validation (default: 200)")
    s.add_argument(
        "--num-test", type=int, default=200, help="of them held out for test (default: 200)"
    )
    s.add_argument("--image-size", type=int, default=64, help="side in pixels (default: 64)")
    s.add_argument(
        "--seed", type=int, default=0, help="generator seed: same seed, same set (default: 0)"
    )
    s.set_defaults(run=run_shapes)
    p.set_defaults(run=lambda args: usage(p))


def _decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=1, help="beam width (1: greedy; default: 1)")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sample at this temperature (0: greedy; default: 0)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.0,
        help="beam search length normalisation, GNMT's alpha (default: 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="(default: best, by validation CIDEr-D)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _check_decoding(args: argparse.Namespace) -> None:
    if not 1 <= args.beam <= 100:
        raise ValueError(f"--beam: expected 1..100, got {args.beam}")
    if not 0 <= args.temperature <= 100:
        raise ValueError(f"--temperature: expected 0..100, got {args.temperature}")
    if args.beam > 1 and args.temperature > 0:
        raise ValueError("--beam and --temperature: choose beam search or sampling, not both")
    if not 0 <= args.alpha <= 10:
        raise ValueError(f"--alpha: expected 0..10, got {args.alpha}")


def run_train(args: argparse.Namespace) -> int:
    from rnnlab.tasks.caption import CaptionTrainConfig, train_captioner

    if not args.resume and not given(args, CaptionTrainConfig).get("data"):
        raise ValueError("--data: give a caption JSON file (or --resume RUN_DIR)")
    return run_training(args, CaptionTrainConfig, train_captioner, "caption train",
                        then="rnnlab caption eval {run_dir}")  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    from rnnlab.report import captions as report
    from rnnlab.runs import load_run

    _check_decoding(args)
    if args.max_images < 0:
        raise ValueError(f"--max-images: expected >= 0, got {args.max_images}")
    check_output_file("--report", args.report)  # said before the evaluation, not after
    run = load_run(args.run_dir, args.checkpoint, args.device, tasks=("caption",),
                   command="rnnlab caption eval")  # fmt: skip
    dataset = report.dataset_of(run, args.data, args.images)
    inputs = report.model_inputs(run, dataset, args.features)
    result = report.evaluate_run(
        run,
        dataset,
        inputs,
        args.split,
        beam=args.beam,
        temperature=args.temperature,
        alpha=args.alpha,
        seed=args.seed,
        max_images=args.max_images,
    )
    others = []
    if args.baselines:
        others = [
            report.most_frequent_baseline(dataset, args.split),
            report.nearest_neighbour_baseline(dataset, inputs, args.split),
        ]
    names = list(result.scores.as_dict())
    print(f"{args.split} split, {len(result.images)} images")
    print(f"{'method':<24}" + "".join(f"{n:>9}" for n in names))
    for ev in (result, *others):
        print(f"{ev.method:<24}" + "".join(f"{v:>9.4f}" for v in ev.scores.as_dict().values()))
    if args.report:
        subtitle = f"run {run.path} · decoding: {result.method}"
        maps = report.attention_of(run, result, inputs)
        path = report.write_report(
            args.report, report.render_report(result, others, subtitle=subtitle, attention=maps)
        )
        print(f"report: {path}", file=sys.stderr)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from rnnlab.data.captions import load_images, read_features
    from rnnlab.models.captioner import generate_captions
    from rnnlab.runs import load_run

    _check_decoding(args)
    run = load_run(args.run_dir, args.checkpoint, args.device, tasks=("caption",),
                   command="rnnlab caption predict")  # fmt: skip
    device = next(run.model.parameters()).device
    if run.model.config.encoder == "features":
        names, rows = [], []
        for file in args.files:
            array = read_features(file)
            names += [f"{file}[{i}]" for i in range(len(array))]
            rows.append(torch.from_numpy(array))
        inputs = torch.cat(rows)
    else:
        names = list(args.files)
        inputs = torch.from_numpy(
            load_images([Path(f) for f in args.files], run.model.config.image_size)
        )
    generator = torch.Generator().manual_seed(args.seed)
    ids = generate_captions(
        run.model,
        inputs.to(device),
        max_length=run.train_config.max_length,
        beam=args.beam,
        temperature=args.temperature,
        alpha=args.alpha,
        generator=generator,
    )
    for name, caption in zip(names, ids, strict=True):
        print(f"{name}\t{' '.join(run.vocab.decode(caption))}")
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    from rnnlab.data.shapes import write_shapes_dataset

    path = write_shapes_dataset(
        args.out_dir,
        args.num_images,
        num_val=args.num_val,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(path)
    return 0
