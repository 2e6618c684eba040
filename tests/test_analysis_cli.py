"""``rnnlab cells``, ``rnnlab gradients`` and ``rnnlab view`` on a tiny trained run: the files they
write (viewer JSON, PNGs, HTML, errors, LSTMVis project) and what they print."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest

from rnnlab.analysis import cli as analysis_cli
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
        assert args.run.__module__ == "rnnlab.analysis.cli"


def _minimal(command: str) -> list[str]:
    return {
        "cells": ["cells", "r", "--text", "t"],
        "gradients": ["gradients"],
        "view": ["view", "r", "--text", "t"],
    }[command]
