"""The ``rnnlab cells``, ``rnnlab gradients`` and ``rnnlab view`` commands (thin: flags -> one
library call each -> files and a short report). ``register(subparsers)`` adds all three; this is
the CLI layer, so it may load runs (``rnnlab.runs``) and start the viewer. Every size flag is a
field of ``rnnlab.analysis.options`` checked by the one validator before any work starts; every
file goes through ``rnnlab.io.write_inside`` into the directory it was handed (RUN_DIR for the
default ``RUN_DIR/analysis``, else ``--out``), never through a symbolic link.

    rnnlab cells RUN_DIR --text FILE [--out DIR] [--html FILE] [--lstmvis DIR] [--ngram-train F]
    rnnlab gradients [RUN_DIR] [--cells rnn,lstm] [--steps 100] [--out DIR]
    rnnlab view RUN_DIR --text FILE [--port 8765]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rnnlab.analysis.options import (
    MAX_GRADIENT_ELEMENTS,
    CellsOptions,
    GradientsOptions,
    TextOptions,
    ViewOptions,
)
from rnnlab.cli.common import add_config_flags, check_output_file, given
from rnnlab.validation import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cells", help="search for interpretable cells; gate saturation; errors")
    _text_flags(p, CellsOptions)
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/analysis)")
    p.add_argument("--html", default=None, help="also write the viewer as one HTML file")
    p.add_argument("--lstmvis", default=None, help="also write an LSTMVis project directory")
    p.add_argument(
        "--ngram-train",
        default=None,
        help="fit an n-gram baseline on this text (the run's training split) and "
        "compare it with the RNN per character",
    )
    p.set_defaults(run=run_cells)

    p = sub.add_parser("gradients", help="gradient flow through time, sigma_max(W_hh), clipping")
    p.add_argument("run_dir", nargs="?", default=None, help="a run (default: fresh models)")
    add_config_flags(p, GradientsOptions)
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/analysis or .)")
    p.set_defaults(run=run_gradients)

    p = sub.add_parser("view", help="serve the cell viewer on 127.0.0.1")
    _text_flags(p, ViewOptions)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; anything else exposes the model "
        "and text to the network)",
    )
    p.set_defaults(run=run_view)


def _text_flags(p: argparse.ArgumentParser, options: type[TextOptions]) -> None:
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument("--text", required=True, help="text to analyse (held-out text is best)")
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of the run (default best)")  # fmt: skip
    add_config_flags(p, options)
    p.add_argument(
        "--features", default=None, help="comma-separated feature names (default: all built-in)"
    )
    p.add_argument(
        "--regex",
        action="append",
        default=[],
        metavar="NAME=PATTERN",
        help="add a feature: 1 on characters a regular expression matches",
    )
    p.add_argument(
        "--unknown",
        choices=("error", "skip", "replace"),
        default="error",
        help="characters of --text outside the run's vocabulary",
    )


def _load(args: argparse.Namespace, opts: TextOptions):
    """(run, text, ids, features) for the text flags."""
    from rnnlab.analysis.features import FEATURES, regex_feature
    from rnnlab.runs import load_run

    path = Path(args.text)
    if not path.is_file():
        raise ValueError(f"--text: {path} is not a readable file")
    features: list[Any] = list(args.features.split(",") if args.features else FEATURES)
    for spec in args.regex:
        name, sep, pattern = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--regex: expected NAME=PATTERN, got {spec!r}")
        features.append(regex_feature(name, pattern))
    run = load_run(args.run_dir, args.checkpoint)
    with path.open(encoding="utf-8", newline="") as f:  # the file's real characters
        text = f.read(opts.max_chars)
    ids = run.vocab.encode(text, unknown=args.unknown)
    text = run.vocab.decode(ids)  # what the model reads, after skip/replace
    return run, text, ids, features


def _analyze(args: argparse.Namespace, opts: TextOptions, top: int = 5):
    from rnnlab.analysis import analyze

    run, text, ids, features = _load(args, opts)
    print(f"tracing {len(text):,} characters ...", file=sys.stderr)
    result = analyze(
        run.model,
        ids,
        text,
        features,
        fit_frac=opts.fit_frac,
        top=top,
        view_chars=opts.view_chars,
        streams=opts.streams,
    )
    return run, text, ids, result


def _out(args: argparse.Namespace, default: Path | None) -> tuple[Path, Path]:
    """(root, directory): files go to ``directory``, which stays inside ``root``, the directory
    the user handed over: ``--out`` itself, or the run directory for ``RUN_DIR/analysis``."""
    from rnnlab.io import mkdir_inside

    if args.out or default is None:
        root = out = Path(args.out or ".")
    else:
        root, out = default, default / "analysis"
        if not root.is_dir():  # loading the run says what is wrong; create nothing
            return root, out
    mkdir_inside(root, out.relative_to(root))  # a link in the way is refused before any work
    return root, out


def run_cells(args: argparse.Namespace) -> int:
    from rnnlab.analysis.export import export_lstmvis, write_json
    from rnnlab.analysis.plots import plot_saturation
    from rnnlab.io import write_inside
    from rnnlab.viewer import render_html, viewer_data

    opts = CellsOptions(**given(args, CellsOptions))  # every bound checked before any work
    check_output_file("--html", args.html)
    root, out = _out(args, Path(args.run_dir))
    run, text, ids, result = _analyze(args, opts, opts.top)
    data = viewer_data(result, run.vocab.tokens, run.model)
    files = [write_json(data.payload, out / "cells.json", root=root)]
    if result.saturation.left:
        files.append(plot_saturation(result.saturation, out / "saturation.png", root=root))
    print(format_cells(result.cells))
    if args.ngram_train:
        files += _errors(args, opts, run, text, result.loss, root, out)
    if args.html:
        html = Path(args.html)
        files.append(write_inside(html.parent, html.name, render_html(data.payload)))
    if args.lstmvis:
        files.append(export_lstmvis(run.model, ids, run.vocab.tokens, args.lstmvis))
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0


def format_cells(cells) -> str:
    """The search as a table: per feature its top units (as many as the search kept: ``--top``)
    with held-out r (and accuracy)."""
    lines = [f"{'feature':<16} top units (held-out correlation r; threshold accuracy / majority)"]
    for name, rep in cells.features.items():
        base = f" / {rep.majority_accuracy:.2f}" if rep.majority_accuracy is not None else ""
        parts = []
        for s in rep.top:
            acc = f" acc {s.accuracy:.2f}" if s.accuracy is not None else ""
            parts.append(f"{s.unit} r={s.corr:+.2f}{acc}")
        lines.append(f"{name:<16} " + ", ".join(parts) + base)
    lines.append(f"{len(cells.untracked)} of {len(cells.units)} units track no known feature")
    return "\n".join(lines)


def _errors(args, opts: CellsOptions, run, text: str, loss, root: Path, out: Path) -> list[Path]:
    import numpy as np

    from rnnlab.analysis.export import write_json
    from rnnlab.analysis.ngram import error_analysis, ngram_probs
    from rnnlab.analysis.plots import plot_errors

    path = Path(args.ngram_train)
    if not path.is_file():
        raise ValueError(f"--ngram-train: {path} is not a readable file")
    train_ids = run.vocab.encode(path.read_text(encoding="utf-8"), unknown="skip")
    p = ngram_probs(train_ids, np.asarray(run.vocab.encode(text)), len(run.vocab), opts.ngram_order)
    rows = error_analysis(text, loss, p)
    (total,) = rows["all"]
    print(
        f"RNN {total.rnn_loss:.3f} vs {opts.ngram_order}-gram {total.ngram_loss:.3f} nats/char; "
        f"errors (p(right) < 0.5): RNN {total.rnn_error:.1%}, n-gram {total.ngram_error:.1%}"
    )
    report = {k: [vars(r) for r in v] for k, v in rows.items()}
    return [
        write_json(report, out / "errors.json", root=root),
        plot_errors(rows, out / "errors.png", root=root),
    ]


def run_gradients(args: argparse.Namespace) -> int:
    import numpy as np

    from rnnlab.analysis.export import write_json
    from rnnlab.analysis.gradients import hidden_gradient_norms, one_unit_gradients
    from rnnlab.analysis.plots import plot_gradient_decay

    opts = GradientsOptions(**given(args, GradientsOptions))  # checked before any work
    root, out = _out(args, Path(args.run_dir) if args.run_dir else None)
    curves: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {"steps": opts.steps}
    if args.run_dir:
        from rnnlab.runs import load_run

        run = load_run(args.run_dir)
        size = opts.steps * opts.batch_size * run.model.rnn.hidden_size
        if size > MAX_GRADIENT_ELEMENTS:
            raise ConfigError(
                "steps * batch_size * hidden_size (the run's)",
                f"at most {MAX_GRADIENT_ELEMENTS:_}",
                size,
            )
        flow = hidden_gradient_norms(run.model, opts.steps, opts.batch_size, seed=opts.seed)
        curves[f"trained {flow.cell}"] = flow.by_distance()[:, -1]
        report["trained"] = {"cell": flow.cell, "norms_by_distance": flow.by_distance().tolist()}
        report.update(_training_history(Path(args.run_dir), root, out))
    else:
        import torch

        from rnnlab.recurrent import Recurrent

        report["fresh"] = {}
        for cell in opts.cells.split(","):
            torch.manual_seed(opts.seed)
            rnn = Recurrent(cell, opts.input_size, opts.hidden_size)
            flow = hidden_gradient_norms(rnn, opts.steps, opts.batch_size, seed=opts.seed)
            curves[f"{cell} at init"] = flow.by_distance()[:, -1]
            report["fresh"][cell] = flow.by_distance()[:, -1].tolist()
    report["one_unit"] = {}
    for w in (0.9, 1.1):  # the lecture's demonstration: |w| < 1 vanishes, |w| > 1 explodes
        curves[f"one unit, w={w}"] = one_unit_gradients(w, opts.steps - 1)
        report["one_unit"][str(w)] = curves[f"one unit, w={w}"].tolist()
    files = [
        write_json(report, out / "gradients.json", root=root),
        plot_gradient_decay(curves, out / "gradients.png", root=root),
    ]
    d = min(50, opts.steps - 1)
    for label, c in curves.items():
        print(f"{label:<22} ||dL/dh|| {d} steps back / at the loss: {c[d] / c[0]:.3e}")
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)
    return 0


def _training_history(run_dir: Path, root: Path, out: Path) -> dict[str, Any]:
    """sigma_max(W_hh) per checkpoint and the clip events of ``metrics.jsonl``."""
    from rnnlab.analysis.gradients import clip_events, largest_singular_values
    from rnnlab.analysis.plots import plot_singular_values
    from rnnlab.runs import load_run

    history = []
    for ckpt in sorted(run_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[-1])):
        if ckpt.is_dir() and ckpt.name.split("-")[-1].isdigit():
            run = load_run(ckpt)
            history.append({"step": run.step, "layers": largest_singular_values(run.model.rnn)})
    result: dict[str, Any] = {"singular_values": history}
    if history:
        layers = len(history[0]["layers"])
        plot_singular_values(
            [h["step"] for h in history],
            {f"layer {k + 1}": [h["layers"][k]["W_hh"] for h in history] for k in range(layers)},
            out / "singular_values.png",
            root=root,
        )
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        from rnnlab.training.tools import read_metrics

        records = read_metrics(metrics, damaged="error")
        clip = _grad_clip(run_dir)
        events = clip_events(records, clip) if clip else []
        result["clip"] = {
            "grad_clip": clip,
            "events": len(events),
            "steps": events[:1000],
            "of_steps": len(records),
        }
    return result


def _grad_clip(run_dir: Path) -> float:
    from rnnlab.runs import load_run

    cfg = load_run(run_dir).train_config
    value = cfg.get("grad_clip") if isinstance(cfg, dict) else getattr(cfg, "grad_clip", 0.0)
    return float(value or 0.0)


def run_view(args: argparse.Namespace) -> int:
    from rnnlab.viewer import ViewerServer, viewer_data

    if args.host not in ("127.0.0.1", "localhost"):
        print(
            f"rnnlab: warning: serving on {args.host}: anyone who can reach this machine can "
            "read the text and sample the model",
            file=sys.stderr,
        )
    opts = ViewOptions(**given(args, ViewOptions))  # checked before any work
    run, _, _, result = _analyze(args, opts)
    server = ViewerServer(viewer_data(result, run.vocab.tokens, run.model), args.host, opts.port)
    print(f"rnnlab view: {server.url}  (Ctrl-C to stop)", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
