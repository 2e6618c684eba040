"""SequenceClassifier: padding-invariance, pooling against direct formulas, an order-dependent
rule a character-count model cannot learn, metrics by hand, and ``rnnlab classify``."""

from __future__ import annotations

import random

import pytest
import torch

from rnnlab.cli import main
from rnnlab.metrics.classification import classification_report
from rnnlab.models.classifier import ClassifierConfig, SequenceClassifier
from rnnlab.runs import load_run
from rnnlab.tasks.classify import ClassifyTrainConfig, train_classifier


def make(pooling, bi, cell="lstm", layers=2):
    torch.manual_seed(0)
    config = ClassifierConfig(vocab_size=9, num_classes=3, embedding_size=5, hidden_size=6,
                              num_layers=layers, cell=cell, bidirectional=bi,
                              pooling=pooling)  # fmt: skip
    return SequenceClassifier(config).eval()


def padded():
    lengths = torch.tensor([4, 1, 6, 3])
    ids = torch.randint(2, 9, (4, 6), generator=torch.Generator().manual_seed(1))
    ids[torch.arange(6)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


CASES = [(False, "lstm"), (True, "gru"), (True, "mut2"), (True, "mingru"), (False, "minlstm")]


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("bi,cell", CASES)
def test_padded_batch_equals_each_sequence_alone(pooling, bi, cell):
    model = make(pooling, bi, cell)
    ids, lengths = padded()
    with torch.no_grad():
        together = model(ids, lengths)
        for i in range(4):
            n = int(lengths[i])
            alone = model(ids[i : i + 1, :n], lengths[i : i + 1])
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)


def test_pooling_against_direct_formulas():
    ids, lengths = padded()
    for pooling in ("last", "mean", "max"):
        model = make(pooling, True, layers=1)
        with torch.no_grad():
            got = model.encode(ids, lengths)
            for i in range(4):
                n = int(lengths[i])
                x = model.embedding(ids[i, :n])[None]  # (1, n, E): batch_first
                out = model.rnn(x)[0][0]  # (n, 2H): one sequence, no padding
                want = {"last": torch.cat([out[n - 1, :6], out[0, 6:]]),
                        "mean": out.mean(0), "max": out.amax(0)}[pooling]  # fmt: skip
                torch.testing.assert_close(got[i], want, atol=1e-6, rtol=1e-5)


def test_classification_report_by_hand():
    # true:      0 0 0 1 1 2      predicted: 0 1 0 1 1 1
    r = classification_report([0, 1, 0, 1, 1, 1], [0, 0, 0, 1, 1, 2], 4)
    assert r.confusion == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert r.accuracy == pytest.approx(4 / 6)
    # F1: class 0: 2*2/(4+0+1) = 0.8; class 1: 2*2/(4+2+0) = 2/3; class 2: 0; class 3 absent
    assert r.f1[:3] == pytest.approx([0.8, 2 / 3, 0.0])
    assert r.macro_f1 == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)


def bracket_rows(n, seed):
    """Label: does the first '(' come before the first ')'? Every string has as many '(' as
    ')', so swapping the two maps each string to one with the same counts and the other label:
    given the counts, both labels are equally likely, and only the order decides."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(1, 3)
        chars = list("(" * k + ")" * k) + [rng.choice("ab") for _ in range(rng.randint(0, 4))]
        rng.shuffle(chars)
        text = "".join(chars)
        rows.append((text, "open" if text.index("(") < text.index(")") else "close"))
    return rows


def write_rows(path, rows):
    path.write_text("".join(f"{t}\t{y}\n" for t, y in rows))
    return path


def count_model_accuracy(train, test):
    """Logistic regression on character counts (with a bias), trained to convergence."""

    def features(rows):
        return torch.tensor([[t.count(c) for c in "()ab"] + [1.0] for t, _ in rows])

    x, y = features(train), torch.tensor([y == "open" for _, y in train], dtype=torch.float)
    w = torch.zeros(5, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y)
        loss.backward()
        return loss

    opt.step(closure)
    xt, yt = features(test), torch.tensor([y == "open" for _, y in test])
    return float(((xt @ w > 0) == yt).float().mean())


@pytest.mark.slow
def test_learns_an_order_dependent_rule_counts_cannot(tmp_path):
    train_rows, test_rows = bracket_rows(3000, 0), bracket_rows(500, 1)
    test_texts = {t for t, _ in test_rows}
    train_rows = [r for r in train_rows if r[0] not in test_texts]  # held out for real
    assert count_model_accuracy(train_rows, test_rows) < 0.65
    config = ClassifyTrainConfig(data=str(write_rows(tmp_path / "train.tsv", train_rows)),
                                 out_dir=str(tmp_path / "run"), hidden_size=32,
                                 embedding_size=8, max_steps=500, eval_every=250, lr=1e-2,
                                 threads=1)  # fmt: skip
    result = train_classifier(config)
    assert result.best["val_accuracy"] > 0.97
    test = write_rows(tmp_path / "test.tsv", test_rows)
    code = main(["classify", "eval", str(tmp_path / "run"), str(test)])
    assert code == 0
    from rnnlab.data.pairs import read_labeled
    from rnnlab.tasks.classify import evaluate_rows

    run = load_run(tmp_path / "run", tasks=("classify",))
    held = evaluate_rows(run.model, read_labeled(test), run.vocab, run.labels)
    assert held.report.accuracy > 0.97


def test_cli_train_eval_predict_and_errors(tmp_path, capsys):
    rows = bracket_rows(200, 2)
    data = write_rows(tmp_path / "rows.tsv", rows)
    run_dir = tmp_path / "run"
    code = main(["classify", "train", str(data), "--out-dir", str(run_dir), "--max-steps", "20",
                 "--eval-every", "10", "--hidden-size", "8", "--threads", "1",
                 "--bidirectional", "--pooling", "max"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "accuracy" in err and "macro-F1" in err
    assert (run_dir / "best" / "model.safetensors").is_file()

    code = main(["classify", "eval", str(run_dir), str(data)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{data}: accuracy ") and "true \\ predicted" in out

    code = main(["classify", "predict", str(run_dir), "(ab)", "a)(b"])
    out, _ = capsys.readouterr()
    assert code == 0 and [line.split("\t")[2] for line in out.splitlines()] == ["(ab)", "a)(b"]

    bad = tmp_path / "bad.tsv"
    bad.write_text("(a)\topen\n(b)\tmaybe\n")
    code = main(["classify", "eval", str(run_dir), str(bad)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and f"{bad}:2: label(s) not seen in training: 'maybe'" in err
    bad.write_text("(z)\topen\n")
    code = main(["classify", "eval", str(run_dir), str(bad)])
    _, err = capsys.readouterr()
    assert code == 2 and f"{bad}:1: symbol(s) not seen in training: 'z'" in err
    code = main(["classify", "predict", str(run_dir), "(z)"])
    _, err = capsys.readouterr()
    assert code == 2 and "text 1 ('(z)'): symbol(s) not seen" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code = main(["classify", "train", str(empty), "--out-dir", str(tmp_path / "none")])
    _, err = capsys.readouterr()
    assert code == 2 and f"{empty}: no rows" in err and not (tmp_path / "none").exists()


def test_resume_continues_exactly(tmp_path, monkeypatch):
    import json

    data = write_rows(tmp_path / "rows.tsv", bracket_rows(120, 3))
    common = dict(data="rows.tsv", hidden_size=8, embedding_size=4, num_layers=2, dropout=0.3,
                  batch_size=16, eval_every=5, threads=1, decay_steps=20)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    train_classifier(ClassifyTrainConfig(**common, out_dir="a", max_steps=20))
    train_classifier(ClassifyTrainConfig(**common, out_dir="b", max_steps=8))
    monkeypatch.chdir(data.parent.parent)  # another directory: the stored path is absolute
    result = train_classifier(resume=tmp_path / "b", changes={"max_steps": 20})
    assert result.step == 20

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines]

    assert losses("a") == losses("b")


def test_nonfinite_steps_abort_with_the_step_in_the_log(tmp_path, monkeypatch):
    """Non-finite losses are skipped, max_nonfinite of them in a row abort the run with a clear
    error, and the aborting step's record is in metrics.jsonl (as in the char-LM loop)."""
    import json
    import math

    from rnnlab.training.tools import TrainingError

    data = write_rows(tmp_path / "rows.tsv", bracket_rows(60, 3))
    original = SequenceClassifier.forward

    def broken(self, ids, lengths):
        return original(self, ids, lengths) * float("inf")

    monkeypatch.setattr(SequenceClassifier, "forward", broken)
    config = ClassifyTrainConfig(data=str(data), out_dir=str(tmp_path / "run"), hidden_size=8,
                                 embedding_size=4, batch_size=8, max_steps=20, eval_every=100,
                                 threads=1, max_nonfinite=3)  # fmt: skip
    with pytest.raises(TrainingError, match="3 non-finite steps in a row"):
        train_classifier(config)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["step"] == 3 and not math.isfinite(last["train_loss"])
