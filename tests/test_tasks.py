"""Behaviour every task gets from the one loop, tested on every task: add a task to TASKS.

Each of these once differed between the char-LM, seq2seq, classify and caption loops (a
classifier stopped by --max-minutes wrote no best/, classify and caption refused --no-progress,
a run stopped before its first evaluation printed a placeholder score, two tasks drew no loss
plot and only the char-LM reported throughput and an ETA).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rnnlab.cli import build_parser
from rnnlab.cli.training import Reporter
from rnnlab.training.config import RunConfig
from rnnlab.training.tools import TrainingError

pytestmark = pytest.mark.usefixtures("cache_env", "one_thread")


@dataclass
class TaskCase:
    name: str
    command: list[str]  # the train command's words after ``rnnlab``
    make: Callable[[Path], tuple[type, dict[str, Any]]]  # data dir -> (config type, fields)
    train: Callable[..., Any]


def _char_lm(root: Path) -> tuple[type, dict[str, Any]]:
    from rnnlab.train import TrainConfig

    rng = random.Random(0)
    text = "".join(rng.choice("abcd efgh\n") for _ in range(6000))
    (root / "text.txt").write_text(text)
    return TrainConfig, dict(input=str(root / "text.txt"), hidden_size=16, batch_size=4,
                             seq_len=16, sample_length=0)  # fmt: skip


def _seq2seq(root: Path) -> tuple[type, dict[str, Any]]:
    from rnnlab.tasks.seq2seq import Seq2SeqTrainConfig

    rng = random.Random(0)
    words = {"".join(rng.choice("abcdef") for _ in range(rng.randint(2, 6))) for _ in range(200)}
    (root / "pairs.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in sorted(words)))
    return Seq2SeqTrainConfig, dict(pairs=str(root / "pairs.tsv"), embedding_size=8,
                                    hidden_size=16, num_layers=1, batch_size=8, eval_size=10,
                                    val_frac=0.2)  # fmt: skip


def _classify(root: Path) -> tuple[type, dict[str, Any]]:
    from rnnlab.tasks.classify import ClassifyTrainConfig

    rng = random.Random(0)
    rows = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 8))) for _ in range(200)]
    (root / "rows.tsv").write_text("".join(f"{t}\t{'odd' if t.count('a') % 2 else 'even'}\n"
                                           for t in rows))  # fmt: skip
    return ClassifyTrainConfig, dict(data=str(root / "rows.tsv"), embedding_size=8,
                                     hidden_size=16, batch_size=8)  # fmt: skip


def _caption(root: Path) -> tuple[type, dict[str, Any]]:
    from rnnlab.data.shapes import write_shapes_dataset
    from rnnlab.tasks.caption import CaptionTrainConfig

    data = write_shapes_dataset(root, 24, num_val=4, num_test=4, image_size=16, seed=1)
    return CaptionTrainConfig, dict(data=str(data), image_size=16, cnn_blocks=2, cnn_channels=4,
                                    feature_size=16, embedding_size=8, hidden_size=16,
                                    batch_size=4, max_length=12)  # fmt: skip


def _vqa(root: Path) -> tuple[type, dict[str, Any]]:
    from rnnlab.data.sort_of_clevr import write_sort_of_clevr
    from rnnlab.tasks.vqa import VQATrainConfig

    write_sort_of_clevr(root, 8, 2, 0, questions_per_image=2, seed=1)
    return VQATrainConfig, dict(data=str(root / "train"), val_data=str(root / "val"),
                                image_size=16, cnn_blocks=2, cnn_channels=4, feature_size=16,
                                embedding_size=8, hidden_size=16, fusion_size=16, mlp_size=16,
                                batch_size=2)  # fmt: skip


def _dialog(root: Path) -> tuple[type, dict[str, Any]]:
    from rnnlab.data.clevr_dialog import write_clevr_dialog
    from rnnlab.tasks.dialog import DialogTrainConfig

    paths = write_clevr_dialog(root, 20, num_val=4, num_test=0, seed=1)
    return DialogTrainConfig, dict(data=str(paths["train"]), val_data=str(paths["val"]),
                                   dense=str(paths["val_dense"]), image_size=16, cnn_blocks=2,
                                   cnn_channels=4, feature_size=16, embedding_size=8,
                                   hidden_size=16, batch_size=4)  # fmt: skip


def _train(module: str, name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


TASKS = [
    TaskCase("char_lm", ["train"], _char_lm, _train("rnnlab.train", "train")),
    TaskCase(
        "seq2seq", ["seq2seq", "train"], _seq2seq, _train("rnnlab.tasks.seq2seq", "train_seq2seq")
    ),  # fmt: skip
    TaskCase(
        "classify",
        ["classify", "train"],
        _classify,
        _train("rnnlab.tasks.classify", "train_classifier"),
    ),  # fmt: skip
    TaskCase(
        "caption", ["caption", "train"], _caption, _train("rnnlab.tasks.caption", "train_captioner")
    ),  # fmt: skip
    TaskCase("vqa", ["vqa", "train"], _vqa, _train("rnnlab.tasks.vqa", "train_vqa")),
    TaskCase("dialog", ["dialog", "train"], _dialog, _train("rnnlab.tasks.dialog", "train_dialog")),
]
IDS = [t.name for t in TASKS]
RUN = dict(threads=1, device="cpu", warmup_steps=0, eval_every=3, log_every=1)


def config(case: TaskCase, tmp_path: Path, run: str = "run", **changes: Any) -> Any:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    kind, fields = case.make(data)
    return kind(**{**fields, **RUN, "out_dir": str(tmp_path / run), **changes})


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_a_max_minutes_stop_evaluates_and_writes_best(case, tmp_path):
    result = case.train(config(case, tmp_path, max_steps=10**6, max_minutes=1e-6))
    run = tmp_path / "run"
    assert result.stopped == "max_minutes" and result.step == 1
    assert result.best is not None and (run / "best").is_dir()
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"  # every task draws its plot


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_resume_is_bit_exact_and_every_step_is_logged_once(case, tmp_path):
    straight = case.train(config(case, tmp_path, "a", max_steps=6, decay_steps=6))
    case.train(config(case, tmp_path, "b", max_steps=3, decay_steps=6))
    resumed = case.train(resume=tmp_path / "b", changes={"max_steps": 6})
    assert straight.step == resumed.step == 6
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert [r["step"] for r in b] == list(range(1, 7))  # each step exactly once
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]  # bit for bit
    assert straight.best == resumed.best


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_every_step_reports_throughput_in_its_unit_and_an_eta(case, tmp_path):
    events: list[dict[str, Any]] = []
    case.train(config(case, tmp_path, max_steps=4), on_event=events.append)
    start = next(e for e in events if e["kind"] == "start")
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == 4 and start["unit"] and start["data"]
    assert all(e[f"{start['unit']}_per_s"] > 0 and e["eta_s"] >= 0 for e in steps)


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_a_signal_before_the_first_evaluation_checkpoints_and_reports_no_score(
    case, tmp_path, capsys
):
    reporter = Reporter(progress=False)

    def on_event(event: dict[str, Any]) -> None:
        reporter(event)
        if event["kind"] == "step" and event["step"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # finishes the step, checkpoints, stops

    result = case.train(config(case, tmp_path, max_steps=50, eval_every=20), on_event=on_event)
    assert result.stopped == "interrupted" and result.step == 1 and result.best is None
    assert (tmp_path / "run" / "step-1").is_dir() and not (tmp_path / "run" / "best").exists()
    err = capsys.readouterr().err
    assert "no evaluation ran" in err
    for placeholder in ("-100.00%", "inf", "-1.000"):
        assert placeholder not in err.splitlines()[-1]
    resumed = case.train(resume=tmp_path / "run", changes={"max_steps": 3})
    assert resumed.step == 3 and resumed.best is not None


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_an_abort_keeps_the_last_healthy_checkpoint(case, tmp_path, monkeypatch):
    import rnnlab.training.loop as loop

    real, calls = loop.clip_gradients, []

    def failing_after_four(*args: Any, **kwargs: Any) -> float:
        calls.append(1)
        return math.nan if len(calls) > 4 else real(*args, **kwargs)

    monkeypatch.setattr(loop, "clip_gradients", failing_after_four)
    with pytest.raises(TrainingError, match="2 non-finite steps in a row at step 6"):
        case.train(config(case, tmp_path, max_steps=20, max_nonfinite=2))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("step-")) == ["step-3"]
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, 5, 6]
    assert records(run)[-1]["verdict"] == "nonfinite"
    assert (run / "loss.png").exists()  # the curve that led there


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_an_evaluation_worse_than_guessing_writes_no_checkpoint(case, tmp_path, monkeypatch):
    """The divergence rule (a loss above ln(V) + 1) judges every task's evaluations: a diverged
    model never becomes best/ nor an evaluation's checkpoint."""
    from rnnlab.training.loop import Evaluation

    kind = type(_task_of(case))
    real = kind.evaluate

    def diverged(self, model, dp):
        found = real(self, model, dp)
        return Evaluation({**found.metrics, "val_loss": 1e3}, found.extra)

    monkeypatch.setattr(kind, "evaluate", diverged)
    result = case.train(config(case, tmp_path, max_steps=4, eval_every=2))
    run = tmp_path / "run"
    assert result.best is None and not (run / "best").exists()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("step-")) == ["step-4"]


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_every_shared_flag_is_accepted_by_every_train_command(case, tmp_path):
    parser = build_parser()
    kind, _ = case.make(tmp_path)
    shared = [f for f in dataclasses.fields(RunConfig) if f.name != "out_dir"]
    argv = [*case.command, "--resume", "RUN", "--no-progress"]
    for f in shared:
        flag = "--" + f.name.replace("_", "-")
        value = {bool: None}.get(type(f.default), f.default)
        argv += [flag] if value is None else [flag, str(value)]
    args = parser.parse_args(argv)
    assert args.no_progress and args.resume == "RUN"
    for f in shared:
        assert getattr(args, f.name) == f.default
        help_of = next(g for g in dataclasses.fields(kind) if g.name == f.name).metadata["help"]
        assert help_of == f.metadata["help"]  # the same help in every command


@pytest.mark.parametrize("case", TASKS[1:], ids=IDS[1:])
def test_char_lm_commands_name_the_task_of_another_run(case, tmp_path, capsys):
    from rnnlab.cli import main

    case.train(config(case, tmp_path, max_steps=3))
    (tmp_path / "t.txt").write_text("some text\n")
    run, text = str(tmp_path / "run"), str(tmp_path / "t.txt")
    for argv in (["export", run], ["sample", run], ["eval", run],
                 ["cells", run, "--text", text], ["gradients", run]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "char-LM runs" in err and case.command[0] in err, err


# The tasks that had runs before config.json named its task (a later task's runs always do).
LEGACY = [t for t in TASKS if t.name in ("char_lm", "seq2seq", "classify", "caption")]


@pytest.mark.parametrize("case", LEGACY, ids=[t.name for t in LEGACY])
def test_a_run_written_before_config_json_named_its_task_still_loads(case, tmp_path):
    import hashlib

    from rnnlab.runs import load_run

    case.train(config(case, tmp_path, max_steps=3))
    for ckpt in (tmp_path / "run" / "best", tmp_path / "run" / "step-3"):
        data = json.loads((ckpt / "config.json").read_text())
        if ckpt.name == "best" or "task" not in data:
            data.pop("task", None)  # best/ may share its files with step-3/ (hard links)
        else:
            assert data.pop("task") == case.name
        raw = json.dumps(data).encode()
        (ckpt / "config.json").unlink()
        (ckpt / "config.json").write_bytes(raw)
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"]["config.json"] = {"sha256": hashlib.sha256(raw).hexdigest(),
                                            "size": len(raw)}  # fmt: skip
        (ckpt / "manifest.json").unlink()
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    assert load_run(tmp_path / "run", tasks=(case.name,)).kind == case.name
    resumed = case.train(resume=tmp_path / "run", changes={"max_steps": 4})
    assert resumed.step == 4


@pytest.mark.parametrize(
    "case,argv",
    [(TASKS[1], ["seq2seq", "eval", "RUN", "--split", "val"]),
     (TASKS[2], ["classify", "eval", "RUN", "DATA/rows.tsv"])],
    ids=["seq2seq", "classify"],
)  # fmt: skip
def test_eval_of_a_model_whose_logits_overflow_is_one_line_and_exit_2(case, argv, tmp_path, capsys):
    """Finite weights, infinite logits: every scoring command refuses as `rnnlab eval` does,
    instead of printing a NaN loss."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from rnnlab.cli import main

    case.train(config(case, tmp_path, max_steps=3))
    for ckpt in (tmp_path / "run" / "best", tmp_path / "run" / "step-3"):
        file = ckpt / "model.safetensors"
        tensors = load_file(file)
        tensors["output.weight"] = tensors["output.weight"].sign() * 3e38
        file.unlink()  # best/ may share the file with step-3/ (a hard link)
        save_file(tensors, file)
        raw = file.read_bytes()
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"]["model.safetensors"] = {"sha256": hashlib.sha256(raw).hexdigest(),
                                                  "size": len(raw)}  # fmt: skip
        (ckpt / "manifest.json").unlink()
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    args = [a.replace("RUN", str(tmp_path / "run")).replace("DATA", str(tmp_path / "data"))
            for a in argv]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # the score's check, or the decoder's, whichever comes first
    assert "expected finite scores" in err or "non-finite logits" in err, err


def test_the_run_directory_files_are_never_written_through_a_link(tmp_path):
    """metrics.jsonl is appended to and loss.png replaced inside the run directory: a symbolic
    link planted there (a run directory may come from someone else) is refused, and its target
    is left as it was."""
    from rnnlab.train import train

    case = TASKS[0]
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    for name in ("metrics.jsonl", "loss.png"):
        run = tmp_path / f"run-{name}"
        run.mkdir()
        (run / name).symlink_to(outside)
        with pytest.raises(ValueError, match="link"):  # rnnlab.io.UnsafePathError
            train(config(case, tmp_path, run.name, max_steps=3))
        assert outside.read_text() == "keep me\n"
        assert not list(run.glob("step-*"))  # refused before training, not after it


def test_a_non_finite_step_stays_in_metrics_jsonl_across_a_resume(tmp_path, monkeypatch):
    """The log keeps a skipped step's NaN as NaN; reading the log back on resume (and in every
    reader) must not count that line as damaged and drop it."""
    import rnnlab.training.loop as loop
    from rnnlab.training.tools import read_metrics

    case, real, calls = TASKS[0], loop.clip_gradients, []

    def nan_at_step_two(*args: Any, **kwargs: Any) -> float:
        calls.append(1)
        return math.nan if len(calls) == 2 else real(*args, **kwargs)

    monkeypatch.setattr(loop, "clip_gradients", nan_at_step_two)
    case.train(config(case, tmp_path, max_steps=3))
    monkeypatch.setattr(loop, "clip_gradients", real)
    case.train(resume=tmp_path / "run", changes={"max_steps": 4})
    steps = read_metrics(tmp_path / "run" / "metrics.jsonl", damaged="error")
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert math.isnan(steps[1]["grad_norm"]) and steps[1]["nonfinite_skips"] == 1


def test_the_docs_print_each_tasks_resume_table_from_its_settings():
    """Every setting declares its resume rule; the docs' tables are printed from them, so a new
    setting (or a changed rule) shows up in the table or this test fails."""
    from rnnlab.training.config import resume_table_markdown

    docs = Path(__file__).resolve().parent.parent / "docs"
    pages = {"char_lm": "char-lm.md", "vqa": "vqa.md", "dialog": "dialog.md"}
    for case in TASKS:
        text = (docs / pages.get(case.name, "training.md")).read_text(encoding="utf-8")
        assert resume_table_markdown(_config_type(case)) in text, case.name


def _config_type(case: TaskCase) -> type:
    import importlib

    module = importlib.import_module(f"rnnlab.tasks.{case.name}")
    return next(
        v
        for k, v in vars(module).items()
        if k.endswith("TrainConfig")
        and isinstance(v, type)
        and issubclass(v, RunConfig)
        and v is not RunConfig
    )


@pytest.mark.parametrize("case", TASKS, ids=IDS)
def test_a_checkpoint_whose_cursor_is_past_its_epoch_is_refused(case, tmp_path):
    import hashlib

    from rnnlab.checkpoint import CheckpointError

    case.train(config(case, tmp_path, max_steps=3))
    for ckpt in (tmp_path / "run" / "best", tmp_path / "run" / "step-3"):
        trainer = json.loads((ckpt / "trainer.json").read_text())
        trainer["state"]["$dict"]["cursor"] = 10**9
        raw = json.dumps(trainer).encode()
        (ckpt / "trainer.json").unlink()
        (ckpt / "trainer.json").write_bytes(raw)
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"]["trainer.json"] = {"sha256": hashlib.sha256(raw).hexdigest(),
                                             "size": len(raw)}  # fmt: skip
        (ckpt / "manifest.json").unlink()
        (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError, match=r"trainer.json: cursor: expected <= \d+, found 1000000000"
    ):
        case.train(resume=tmp_path / "run", changes={"max_steps": 4})


def _task_of(case: TaskCase) -> Any:
    """An (unbuilt) instance's class is all the test needs: the task module's Task subclass."""
    import importlib

    from rnnlab.training.loop import Task

    module = importlib.import_module(f"rnnlab.tasks.{case.name}")
    kind = next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Task)
                and v is not Task)  # fmt: skip
    return kind.__new__(kind)


@pytest.mark.parametrize(
    "argv",
    [["classify", "eval", "RUN", "/dev/zero"],
     ["classify", "predict", "RUN", "--input", "/dev/zero"], ["classify", "eval", "RUN", "FIFO"],
     ["classify", "train", "/dev/urandom"],
     ["seq2seq", "train", "--pairs", "/dev/zero"]],
    ids=["eval-zero", "predict-zero", "eval-fifo", "train-urandom", "pairs-zero"],
)  # fmt: skip
def test_line_inputs_that_are_not_regular_files_are_one_line_errors(argv, tmp_path, capsys):
    """/dev/zero would be read until memory runs out, a FIFO would block: refused by name."""
    import os

    from rnnlab.cli import main

    if "RUN" in argv:
        TASKS[2].train(config(TASKS[2], tmp_path, max_steps=2))
    os.mkfifo(tmp_path / "fifo")
    args = [a.replace("RUN", str(tmp_path / "run")).replace("FIFO", str(tmp_path / "fifo"))
            for a in argv]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err, err


def test_positional_predict_sources_have_the_input_files_length_limit(tmp_path, capsys):
    from rnnlab.cli import main

    TASKS[2].train(config(TASKS[2], tmp_path, max_steps=2))
    TASKS[1].train(config(TASKS[1], tmp_path, "s2s", max_steps=2))
    long = "a" * 10_001
    for argv in (["classify", "predict", str(tmp_path / "run"), long],
                 ["seq2seq", "predict", str(tmp_path / "s2s"), long]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "10,001 characters, more than the 10,000" in err, err


def test_seq2seq_eval_of_a_pairs_run_needs_no_flag(tmp_path, capsys):
    """The command the training summary suggests works as printed: a pairs run's split is val."""
    from rnnlab.cli import main

    TASKS[1].train(config(TASKS[1], tmp_path, max_steps=2))
    assert main(["seq2seq", "eval", str(tmp_path / "run")]) == 0
    assert "val split: WER" in capsys.readouterr().out


@pytest.mark.parametrize("task", [["char_lm"], {}, 5, None, "pwn"])
def test_a_task_in_config_json_of_any_type_is_one_line(task, tmp_path):
    import hashlib

    from rnnlab.checkpoint import CheckpointError
    from rnnlab.runs import load_run
    from rnnlab.validation import ConfigError

    TASKS[0].train(config(TASKS[0], tmp_path, max_steps=2))
    ckpt = tmp_path / "run" / "step-2"
    data = json.loads((ckpt / "config.json").read_text())
    data["task"] = task
    raw = json.dumps(data).encode()
    (ckpt / "config.json").write_bytes(raw)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((ConfigError, CheckpointError), match="config.json: task: expected one of"):
        load_run(ckpt)


def test_a_huge_value_in_an_error_is_cut_to_its_start():
    from rnnlab.validation import ConfigError

    message = str(ConfigError("seed", "an integer in [0, 2**63)", 10**4000))
    assert len(message) < 200 and "characters)" in message
