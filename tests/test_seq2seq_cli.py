"""``rnnlab seq2seq``: one-line errors naming file and line with nothing written, train -> eval ->
predict, exact resume, and the CMUdict split."""

from __future__ import annotations

import json

import pytest

from rnnlab.cli import main
from rnnlab.data.cmudict import load_cmudict, split_of
from rnnlab.data.errors import DataError
from rnnlab.data.pairs import read_labeled, read_pairs
from rnnlab.tasks.seq2seq import Seq2SeqTrainConfig, train_seq2seq

TINY = ["--hidden-size", "16", "--embedding-size", "8", "--num-layers", "1", "--batch-size", "8",
        "--eval-size", "0", "--threads", "1", "--no-progress"]  # fmt: skip


def reverse_file(path, n=60):
    words = [f"{a}{b}{c}" for a in "abcd" for b in "abcd" for c in "abcd"][:n]
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in words))
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "content,suffix,where,what",
    [
        ("ab\tba\nabc\tcba\textra\n", ".tsv", ":2:", "expected 2 tab-separated fields, found 3"),
        ("ab\tba\n\nabc\n", ".tsv", ":3:", "found 1"),
        ('ab,ba\n"abc,cba\n', ".csv", ":2:", "malformed CSV"),
        ("ab,ba\nabc,cba,x\n", ".csv", ":2:", "comma-separated fields, found 3"),
        ("ab\t\n", ".tsv", ":1:", "empty target"),
        ("", ".tsv", "", "no rows"),
        (b"ab\tba\n\xff\tx\n", ".tsv", ":2:", "invalid UTF-8"),
    ],
)
def test_malformed_pairs_are_one_line_errors_and_nothing_is_written(
    tmp_path, capsys, content, suffix, where, what
):
    path = tmp_path / f"pairs{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "seq2seq", "train", "--pairs", str(path), "--out-dir",
                             str(out_dir), *TINY)  # fmt: skip
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("rnnlab: error: ")
    assert f"{path}{where}" in err and what in err
    assert not out_dir.exists()


def test_unseen_validation_symbol_names_file_and_line(tmp_path, capsys):
    train = reverse_file(tmp_path / "train.tsv")
    val = tmp_path / "val.tsv"
    val.write_text("abc\tcba\nabz\tzba\n")
    code, _, err = run_cli(capsys, "seq2seq", "train", "--pairs", str(train), "--val-pairs",
                           str(val), "--out-dir", str(tmp_path / "run"), *TINY)  # fmt: skip
    assert code == 2 and f"{val}:2: symbol(s) not seen in training: 'z'" in err
    assert not (tmp_path / "run").exists()


def test_labeled_rows_and_header(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"a, b",pos\n  x y ,neg \n')
    rows = read_labeled(path, tokens="space", header=True)
    assert [(r.source, r.target, r.line) for r in rows] == [
        (["a,", "b"], ["pos"], 2),
        (["x", "y"], ["neg"], 3),
    ]
    with pytest.raises(DataError, match=r"rows.csv:1: empty label"):
        path.write_text("abc,\n")
        read_labeled(path)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("cat\tK AE T\n")
    assert read_pairs(tsv, target_tokens="space")[0].target == ["K", "AE", "T"]


def test_train_eval_predict(tmp_path, capsys):
    train = reverse_file(tmp_path / "train.tsv")
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "seq2seq", "train", "--pairs", str(train), "--out-dir",
                             str(run_dir), "--max-steps", "30", "--eval-every", "15",
                             "--val-frac", "0.2", *TINY)  # fmt: skip
    assert code == 0, err
    assert "WER" in err and (run_dir / "best" / "model.safetensors").is_file()
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert "val_wer" in records[14] and "val_per" in records[29]

    test = tmp_path / "test.tsv"
    test.write_text("abc\tcba\ndcb\tbcd\n")
    code, out, err = run_cli(capsys, "seq2seq", "eval", str(run_dir), "--pairs", str(test),
                             "--method", "beam", "--beam", "3")  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"{test}: WER ") and "over 2 sources" in out
    code, out, err = run_cli(capsys, "seq2seq", "eval", str(run_dir), "--pairs", str(test),
                             "--output", str(tmp_path / "out.tsv"))  # fmt: skip
    rows = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()]
    assert code == 0 and [r[0] for r in rows] == ["abc", "dcb"] and rows[0][3] == "cba"
    wrong = sum(r[2] == "0" for r in rows)
    assert f"({wrong} wrong" in out

    code, out, err = run_cli(capsys, "seq2seq", "predict", str(run_dir), "abc", "dd")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["abc", "dd"]
    code, out, err = run_cli(capsys, "seq2seq", "predict", str(run_dir), "abq")
    assert code == 2 and out == "" and "source 1 ('abq'): symbol(s) not seen" in err
    code, out, err = run_cli(capsys, "seq2seq", "predict", str(run_dir), "abq", "--unknown",
                             "replace")  # fmt: skip
    assert code == 0 and out.startswith("abq\t")
    code, out, err = run_cli(capsys, "seq2seq", "eval", str(tmp_path))
    assert code == 2 and "rnnlab: error:" in err


def test_resume_continues_exactly(tmp_path):
    train = reverse_file(tmp_path / "train.tsv")
    common = dict(pairs=str(train), hidden_size=16, embedding_size=8, num_layers=2, batch_size=8,
                  dropout=0.2, eval_every=10, eval_size=0, threads=1, sampling=0.3,
                  warmup_steps=3)  # fmt: skip
    # the straight run's schedule: a 10-step cosine horizon (the horizon the resumed run keeps)
    straight = train_seq2seq(Seq2SeqTrainConfig(**common, out_dir=str(tmp_path / "a"),
                                                max_steps=24, decay_steps=10))  # fmt: skip
    train_seq2seq(Seq2SeqTrainConfig(**common, out_dir=str(tmp_path / "b"), max_steps=10))
    resumed = train_seq2seq(resume=tmp_path / "b", changes={"max_steps": 24})
    assert resumed.step == straight.step == 24

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines]

    assert losses("a") == losses("b")  # bit for bit, across an epoch boundary (7 steps/epoch)
    with pytest.raises(ValueError, match="hidden_size"):
        train_seq2seq(resume=tmp_path / "b", changes={"hidden_size": 32})


def test_cmudict_split_is_a_documented_hash_of_the_word():
    import hashlib

    for word in ("read", "pytorch", "zyzzyva"):
        bucket = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16) % 100
        want = "test" if bucket < 10 else "val" if bucket < 15 else "train"
        assert split_of(word) == want
    words = load_cmudict()
    assert len(words) == 126_052
    assert words["read"] == [["R", "EH", "D"], ["R", "IY", "D"]]  # stress removed, both kept
    assert load_cmudict(stress=True)["read"] == [["R", "EH1", "D"], ["R", "IY1", "D"]]
    counts = {s: 0 for s in ("train", "val", "test")}
    for word in list(words)[::10]:
        counts[split_of(word)] += 1
    total = sum(counts.values())
    assert abs(counts["test"] / total - 0.10) < 0.01 and abs(counts["val"] / total - 0.05) < 0.01


def test_predict_with_g2p_ens_published_model(capsys):
    from rnnlab.models.g2p_en import g2p_en_weights_bytes

    try:
        g2p_en_weights_bytes()
    except DataError as e:
        pytest.skip(f"g2p-en wheel unavailable: {e}")
    code, out, err = run_cli(capsys, "seq2seq", "predict", "--g2p-en", "Activationist")
    assert code == 0, err
    assert out == "Activationist\tAE2 K T IH0 V EY1 SH AH0 N IH0 S T\n"


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_130_then_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    train = reverse_file(tmp_path / "train.tsv")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnlab.cli", "seq2seq", "train", "--pairs", str(train),
           "--out-dir", str(run_dir), "--max-steps", "1000000", "--eval-every", "1000000",
           *TINY]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    log = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with: rnnlab seq2seq train --resume" in err
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    last = steps[-1]
    assert (run_dir / f"step-{last}" / "manifest.json").is_file()
    result = train_seq2seq(resume=run_dir, changes={"max_steps": last + 3})
    assert result.step == last + 3 and result.stopped == "max_steps"


def test_length_batches_cover_every_example_once_and_repeat_with_the_seed():
    import torch

    from rnnlab.data.pairs import length_batches, pad_batch

    lengths = [(i * 7) % 13 + 1 for i in range(1000)]
    a = length_batches(lengths, 32, torch.Generator().manual_seed(3))
    b = length_batches(lengths, 32, torch.Generator().manual_seed(3))
    c = length_batches(lengths, 32, torch.Generator().manual_seed(4))
    assert a == b and a != c
    assert sorted(i for batch in a for i in batch) == list(range(1000))
    spread = sum(max(lengths[i] for i in x) - min(lengths[i] for i in x) for x in a) / len(a)
    assert spread < 2  # batches of similar lengths: little padding
    ids, n = pad_batch([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and n.tolist() == [3, 1]


@pytest.mark.slow
def test_g2p_task_trains_and_predicts_arpabet(tmp_path, capsys):
    run_dir = tmp_path / "g2p"
    flags = ["--out-dir", str(run_dir), "--max-steps", "3", "--eval-size", "20", *TINY]
    code, _, err = run_cli(capsys, "seq2seq", "train", "--task", "g2p", *flags)
    assert code == 0, err
    assert "114,561 training / 6,707 validation pairs" in err
    code, out, err = run_cli(capsys, "seq2seq", "predict", str(run_dir), "Hello", "--max-length",
                             "5")  # fmt: skip
    assert code == 0, err
    word, phones = out.rstrip("\n").split("\t")
    assert word == "Hello" and len(phones.split()) <= 5
    phonemes = {p for prons in load_cmudict().values() for pron in prons for p in pron}
    assert len(phonemes) == 39 and set(phones.split()) <= phonemes


def test_a_bad_model_config_writes_nothing(tmp_path, capsys):
    train = reverse_file(tmp_path / "train.tsv")
    out_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "seq2seq", "train", "--pairs", str(train), "--out-dir",
                           str(out_dir), "--hidden-size", "7", "--bidirectional")  # fmt: skip
    assert code == 2 and "even hidden_size" in err and not out_dir.exists()


def test_resume_refuses_changed_data(tmp_path):
    train = reverse_file(tmp_path / "train.tsv")
    config = Seq2SeqTrainConfig(pairs=str(train), out_dir=str(tmp_path / "run"), hidden_size=8,
                                embedding_size=4, num_layers=1, max_steps=2, threads=1)  # fmt: skip
    train_seq2seq(config)
    train.write_text(train.read_text() + "dcba\tabcd\n")
    with pytest.raises(DataError, match="differ from the run"):
        train_seq2seq(resume=tmp_path / "run", changes={"max_steps": 4})
