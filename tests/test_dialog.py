"""Visual dialog models, task and CLI (models/dialog.py, tasks/dialog.py, cli/dialog_cmd.py).

The encoders see every earlier round and nothing later (perturb one round: exactly the later
rounds' encodings change; the released VisDial late-fusion encoder once read one round only);
the ablations ignore what they leave out; the generative decoder's candidate log-likelihood is
the sum of the step protocol's log-probabilities; a model with history answers back-referring
questions that the same model without history cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rnnlab.cli import main
from rnnlab.data.clevr_dialog import write_clevr_dialog
from rnnlab.models.dialog import DialogConfig, DialogInputs, DialogModel

pytestmark = pytest.mark.usefixtures("one_thread")

B, R, V = 3, 5, 30


def _inputs(seed: int = 0) -> DialogInputs:
    g = torch.Generator().manual_seed(seed)
    q_len = torch.randint(2, 6, (B, R), generator=g)
    f_len = torch.randint(2, 9, (B, R), generator=g)
    questions = torch.randint(4, V, (B, R, 6), generator=g)
    facts = torch.randint(4, V, (B, R, 9), generator=g)
    questions[torch.arange(6)[None, None] >= q_len[..., None]] = 0
    facts[torch.arange(9)[None, None] >= f_len[..., None]] = 0
    images = torch.randint(0, 256, (B, 3, 16, 16), generator=g, dtype=torch.uint8)
    return DialogInputs(images, questions, q_len, facts, f_len)


def _model(**kw) -> DialogModel:
    torch.manual_seed(0)
    config = dict(vocab_size=V, embedding_size=8, hidden_size=12, image_size=16, cnn_channels=4,
                  cnn_blocks=2, feature_size=8)  # fmt: skip
    return DialogModel(DialogConfig(**{**config, **kw})).eval()


@pytest.mark.parametrize("encoder", ["late_fusion", "hierarchical"])
def test_every_history_round_is_used_and_no_later_one(encoder):
    """Fact j is the caption (j = 0) or the question and answer of round j - 1 (rounds counted
    from 0): changing it changes the encoding of round j and every later round, and of none
    before: each round's history holds all earlier rounds and nothing of its own or later."""
    model = _model(encoder=encoder)
    x = _inputs()
    with torch.no_grad():
        base = model.encode(x)
        for j in range(R):
            facts = x.facts.clone()
            facts[:, j, 0] = (facts[:, j, 0] - 4 + 1) % (V - 4) + 4  # another word
            changed = model.encode(DialogInputs(x.images, x.questions, x.question_lengths, facts,
                                                x.fact_lengths))  # fmt: skip
            moved = (changed - base).abs().amax(dim=(0, 2))  # (R,): per round
            assert (moved[:j] == 0).all(), (j, moved)  # round t sees facts 0..t
            assert (moved[j:] > 1e-6).all(), (j, moved)
        # padding past a fact's length is never read
        facts = x.facts.clone()
        facts[torch.arange(9)[None, None] >= x.fact_lengths[..., None]] = 7
        same = model.encode(DialogInputs(x.images, x.questions, x.question_lengths, facts,
                                         x.fact_lengths))  # fmt: skip
        assert torch.allclose(same, base, atol=1e-6)


def test_the_ablations_ignore_what_they_leave_out():
    x, y = _inputs(0), _inputs(1)
    no_history = _model(history=False)
    question_only = _model(history=False, image=False)
    with torch.no_grad():
        facts = DialogInputs(x.images, x.questions, x.question_lengths, y.facts, y.fact_lengths)
        assert torch.equal(no_history.encode(x), no_history.encode(facts))
        image = DialogInputs(y.images, x.questions, x.question_lengths, y.facts, y.fact_lengths)
        assert torch.equal(question_only.encode(x), question_only.encode(image))
        assert not torch.allclose(no_history.encode(x), no_history.encode(image))
        assert question_only.cnn is None and not hasattr(question_only, "history_rnn")


def _answers(n: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(n, 7, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, 5, (1,), generator=g))
        rows[i, 0], rows[i, 1 : k + 1], rows[i, k + 1] = (
            1,
            torch.randint(4, V, (k,), generator=g),
            2,
        )
    return rows


def test_generative_candidates_are_ranked_by_the_log_likelihood_the_decoder_steps_give():
    """option_scores (one teacher-forced pass) equals summing ``step``'s log-probabilities of
    each candidate token by token, <end> included: what rnnlab.decoding would score."""
    model = _model(decoder="generative")
    answers = _answers()
    options = torch.randint(0, len(answers), (B, R, 4))
    with torch.no_grad():
        e = model.encode(_inputs())
        scores = model.option_scores(e, options, answers)
        for b in range(B):
            for t in range(R):
                for n in range(4):
                    row = answers[options[b, t, n]]
                    state, total = model.start(e[b, t][None]), 0.0
                    for i in range(int((row != 0).sum()) - 1):
                        logp, state = model.step(row[i : i + 1], state)
                        total += float(logp[0, row[i + 1]])
                    assert float(scores[b, t, n]) == pytest.approx(total, abs=1e-4)


def test_discriminative_scores_are_dot_products_with_each_candidate_encoded_alone():
    model = _model()
    answers = _answers()
    options = torch.randint(0, len(answers), (B, R, 4))
    with torch.no_grad():
        e = model.encode(_inputs())
        scores = model.option_scores(e, options, answers)
        for n in range(len(answers)):
            a = model.encode_answers(answers[n : n + 1])[0]
            where = options == n
            assert torch.allclose(
                scores[where],
                (e @ a)[where.any(-1)].new_tensor(
                    [float(e[i, j] @ a) for i, j, _ in where.nonzero().tolist()]
                ),
                atol=1e-5,
            )


def test_greedy_generation_goes_through_rnnlab_decoding():
    from rnnlab import decoding

    model = _model(decoder="generative")
    with torch.no_grad():
        e = model.encode(_inputs())[:, 0]
        hyps = decoding.greedy(model.step, model.reorder, model.start(e),
                               torch.ones(B, dtype=torch.long), max_length=5, eos=2)  # fmt: skip
        for b, h in enumerate(hyps):  # each token is the argmax of the step it came from
            state, token = model.start(e[b : b + 1]), torch.ones(1, dtype=torch.long)
            for t in h.tokens:
                logp, state = model.step(token, state)
                assert int(logp.argmax()) == t
                token = torch.tensor([t])


@pytest.fixture(scope="module")
def clevr(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_clevr_dialog(tmp_path_factory.mktemp("clevr"), 240, num_val=40, num_test=0,
                              seed=3)  # fmt: skip


def test_history_answers_back_referring_questions_that_no_history_cannot(clevr, tmp_path):
    """The same late-fusion model, trained alike, with and without the history: R@1 on rounds
    that refer back (coreference distance >= 1) is far higher with it; without it the referent
    is unknown and the answer, which names it, a guess among the objects."""
    from rnnlab.metrics.retrieval import ground_truth_ranks
    from rnnlab.runs import load_run
    from rnnlab.tasks.dialog import (
        DialogTrainConfig,
        dialog_metrics,
        load_split,
        rank_options,
        train_dialog,
    )

    found = {}
    for history in (True, False):
        config = DialogTrainConfig(data=str(clevr["train"]), val_data=str(clevr["val"]),
                                   out_dir=str(tmp_path / f"h{history}"), history=history,
                                   image=False, hidden_size=64, embedding_size=32, max_steps=300,
                                   eval_every=300, batch_size=8, threads=1, warmup_steps=10,
                                   lr=5e-3)  # fmt: skip
        train_dialog(config)
        run = load_run(tmp_path / f"h{history}", tasks=("dialog",))
        split, _ = load_split(clevr["val"], run.train_config, run.vocab)
        scores, _ = rank_options(run.model, split, torch.device("cpu"))
        coref = torch.from_numpy(split.encoded.coref).reshape(-1)
        gt = torch.from_numpy(split.encoded.gt_index).reshape(-1)
        ranks = ground_truth_ranks(scores.reshape(len(gt), -1), gt)
        found[history] = (float((ranks[coref >= 1] == 1).double().mean()),
                          dialog_metrics(scores, split.encoded))  # fmt: skip
    with_history, without = found[True][0], found[False][0]
    assert with_history > without + 0.15, found
    assert without < 0.2, found
    for d in (1, 2):  # by distance too
        assert found[True][1][f"r1_coref_{d}"] > found[False][1][f"r1_coref_{d}"], found


def test_cli_train_eval_predict_and_errors(clevr, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["dialog", "train", "--data", str(clevr["train"]), "--val-data", str(clevr["val"]),
            "--dense", str(clevr["val_dense"]), "--max-steps", "2", "--eval-every", "2",
            "--hidden-size", "16", "--embedding-size", "8", "--cnn-channels", "4",
            "--batch-size", "4", "--threads", "1", "--out-dir", str(run), "--no-progress",
            "--decoder", "generative", "--encoder", "hierarchical"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["dialog", "eval", str(run), "--max-dialogs", "3"]) == 0
    out = capsys.readouterr().out
    for label in ("R@1", "R@5", "R@10", "mean rank", "MRR", "NDCG", "coref distance 1"):
        assert label in out
    questions = tmp_path / "q.txt"
    questions.write_text("what shape is the red object?\nwhere is it?\n")
    image = next((clevr["val"].parent / "images").glob("CLEVRDialog_val_*.png"))
    assert main(["dialog", "predict", str(run), str(image), "--caption", "there are 3 squares",
                 "--questions", str(questions), "--beam", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("Q: ") == 2 and out.count("A: ") == 2
    bad = tmp_path / "bad.json"
    data = json.loads(clevr["val"].read_text())
    data["data"]["dialogs"][2]["dialog"][4]["answer"] = "x"
    bad.write_text(json.dumps(data))
    assert main(["dialog", "eval", str(run), "--data", str(bad)]) != 0  # no images beside it
    err = capsys.readouterr().err
    assert "bad.json: data.dialogs[0].image_id: no image file for image_id" in err
    images = str(clevr["val"].parent / "images")
    assert main(["dialog", "eval", str(run), "--data", str(bad), "--images", images]) != 0
    err = capsys.readouterr().err
    assert "bad.json: data.dialogs[2].dialog[4].answer: expected an integer, found str" in err
    assert len(err.strip().splitlines()) == 1
