"""``rnnlab seq2seq train|eval|predict``: encoder-decoders on pairs files or G2P on CMUdict."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rnnlab.cli.common import add_config_flags, given, usage
from rnnlab.cli.training import add_train_arguments, run_training


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.models.seq2seq import DecodeConfig
    from rnnlab.tasks.seq2seq import Seq2SeqTrainConfig

    p = sub.add_parser("seq2seq", help="sequence to sequence: train, evaluate (PER/WER), predict")
    p.set_defaults(run=lambda args: usage(p))
    actions = p.add_subparsers(dest="action", metavar="ACTION", help="train, eval or predict")

    t = actions.add_parser("train", help="train an encoder-decoder (--task g2p: CMUdict)")
    add_train_arguments(t, Seq2SeqTrainConfig)
    t.set_defaults(run=run_train)

    e = actions.add_parser("eval", help="PER and WER of a trained run on a split or a pairs file")
    e.add_argument("run_dir", help="run directory or checkpoint directory")
    e.add_argument(
        "--split",
        choices=("val", "test"),
        default=None,
        help="the run's split (default: test for g2p; a pairs run has only val, or --pairs)",
    )
    e.add_argument("--pairs", default=None, help="evaluate on this TSV/CSV file instead")
    e.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of the run (default: best)")  # fmt: skip
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    e.add_argument(
        "--output",
        default=None,
        help="also write source, output, right (1/0) and the references as TSV, one per source",
    )
    add_config_flags(e, DecodeConfig)
    e.set_defaults(run=run_eval)

    r = actions.add_parser("predict", help="outputs for sources (words -> ARPAbet for g2p)")
    r.add_argument("run_dir", nargs="?", default=None, help="run or checkpoint directory")
    r.add_argument("sources", nargs="*", help="source texts (default: --input, one per line)")
    r.add_argument("--input", default=None, help="a file of sources, one per line ('-': stdin)")
    r.add_argument(
        "--g2p-en",
        action="store_true",
        help="use g2p-en's published model instead of a run (fetched with pip)",
    )
    r.add_argument(
        "--unknown",
        choices=("error", "replace"),
        default="error",
        help="source symbols unseen in training: error, or replace by <unk>",
    )
    r.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of the run (default: best)")  # fmt: skip
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    add_config_flags(r, DecodeConfig)
    r.set_defaults(run=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from rnnlab.tasks.seq2seq import Seq2SeqTrainConfig, train_seq2seq

    return run_training(args, Seq2SeqTrainConfig, train_seq2seq, "seq2seq train",
                        then="rnnlab seq2seq eval {run_dir}")  # fmt: skip


def run_eval(args: argparse.Namespace) -> int:
    from rnnlab.data.pairs import check_known, read_pairs
    from rnnlab.evaluate import require_finite
    from rnnlab.models.seq2seq import DecodeConfig
    from rnnlab.runs import load_run
    from rnnlab.runtime import resolve_device
    from rnnlab.tasks.seq2seq import evaluate_pairs, load_task

    decode = DecodeConfig(**given(args, DecodeConfig))
    device = resolve_device(args.device)
    run = load_run(args.run_dir, args.checkpoint, str(device), tasks=("seq2seq",),
                   command="rnnlab seq2seq eval")  # fmt: skip
    config = run.train_config
    if args.pairs:
        pairs = read_pairs(args.pairs, source_tokens=config.source_tokens,
                           target_tokens=config.target_tokens, header=config.header)  # fmt: skip
        check_known(pairs, run.source, run.target, args.pairs)
        where = args.pairs
    elif config.task == "g2p":
        from rnnlab.data.cmudict import g2p_splits

        split = args.split or "test"
        pairs, where = g2p_splits(stress=config.stress)[split], f"CMUdict {split} split"
    elif args.split in (None, "val"):
        pairs, where = load_task(config).val, "val split"
    else:
        raise ValueError(
            "--split test: a pairs run has no test split of its own; give --pairs FILE"
        )
    start = time.perf_counter()
    result = evaluate_pairs(run.model, pairs, run.source, run.target, decode, device=device)
    rates = result.rates
    require_finite({"loss": result.loss}, f"{args.run_dir} on {where}")
    if args.output:
        _write_outputs(Path(args.output), result, config)
    print(f"{where}: WER {100 * rates.wer:.2f}%  PER {100 * rates.per:.2f}%  over {rates.words} "
          f"sources ({rates.word_errors} wrong, {rates.edits} edits / {rates.reference_symbols} "
          f"symbols), loss {result.loss:.4f} nats/symbol, {decode.method}"
          f"{f' {decode.beam}' if decode.method == 'beam' else ''}, "
          f"{time.perf_counter() - start:.1f}s")  # fmt: skip
    return 0


def _write_outputs(path: Path, result: Any, config: Any) -> None:
    from rnnlab.data.pairs import join_symbols

    lines = []
    for src, hyp, refs in zip(result.sources, result.hypotheses, result.references, strict=True):
        right = int(any(hyp == r for r in refs))
        shown = " | ".join(join_symbols(r, config.target_tokens) for r in refs)
        lines.append(f"{join_symbols(src, config.source_tokens)}\t"
                     f"{join_symbols(hyp, config.target_tokens)}\t{right}\t{shown}\n")  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(path)


def run_predict(args: argparse.Namespace) -> int:
    from rnnlab.data.errors import DataError
    from rnnlab.data.pairs import join_symbols, split_symbols
    from rnnlab.models.seq2seq import DecodeConfig
    from rnnlab.runs import load_run
    from rnnlab.runtime import resolve_device
    from rnnlab.tasks.seq2seq import decode_sources

    decode = DecodeConfig(**given(args, DecodeConfig))
    device = resolve_device(args.device)
    from rnnlab.data.text import check_length

    sources, source_at = [check_length(s, f"source {i + 1}", "source")
                          for i, s in enumerate(args.sources)], []  # fmt: skip
    if args.g2p_en:
        from rnnlab.models.g2p_en import MAX_STEPS, load_g2p_en

        if args.run_dir is not None:
            sources.insert(0, args.run_dir)
        model, source, target = load_g2p_en()
        model = model.to(device)
        source_tokens, target_tokens = "char", "space"
        lower = True  # CMUdict spells words in lower case
        if not decode.max_length:
            decode = DecodeConfig(**{**vars(decode), "max_length": MAX_STEPS})
    else:
        if args.run_dir is None:
            raise ValueError("give a run directory (or --g2p-en) and sources")
        run = load_run(args.run_dir, args.checkpoint, str(device), tasks=("seq2seq",),
                       command="rnnlab seq2seq predict")  # fmt: skip
        model, source, target = run.model, run.source, run.target
        config = run.train_config
        source_tokens, target_tokens = config.source_tokens, config.target_tokens
        lower = run.train_config.task == "g2p"
    source_at = [f"source {i + 1} ({s!r})" for i, s in enumerate(sources)]
    if args.input:
        lines = read_lines(args.input)
        sources += [text for text, _ in lines]
        source_at += [where for _, where in lines]
    if not sources:
        raise ValueError("no sources: give them as arguments or with --input FILE")
    texts = [s.lower() if lower else s for s in sources]
    symbols = [split_symbols(s, source_tokens) for s in texts]  # type: ignore[arg-type]
    for syms, where in zip(symbols, source_at, strict=True):
        if not syms:
            raise DataError(f"{where}: empty source")
        unseen = source.unseen(syms)
        if unseen and args.unknown == "error":
            raise DataError(f"{where}: symbol(s) not seen in training: "
                            + ", ".join(repr(s) for s in unseen[:10])
                            + " (--unknown replace maps them to <unk>)")  # fmt: skip
    outputs = decode_sources(symbols, model, source, target, decode, device=device)
    for text, out in zip(sources, outputs, strict=True):
        print(f"{text}\t{join_symbols(out, target_tokens)}")  # type: ignore[arg-type]
    return 0


def read_lines(path: str) -> list[tuple[str, str]]:
    """The non-blank lines of a ``predict --input`` file ('-': stdin), stripped, each with
    ``file:line``; read by ``rnnlab.data.text`` (BOM dropped, cut at \\n and \\r\\n only)."""
    from rnnlab.data import text as text_file

    name = "<stdin>" if path == "-" else path
    lines = text_file.read_lines(sys.stdin.buffer if path == "-" else path, name=name)
    return [(text_file.check_length(line.text.strip(), f"{name}:{line.number}", "line"),
             f"{name}:{line.number}") for line in lines if line.text.strip()]  # fmt: skip
