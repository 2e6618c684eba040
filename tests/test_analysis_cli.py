"""``rnnlab cells``, ``rnnlab gradients`` and ``rnnlab view`` on a tiny trained run: the files they
write (viewer JSON, PNGs, HTML, errors, LSTMVis project) and what they print."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest

from rnnlab.cli import analysis_cmd as analysis_cli
from rnnlab.viewer import ViewerServer

SHAKESPEARE = "/work/shared/data/tinyshakespeare.txt"


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    analysis_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.run(args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from rnnlab.cli import main

    root = tmp_path_factory.mktemp("cells")
    text = "".join(
        f'int f{i}(int x) {{ if (x > {i}) {{ return "s{i}"; }} /* c{i} */ }}\n' for i in range(400)
    )
    (root / "train.txt").write_text(text[:12000])
    (root / "held.txt").write_text(text[12000:16000])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNLAB_CACHE", str(root / "cache"))
        code = main([
        "train", str(root / "train.txt"), "--out-dir", str(root / "run"), "--hidden-size", "16",
            "--cell", "lstm", "--num-layers", "1", "--batch-size", "4", "--seq-len", "16",
            "--max-steps", "20",
            "--eval-every", "10", "--backend", "reference", "--sample-length", "0",
        ])  # fmt: skip
    assert code == 0
    return root


def test_cells_writes_everything(tiny_run, capsys):
    root = tiny_run
    out, html, lv = root / "out", root / "cells.html", root / "lstmvis"
    code = run_command([
        "cells", str(root / "run"), "--text", str(root / "held.txt"), "--out", str(out),
        "--html", str(html), "--lstmvis", str(lv), "--ngram-train", str(root / "train.txt"),
        "--ngram-order", "6", "--regex", "ret=return", "--view-chars", "500", "--streams", "3",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "bracket_depth" in printed and "ret " in printed and "6-gram" in printed
    payload = json.loads((out / "cells.json").read_text())
    assert payload["format"] == "rnnlab.cells" and len(payload["text"]) == 500
    assert len(payload["units"]) == 32  # 16 h + 16 c
    assert "in_latex_math" in payload["constant"] and "in_latex_math" not in payload["features"]
    assert payload["features"]["in_comment"]["top"][0]["accuracy"] is not None
    for png in ("saturation.png", "errors.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    errors = json.loads((out / "errors.json").read_text())
    assert {"all", "char_class", "word_position", "line_position"} <= set(errors)
    assert "<script>" in html.read_text()  # the page's own, inline; loads nothing
    # LSTMVis: the layout its README documents
    config = json.loads((lv / "lstm.yml").read_text())
    assert config["word_sequence"] == {"file": "train", "path": "words", "dict_file": "words"}
    assert config["files"]["states"].endswith(".hdf5")
    types = {t["path"]: t for t in config["states"]["types"]}
    assert types["states1"]["type"] == "state" and types["output1"]["type"] == "output"
    text = (root / "held.txt").read_text()
    with h5py.File(lv / "states.hdf5") as f, h5py.File(lv / "train.hdf5") as g:
        assert f["states1"].shape == (len(text), 16) and f["output1"].shape == (len(text), 16)
        assert np.abs(f["output1"][:]).max() <= 1.0
        ids = g["words"][:]
    words = dict(line.split() for line in (lv / "words.dict").read_text().splitlines())
    id_to_word = {int(v): k for k, v in words.items()}
    decoded = "".join(" " if id_to_word[i] == "U+0020" else id_to_word[i] for i in ids[:40])
    assert decoded.replace("U+000A", "\n") == text[:40]


def test_cells_errors_are_one_line(tiny_run, tmp_path):
    root = tiny_run
    (tmp_path / "odd.txt").write_text("☃☃☃☃")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        run_command(["cells", str(root / "run"), "--text", str(tmp_path / "odd.txt")])
    with pytest.raises(ValueError, match="NAME=PATTERN"):
        run_command(["cells", str(root / "run"), "--text", str(root / "held.txt"),
                     "--regex", "nopattern"])  # fmt: skip
    with pytest.raises(ValueError, match="not a readable file"):
        run_command(["cells", str(root / "run"), "--text", str(tmp_path / "missing.txt")])


def test_gradients_fresh_and_trained(tiny_run, tmp_path, capsys):
    assert run_command(["gradients", "--steps", "30", "--hidden-size", "32",
                        "--out", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "gradients.json").read_text())
    assert set(report["fresh"]) == {"rnn", "lstm"}
    assert report["one_unit"]["0.9"][29] == pytest.approx(0.9**29)
    assert (tmp_path / "gradients.png").stat().st_size > 1000
    out = tiny_run / "gout"
    assert run_command(["gradients", str(tiny_run / "run"), "--steps", "20",
                        "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "gradients.json").read_text())
    assert [h["step"] for h in report["singular_values"]] == [10, 20]
    assert report["clip"]["of_steps"] >= 20
    assert (out / "singular_values.png").exists()
    assert "trained lstm" in capsys.readouterr().out


def test_view_serves_on_loopback(tiny_run, monkeypatch, capsys):
    seen = {}

    def fake_serve(self):
        seen["address"] = self.server_address

    monkeypatch.setattr(ViewerServer, "serve_forever", fake_serve)
    argv = ["view", str(tiny_run / "run"), "--text", str(tiny_run / "held.txt"), "--port", "0"]
    assert run_command(argv) == 0
    assert seen["address"][0] == "127.0.0.1"
    assert "warning" not in capsys.readouterr().err
    assert run_command(argv + ["--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err


def test_commands_are_registered_in_rnnlab():
    from rnnlab.cli import build_parser

    parser = build_parser()
    for command in ("cells", "gradients", "view"):
        args = parser.parse_args(_minimal(command))
        assert args.run.__module__ == "rnnlab.cli.analysis_cmd"


def _minimal(command: str) -> list[str]:
    return {
        "cells": ["cells", "r", "--text", "t"],
        "gradients": ["gradients"],
        "view": ["view", "r", "--text", "t"],
    }[command]


# -- every option changes the output ------------------------------------------------------------


def _cells_output(root, tmp_path, capsys, extra: list[str]) -> tuple[str, str, list[str]]:
    """(printed table, cells.json, files written) of one ``rnnlab cells`` run."""
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    argv = ["cells", str(root / "run2"), "--text", str(root / "held2.txt"),
            "--max-chars", "3000", "--out", str(out), *extra]  # fmt: skip
    capsys.readouterr()
    assert run_command(argv) == 0
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    files = [f.split("/", 1)[-1] for f in files]  # the same names whatever out dir was used
    return capsys.readouterr().out, (out / "cells.json").read_text(), files


@pytest.fixture(scope="module")
def option_run(tiny_run):
    """The tiny run whose best checkpoint is step 10 (so --checkpoint latest differs), and a
    held-out text with a character outside the vocabulary (so --unknown differs)."""
    import shutil

    root = tiny_run
    if not (root / "run2").exists():
        shutil.copytree(root / "run", root / "run2")
        shutil.rmtree(root / "run2" / "best")
        shutil.copytree(root / "run" / "step-10", root / "run2" / "best")
        held = (root / "held.txt").read_text()
        (root / "held2.txt").write_text(held[:100] + "☃" + held[100:])
        (root / "other.txt").write_text(held[::-1])
    return root


CELLS_OPTIONS = {  # option: (base flags, changed flags)
    "--text": ([], ["--text", "OTHER"]),
    "--checkpoint": ([], ["--checkpoint", "latest"]),
    "--max-chars": ([], ["--max-chars", "2000"]),
    "--view-chars": ([], ["--view-chars", "300"]),
    "--fit-frac": ([], ["--fit-frac", "0.3"]),
    "--features": ([], ["--features", "bracket_depth,in_comment"]),
    "--regex": ([], ["--regex", "ret=return"]),
    "--streams": ([], ["--streams", "3"]),
    "--unknown": ([], ["--unknown", "replace"]),
    "--top": ([], ["--top", "2"]),
    "--ngram-train": ([], ["--ngram-train", "TRAIN"]),
    "--ngram-order": (["--ngram-train", "TRAIN"], ["--ngram-train", "TRAIN", "--ngram-order", "3"]),
    "--html": ([], ["--html", "HTML"]),
    "--lstmvis": ([], ["--lstmvis", "LSTMVIS"]),
}


def test_every_cells_option_is_tested():
    parser = argparse.ArgumentParser()
    analysis_cli.register(parser.add_subparsers())
    flags = {a.option_strings[0] for a in _subparser(parser, "cells")._actions if a.option_strings}
    assert flags - {"-h", "--out"} == set(CELLS_OPTIONS)  # --out: every case below uses it


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("option", sorted(CELLS_OPTIONS))
def test_cells_option_changes_the_output(option_run, tmp_path, capsys, option):
    root = option_run
    names = {"OTHER": root / "other.txt", "TRAIN": root / "train.txt",
             "HTML": tmp_path / "v.html", "LSTMVIS": tmp_path / "lv"}  # fmt: skip
    base, changed = ([str(names.get(a, a)) for a in flags] for flags in CELLS_OPTIONS[option])
    unknown = ["--unknown", "skip"] if option != "--unknown" else ["--unknown", "skip"]
    before = _cells_output(root, tmp_path, capsys, unknown + base)
    after = _cells_output(root, tmp_path, capsys, unknown + changed)
    assert before != after
    if option == "--top":  # the table and the JSON both follow --top (they showed 3 and 5)
        table = after[0].splitlines()[1]
        assert table.count(" r=") == 2 and before[0].splitlines()[1].count(" r=") == 5
        top = json.loads(after[1])["features"]["bracket_depth"]["top"]
        assert len(top) == 2


GRADIENT_OPTIONS = {
    "--cells": ["--cells", "gru"],
    "--hidden-size": ["--hidden-size", "12"],
    "--input-size": ["--input-size", "5"],
    "--steps": ["--steps", "15"],
    "--batch-size": ["--batch-size", "3"],
    "--seed": ["--seed", "7"],
}


def test_every_gradients_option_is_tested():
    parser = argparse.ArgumentParser()
    analysis_cli.register(parser.add_subparsers())
    actions = _subparser(parser, "gradients")._actions
    flags = {a.option_strings[0] for a in actions if a.option_strings}
    assert flags - {"-h", "--out"} == set(GRADIENT_OPTIONS)


@pytest.mark.parametrize("option", sorted(GRADIENT_OPTIONS))
def test_gradients_option_changes_the_output(tmp_path, option):
    base = ["gradients", "--steps", "20", "--hidden-size", "16", "--input-size", "8"]

    def report(extra: list[str], out: str) -> dict:
        assert run_command([*base, *extra, "--out", str(tmp_path / out)]) == 0
        return json.loads((tmp_path / out / "gradients.json").read_text())

    assert report([], "a") != report(GRADIENT_OPTIONS[option], "b")


def test_gradients_of_a_run_follow_steps_batch_and_seed(tiny_run, tmp_path):
    def norms(extra: list[str]) -> list:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        assert run_command(["gradients", str(tiny_run / "run"), "--out", str(out), *extra]) == 0
        return json.loads((out / "gradients.json").read_text())["trained"]["norms_by_distance"]

    base = norms(["--steps", "12"])
    assert len(norms(["--steps", "15"])) == 15 and len(base) == 12
    assert norms(["--steps", "12", "--batch-size", "3"]) != base
    assert norms(["--steps", "12", "--seed", "5"]) != base


def test_view_options_reach_the_viewer(tiny_run, monkeypatch):
    import socket

    seen: list = []
    monkeypatch.setattr(ViewerServer, "serve_forever", lambda self: seen.append(self))
    base = ["view", str(tiny_run / "run"), "--text", str(tiny_run / "held.txt")]

    def payload(extra: list[str]) -> dict:
        assert run_command([*base, "--port", "0", *extra]) == 0
        seen[-1].server_close()
        return seen[-1].data.payload

    first = payload([])
    for extra in (["--max-chars", "2500"], ["--view-chars", "100"], ["--fit-frac", "0.3"],
                  ["--streams", "2"], ["--features", "in_comment"], ["--regex", "x=x"],
                  ["--checkpoint", "latest", "--max-chars", "2000"]):  # fmt: skip
        assert payload(extra) != first, extra
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_command([*base, "--port", str(port)]) == 0
    assert seen[-1].server_address[1] == port
    seen[-1].server_close()


# -- bounds, checked before any work ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--max-chars", "100000000000"],
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--max-chars", "-5"],
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--view-chars", "0"],
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--fit-frac", "1.5"],
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--streams", "-1"],
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--top", "0"],
        ["cells", "NO-RUN", "--text", "NO-TEXT", "--ngram-order", "-2"],
        ["view", "NO-RUN", "--text", "NO-TEXT", "--port", "70000"],
        ["gradients", "--steps", "-3"],
        ["gradients", "--hidden-size", "0"],
        ["gradients", "--batch-size", "100000000"],
        ["gradients", "--seed", "-1"],
        ["gradients", "--cells", "lstm,nope"],
        ["gradients", "--steps", "10000", "--batch-size", "4096", "--hidden-size", "4096"],
    ],
)
def test_size_options_are_bounded_before_any_work(argv, capsys):
    from rnnlab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlab: error: ") and err.count("\n") == 1 and "expected" in err
    assert "NO-RUN" not in err and "NO-TEXT" not in err  # refused before the run was opened


# -- writes stay inside the directory handed over ----------------------------------------------


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run, ignore=shutil.ignore_patterns("analysis"))
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("cells.json", "gradients.json", "saturation.png", "gradients.png"):
        (outside / name).write_text("keep me")
    return run, outside


@pytest.mark.parametrize("command", ["cells", "gradients"])
@pytest.mark.parametrize("link", ["dir", "file"])
def test_analysis_never_writes_through_a_symlink(tiny_run, run_copy, capsys, command, link):
    from rnnlab.cli import main

    run, outside = run_copy
    name = "cells.json" if command == "cells" else "gradients.json"
    if link == "dir":
        (run / "analysis").symlink_to(outside)
    else:
        (run / "analysis").mkdir()
        (run / "analysis" / name).symlink_to(outside / name)
    argv = [command, str(run), "--steps", "10"] if command == "gradients" else [
        command, str(run), "--text", str(tiny_run / "held.txt"), "--max-chars", "500"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert "symbolic link" in err[-1] and sum(line.startswith("rnnlab:") for line in err) == 1
    assert all(p.read_text() == "keep me" for p in outside.iterdir())
    assert sorted(p.name for p in outside.iterdir()) == sorted(
        ["cells.json", "gradients.json", "saturation.png", "gradients.png"]
    )


def test_lstmvis_and_html_never_write_through_a_symlink(tiny_run, run_copy, tmp_path, capsys):
    from rnnlab.cli import main

    run, outside = run_copy
    (tmp_path / "lv").mkdir()
    (tmp_path / "lv" / "states.hdf5").symlink_to(outside / "cells.json")
    base = ["cells", str(run), "--text", str(tiny_run / "held.txt"), "--max-chars", "500"]
    assert main([*base, "--lstmvis", str(tmp_path / "lv")]) == 2
    (tmp_path / "page.html").symlink_to(outside / "gradients.json")
    assert main([*base, "--html", str(tmp_path / "page.html")]) == 2
    assert capsys.readouterr().err.count("symbolic link") == 2
    assert all(p.read_text() == "keep me" for p in outside.iterdir())


# -- metrics.jsonl and run-directory JSON ------------------------------------------------------


def test_gradients_tolerate_a_torn_last_line_and_name_a_bad_one(run_copy, tmp_path, capsys):
    from rnnlab.cli import main

    run, _ = run_copy
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 21, "train_lo')  # what a kill leaves
    assert main(["gradients", str(run), "--steps", "10", "--out", str(tmp_path / "a")]) == 0
    assert "torn last line" in capsys.readouterr().err
    report = json.loads((tmp_path / "a" / "gradients.json").read_text())
    assert report["clip"]["of_steps"] == len(good.splitlines())
    n = len(good.splitlines()) + 1
    for line, found in (("[1, 2]", "a JSON list"), ('{"step": 1, "step": 2}', "twice"),
                        ("{nope", "not valid JSON")):  # fmt: skip
        metrics.write_text(good + line + "\n")
        assert main(["gradients", str(run), "--steps", "10", "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert f"metrics.jsonl: line {n}" in err and found in err and err.count("\n") == 1
