"""The captioning loop: checkpoints (safetensors + JSON only), exact resume, graceful stop,
precomputed features, loading, evaluation with baselines, and the HTML report's escaping."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from rnnlab.checkpoint import CheckpointError
from rnnlab.data.shapes import write_shapes_dataset
from rnnlab.report.captions import (
    CaptionEvaluation,
    consensus_caption,
    dataset_of,
    evaluate_run,
    model_inputs,
    most_frequent_baseline,
    nearest_neighbour_baseline,
    render_report,
    score_method,
)
from rnnlab.runs import load_run
from rnnlab.tasks.caption import CaptionTrainConfig, train_captioner


def load_captioner(path, which="best"):
    return load_run(path, which, tasks=("caption",))


TINY = dict(
    image_size=16,
    cnn_blocks=2,
    cnn_channels=4,
    feature_size=16,
    embedding_size=8,
    hidden_size=16,
    batch_size=4,
    warmup_steps=0,
    decay_steps=8,
    threads=1,
    max_length=12,
    eval_every=3,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(out, 24, num_val=4, num_test=4, image_size=16, seed=1)


def config(shapes, out_dir, **kw) -> CaptionTrainConfig:
    return CaptionTrainConfig(data=str(shapes), out_dir=str(out_dir), **{**TINY, **kw})


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines]


def test_checkpoints_are_safetensors_and_json_and_resume_is_exact(shapes, tmp_path):
    straight = train_captioner(config(shapes, tmp_path / "a", max_steps=6))
    assert straight.step == 6 and straight.stopped == "max_steps"
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"step-3", "step-6", "best", "metrics.jsonl"} <= names
    files = {p.name for p in (tmp_path / "a" / "step-6").iterdir()}
    assert files == {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "trainer.safetensors",
        "trainer.json",
        "manifest.json",
    }
    first = train_captioner(config(shapes, tmp_path / "b", max_steps=3))
    assert first.step == 3
    resumed = train_captioner(resume=tmp_path / "b", changes={"max_steps": 6})
    assert resumed.step == 6
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # bit for bit on CPU


def test_sigterm_finishes_the_step_and_checkpoints(shapes, tmp_path):
    notes = []

    def on_event(event):
        if event["kind"] == "step" and event["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        if event["kind"] == "note":
            notes.append(event["text"])

    result = train_captioner(config(shapes, tmp_path, max_steps=6, log_every=1), on_event=on_event)
    assert result.stopped == "interrupted" and result.step == 2
    # Captions longer than max_length (12) are cut, and the loop says so.
    assert any("train caption(s) cut to --max-length 12 words" in n for n in notes), notes
    assert (tmp_path / "step-2" / "manifest.json").exists()
    assert train_captioner(resume=tmp_path).step == 6


def test_a_second_fresh_run_into_the_same_directory_is_refused(shapes, tmp_path):
    train_captioner(config(shapes, tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="already holds a run"):
        train_captioner(config(shapes, tmp_path, max_steps=1))


def test_precomputed_feature_grids_with_attention(shapes, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "features.npy", rng.standard_normal((24, 5, 6)).astype(np.float32))
    cfg = config(
        shapes,
        tmp_path / "run",
        features=str(tmp_path / "features.npy"),
        attention=True,
        max_steps=3,
    )
    train_captioner(cfg)
    run = load_captioner(tmp_path / "run")
    assert run.model.config.encoder == "features" and run.model.config.feature_size == 6
    dataset = dataset_of(run)
    result = evaluate_run(run, dataset, model_inputs(run, dataset), "test", beam=2)
    assert len(result.generated) == 4 and result.method == "beam 2"
    # predict on a features run reads feature files: one caption per row.
    from rnnlab.cli import main

    np.save(tmp_path / "two.npy", rng.standard_normal((2, 5, 6)).astype(np.float32))
    assert main(["caption", "predict", str(tmp_path / "run"), str(tmp_path / "two.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        f"{tmp_path / 'two.npy'}[{i}]" for i in (0, 1)
    ]


def test_evaluation_baselines_and_loading_errors(shapes, tmp_path):
    train_captioner(config(shapes, tmp_path, max_steps=3, conditioning="init"))
    run = load_captioner(tmp_path, "latest")
    dataset = dataset_of(run)
    inputs = model_inputs(run, dataset)
    greedy = evaluate_run(run, dataset, inputs, "val")
    assert greedy.method == "greedy" and len(greedy.images) == 4
    assert evaluate_run(run, dataset, inputs, "val", beam=1).generated == greedy.generated
    frequent = most_frequent_baseline(dataset, "test")
    assert len(set(frequent.generated)) == 1
    nearest = nearest_neighbour_baseline(dataset, inputs, "test")
    train_captions = {c for im in dataset.split("train") for c in im.captions}
    assert set(nearest.generated) <= train_captions
    # A test image's own pixels as a "training" image: its nearest neighbour is itself.
    assert nearest_neighbour_baseline(dataset, inputs, "train").scores.bleu[3] == pytest.approx(1)
    (tmp_path / "step-3" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_captioner(tmp_path / "step-3")


def test_consensus_caption_picks_the_agreed_wording():
    captions = [("a", "red", "circle"), ("a", "red", "circle", "here"), ("one", "blue", "dot")]
    assert consensus_caption(captions) == ("a", "red", "circle")


def test_report_escapes_corpus_text_and_runs_no_script(shapes):
    from rnnlab.data.captions import read_caption_json

    dataset = read_caption_json(shapes)
    image = dataset.split("test")[0]
    hostile = ("<img", "src=x", "onerror=alert(1)>", "&amp;", "</div><script>x</script>")
    evil = type(image)(image.index, "<b>.png", image.path, "test", (hostile,))
    result: CaptionEvaluation = score_method("greedy", "test", [evil], [hostile])
    page = render_report(result, [score_method("<i>baseline</i>", "test", [evil], [("a",)])])
    assert "<script" not in page.lower() and "<img src=x" not in page and "<i>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&amp;amp;" in page
    assert "default-src 'none'" in page and page.count("data:image/png;base64,") == 1
    assert torch.is_tensor(torch.zeros(1))  # torch stays importable alongside the report


def test_resume_refuses_a_changed_caption_file(shapes, tmp_path):
    import shutil

    from rnnlab.data.errors import DataError

    data = tmp_path / "data"
    shutil.copytree(shapes.parent, data)
    train_captioner(config(data / "captions.json", tmp_path / "run", max_steps=1))
    entries = json.loads((data / "captions.json").read_text())
    entries["images"][0]["sentences"][0]["tokens"] = ["changed"]
    (data / "captions.json").write_text(json.dumps(entries))
    with pytest.raises(DataError, match="changed since the run started"):
        train_captioner(resume=tmp_path / "run", changes={"max_steps": 2})


def test_time_limit_stops_with_an_evaluated_best_checkpoint(shapes, tmp_path):
    result = train_captioner(config(shapes, tmp_path, max_steps=50, max_minutes=1e-6))
    assert result.stopped == "max_minutes" and result.step == 1
    assert (tmp_path / "best" / "manifest.json").exists()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and "val_cider" in record


def test_report_draws_attention_for_an_attention_model(shapes, tmp_path):
    from rnnlab.report.captions import attention_of

    train_captioner(config(shapes, tmp_path, max_steps=1, attention=True))
    run = load_captioner(tmp_path)
    dataset = dataset_of(run)
    inputs = model_inputs(run, dataset)
    result = evaluate_run(run, dataset, inputs, "test")
    maps = attention_of(run, result, inputs, limit=2)
    assert [m.shape for m in maps] == [(len(g) + 1, 64) for g in result.generated[:2]]
    page = render_report(result, attention=maps)
    words = sum(len(g) + 1 for g in result.generated[:2])
    assert page.count("<figure>") == words and "<figcaption>&lt;end&gt;</figcaption>" in page
