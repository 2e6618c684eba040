"""The CLI as a Unix tool (issue 8): bytes out for byte-level models, UTF-8 whatever the locale,
quiet on a closed pipe, primes read byte for byte, --length 0 the same in every mode, Python
warnings as one-line notes, --threads, Ctrl-C during start-up, --help for every option, doctor."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnlab.cli import build_parser, main

TINY = ["--hidden-size", "16", "--batch-size", "4", "--seq-len", "16", "--eval-every", "10",
        "--sample-length", "0", "--threads", "1", "--max-steps", "10"]  # fmt: skip
CYRILLIC = "Привет, мир! Это маленький текст.\n" * 80
RNNLAB = [sys.executable, "-m", "rnnlab.cli"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cliout")
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLAB_CACHE", str(tmp / "cache"))
    made = {}
    texts = {
        "text": CYRILLIC.encode(),
        "bytes": CYRILLIC.encode() + "café déjà vu\n".encode("latin-1") * 40,
        "cr": b"line one\rline two\rcr only\r" * 80,
        "crlf": b"line one\r\nline two\r\n" * 80,
    }
    for name, data in texts.items():
        (tmp / f"{name}.txt").write_bytes(data)
        extra = ["--bytes"] if name == "bytes" else []
        args = ["train", str(tmp / f"{name}.txt"), "--out-dir", str(tmp / name), *TINY, *extra]
        assert main(args) == 0
        made[name] = tmp / name
    yield made
    mp.undo()


@pytest.fixture(autouse=True)
def cache(runs, monkeypatch):
    monkeypatch.setenv("RNNLAB_CACHE", str(next(iter(runs.values())).parent / "cache"))


def env(**extra):
    return {**os.environ, "RNNLAB_NO_EXTENSION": "1", **extra}


def expected_ids(run_dir, prime, **config):
    from rnnlab.runs import load_run, sample_ids
    from rnnlab.sample import SampleConfig

    run = load_run(run_dir)
    return run, sample_ids(run, prime, SampleConfig(**config))[0]


def test_byte_level_output_is_the_raw_bytes_generated(runs, tmp_path):
    prime = "café ".encode("latin-1")  # not UTF-8: must come back intact
    (tmp_path / "prime.bin").write_bytes(prime)
    out = subprocess.run([*RNNLAB, "sample", str(runs["bytes"]), "--prime-file",
                          str(tmp_path / "prime.bin"), "--argmax", "--length", "60"],
                         env=env(), capture_output=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run, ids = expected_ids(runs["bytes"], prime, length=60, argmax=True)
    assert out.stdout == prime + bytes(ids) + b"\n"


def test_byte_level_cyrillic_streams_whole_characters(runs):
    out = subprocess.run([*RNNLAB, "sample", str(runs["bytes"]), "--prime", "Привет",
                          "--argmax", "--length", "40"], env=env(), capture_output=True,
                         timeout=120)  # fmt: skip
    _, ids = expected_ids(runs["bytes"], "Привет", length=40, argmax=True)
    assert out.stdout == "Привет".encode() + bytes(ids) + b"\n"
    assert "\ufffd" not in out.stdout.decode("utf-8", "replace")[:6]


C_LOCALE = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


@pytest.mark.parametrize("locale_env", [{"PYTHONIOENCODING": "cp1252"}, C_LOCALE])
def test_text_models_write_utf8_whatever_the_locale(runs, locale_env):
    out = subprocess.run([*RNNLAB, "sample", str(runs["text"]), "--prime", "Привет",
                          "--seed", "1", "--length", "50"], env=env(**locale_env),
                         capture_output=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run, ids = expected_ids(runs["text"], "Привет", length=50, seed=1)
    assert out.stdout.decode("utf-8") == "Привет" + run.vocab.decode(ids) + "\n"


def test_output_encoding_overrides(runs):
    out = subprocess.run([*RNNLAB, "sample", str(runs["text"]), "--prime", "Привет", "--seed",
                          "1", "--length", "20", "--output-encoding", "cp1251"], env=env(),
                         capture_output=True, timeout=120)  # fmt: skip
    run, ids = expected_ids(runs["text"], "Привет", length=20, seed=1)
    assert out.stdout == ("Привет" + run.vocab.decode(ids) + "\n").encode("cp1251", "replace")
    bad = subprocess.run([*RNNLAB, "sample", str(runs["text"]), "--output-encoding", "klingon"],
                         env=env(), capture_output=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and b"--output-encoding" in bad.stderr


def test_a_closed_pipe_ends_quietly(runs):
    proc = subprocess.Popen([*RNNLAB, "sample", str(runs["text"]), "--length", "200000"],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()  # like `| head -c 10`
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and err == b"", err


@pytest.mark.parametrize("kind,prime", [("cr", b"line\rtw"), ("crlf", b"line\r\nli")])
def test_prime_files_keep_their_line_endings(runs, tmp_path, capsysbinary, kind, prime):
    (tmp_path / "prime.txt").write_bytes(prime)
    code = main(["sample", str(runs[kind]), "--prime-file", str(tmp_path / "prime.txt"),
                 "--argmax", "--length", "5"])  # fmt: skip
    out, err = capsysbinary.readouterr()
    assert code == 0, err
    assert out.startswith(prime)


def test_a_non_utf8_prime_file_names_the_flag_and_file(runs, tmp_path, capsys):
    (tmp_path / "prime.txt").write_bytes(b"caf\xe9")
    code = main(["sample", str(runs["text"]), "--prime-file", str(tmp_path / "prime.txt")])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--prime-file" in err and "prime.txt" in err and "byte offset 3" in err


@pytest.mark.parametrize(
    "mode", [[], ["--argmax"], ["--num-samples", "2"], ["--beam", "2"],
             ["--beam", "2", "--num-samples", "2"], ["--prime", "Прив"]],
)  # fmt: skip
def test_length_zero_prints_nothing_in_every_mode(runs, capsys, mode):
    code = main(["sample", str(runs["text"]), "--length", "0", *mode])
    out, err = capsys.readouterr()
    assert code == 0 and out == "", (out, err)


def test_length_zero_still_checks_the_prime(runs, capsys):
    code = main(["sample", str(runs["text"]), "--length", "0", "--prime", "☃"])
    assert code == 2 and "'☃'" in capsys.readouterr().err


def test_python_warnings_become_one_line_notes(runs, capsys, monkeypatch):
    import warnings

    import rnnlab.runs

    real = rnnlab.runs.evaluate

    def noisy(*args, **kwargs):
        warnings.warn("something to know", UserWarning, stacklevel=1)
        warnings.warn("something to know", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rnnlab.runs, "evaluate", noisy)
    assert main(["eval", str(runs["text"])]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["rnnlab: note: something to know"]


def test_dropout_with_one_layer_prints_no_python_warning(runs, tmp_path, capsys):
    text = runs["text"].parent / "text.txt"
    args = ["train", str(text), "--out-dir", str(tmp_path / "d"), *TINY, "--dropout", "0.2"]
    assert main(args) == 0
    assert main(["sample", str(tmp_path / "d"), "--length", "5"]) == 0
    err = capsys.readouterr().err
    assert "Warning" not in err and ".py:" not in err, err


def test_threads_flag_on_eval_and_sample(runs, capsys):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["eval", str(runs["text"]), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["sample", str(runs["text"]), "--threads", "1", "--length", "3"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()


def test_ctrl_c_during_start_up_prints_no_traceback(runs):
    # From the moment rnnlab's main() runs (the interpreter's own start-up, about 0.1 s before
    # it, is Python's): while torch and numpy load, the run loads, the model evaluates.
    for delay in (0.3, 0.45, 0.6, 0.8, 1.0, 1.2, 1.5, 1.8):
        proc = subprocess.Popen([*RNNLAB, "eval", str(runs["text"])], env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert b"Traceback" not in err, (delay, err.decode())
        assert len(err.splitlines()) <= 1, (delay, err.decode())


def _commands(parser, path=()):
    """Every (command path, parser) pair, nested subcommands (``seq2seq train``) included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_has_help():
    commands = dict(_commands(build_parser()))
    mine = ("train", "sample", "eval", "data", "gradcheck", "demo", "doctor")
    assert {path[0] for path in commands if path} >= set(mine)
    for path, p in commands.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 8, (" ".join(path), action.dest)


def test_help_names_units_and_ranges(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--max-minutes MAX_MINUTES stop after this wall time, minutes (0: off)" in out
    assert "an integer in [1, 16_384]" in out and "--bytes" in out


def test_doctor_reports_the_engine_and_the_auto_backend(capsys, monkeypatch):
    from rnnlab.kernels import extension

    assert main(["doctor", "--no-build"]) == 0
    out = capsys.readouterr().out
    for key in ("rnnlab:", "torch:", "threads:", "cuda:", "C++ engine:"):
        assert key in out
    monkeypatch.setenv("RNNLAB_NO_EXTENSION", "1")
    monkeypatch.setattr(extension, "_status", None)
    monkeypatch.setattr(extension, "_module", None)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "C++ engine: unavailable: disabled by RNNLAB_NO_EXTENSION" in out
    assert "auto backend (lstm 1x256, cpu):" in out


def test_progress_line_shows_throughput_and_eta(capsys):
    from rnnlab.cli.training import Reporter

    reporter = Reporter(progress=True)
    reporter({"kind": "step", "step": 50, "max_steps": 200, "train_loss": 1.5, "lr": 1e-3,
              "chars_per_s": 12345.6, "eta_s": 125.0})  # fmt: skip
    err = capsys.readouterr().err
    assert "step     50/200" in err and "12,346 chars/s" in err and "ETA 2m05s" in err


def test_the_bytes_flag_named_in_errors_exists(tmp_path, capsys, cache_env):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff" + b"some more text here " * 100)
    code = main(["train", str(bad), "--out-dir", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "--bytes" in err
    code = main(["train", str(bad), "--out-dir", str(tmp_path / "r"), *TINY, "--bytes"])
    assert code == 0, capsys.readouterr().err
    assert Path(tmp_path / "r" / "best").is_dir()


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "RUN", "--seed", "nan"],
        ["eval", "RUN", "--split", "foo"],
        ["sample", "RUN", "--checkpoint", "step-20"],
        ["train", "in.txt", "--max-steps", "1.5"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line(args, capsys):
    """A mistyped flag value is one line naming it and where the options are, exit 2: never the
    whole usage text (found by a fresh-user trial)."""
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "--help" in err and "usage:" not in err


def test_integer_flags_accept_whole_numbers_in_e_notation():
    from rnnlab.cli.common import _parse

    parse = _parse(int, "--max-steps")
    assert parse("1e6") == 1_000_000 and parse("1_000") == 1000 and parse("-3") == -3
    with pytest.raises(argparse.ArgumentTypeError):
        parse("1.5")
    with pytest.raises(argparse.ArgumentTypeError):
        parse("inf")
