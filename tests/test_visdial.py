"""The synthetic dialogs (data/clevr_dialog.py) and the VisDial v1.0 reader (data/visdial.py):
what the generator promises, and one-line errors naming the file and JSON path for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rnnlab.data.captions import CaptionVocab
from rnnlab.data.clevr_dialog import _BACK, answer_pool, generate_dialog, write_clevr_dialog
from rnnlab.data.errors import DataError
from rnnlab.data.scenes import COLOURS, random_scene
from rnnlab.data.visdial import dialog_words, encode_dialogs, read_visdial


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_clevr_dialog(tmp_path_factory.mktemp("dialog"), 12, num_val=4, num_test=2, seed=5)


def test_the_generated_set_reads_back_with_ten_rounds_and_100_distinct_candidates(dataset):
    ds = read_visdial(dataset["val"], dense=dataset["val_dense"])
    assert ds.split == "val" and len(ds.dialogs) == 4 and ds.num_rounds == 10
    for d in ds.dialogs:
        assert d.image.exists() and d.image.name.endswith(f"{d.image_id:012d}.png")
        for r in d.rounds:
            assert len(set(r.options)) == 100 and r.options[r.gt_index] == r.answer
            assert r.coref_distance is not None
    assert len(ds.relevance) == 4  # one densely annotated round per dialog
    for (d, t), rel in ds.relevance.items():
        assert rel[ds.dialogs[d].rounds[t].gt_index] == 1.0 and set(rel) <= {0.0, 0.5, 1.0}
    train = read_visdial(dataset["train"])
    assert len(train.dialogs) == 6 and not train.relevance
    again = write_clevr_dialog(dataset["train"].parent / "again", 12, num_val=4, num_test=2, seed=5)
    assert again["val"].read_bytes() == dataset["val"].read_bytes()  # same seed, same files


def test_back_referring_questions_name_no_object_and_their_referent_was_named_before():
    """The point of the set: a question that refers back cannot be answered without the history,
    because its referent is named only in an earlier round, exactly coref_distance rounds back."""
    rng = np.random.default_rng(0)
    back = 0
    for _ in range(50):
        scene = random_scene(rng)
        rounds = generate_dialog(scene, rng)
        assert len(rounds) == 10 and rounds[0].coref_distance == 0
        for t, r in enumerate(rounds):
            if r.question not in _BACK.values():
                assert r.coref_distance == 0
                continue
            back += 1
            assert not any(c in r.question for c in COLOURS)
            assert r.coref_distance >= 1
            source = rounds[t - r.coref_distance]
            named = {c for c in COLOURS if c in source.question + " " + source.answer}
            assert named, (source, r)
    assert back > 150  # most rounds refer back


def test_every_answer_kind_has_its_similar_answers_in_the_pool():
    pool = answer_pool()
    everything = {a for answers in pool.values() for a in answers}
    assert len(everything) >= 100
    rng = np.random.default_rng(1)
    for r in generate_dialog(random_scene(rng), rng, 10):
        assert r.answer in pool[r.kind]


def test_encoding_lays_out_facts_as_caption_then_earlier_rounds(dataset):
    ds = read_visdial(dataset["val"])
    vocab = CaptionVocab.build(dialog_words(ds))
    enc = encode_dialogs(ds, vocab, 20)
    d = ds.dialogs[0]
    words = lambda row, n: vocab.decode(row[:n].tolist())  # noqa: E731
    assert words(enc.facts[0, 0], enc.fact_lengths[0, 0]) == list(d.caption)
    r0 = d.rounds[0]
    assert words(enc.facts[0, 1], enc.fact_lengths[0, 1]) == list(
        ds.questions[r0.question] + ds.answers[r0.answer]
    )
    assert words(enc.questions[0, 3], enc.question_lengths[0, 3]) == list(
        ds.questions[d.rounds[3].question]
    )
    assert enc.options.shape == (4, 10, 100) and np.isnan(enc.relevance).all()


def _copy(dataset: dict[str, Path], tmp_path: Path, change) -> Path:
    data = json.loads(dataset["val"].read_text())
    change(data)
    out = tmp_path / "bad.json"
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("data"), r"bad.json: \(top level\): missing field 'data'"),
        (lambda d: d["data"].pop("answers"), r"bad.json: data: missing field 'answers'"),
        (lambda d: d["data"]["dialogs"][1].pop("caption"),
         r"bad.json: data.dialogs\[1\]: missing field 'caption'"),
        (lambda d: d["data"]["dialogs"][0]["dialog"][2].pop("gt_index"),
         r"bad.json: data.dialogs\[0\].dialog\[2\]: missing field 'gt_index'"),
        (lambda d: d["data"]["dialogs"][0]["dialog"][2].update(question="7"),
         r"bad.json: data.dialogs\[0\].dialog\[2\].question: expected an integer, found str"),
        (lambda d: d["data"]["dialogs"][0].update(image_id=True),
         r"bad.json: data.dialogs\[0\].image_id: expected an integer, found bool"),
        (lambda d: d["data"]["dialogs"][0]["dialog"][1]["answer_options"].__setitem__(3, 10**6),
         r"data.dialogs\[0\].dialog\[1\].answer_options\[3\]: expected an integer in 0\.\.\d+"),
        (lambda d: d["data"]["dialogs"][0]["dialog"][0].update(gt_index=(
            d["data"]["dialogs"][0]["dialog"][0]["gt_index"] + 1) % 100),
         r"data.dialogs\[0\].dialog\[0\].gt_index: answer_options\[\d+\] is answer \d+, but"),
        (lambda d: d["data"]["answers"].__setitem__(0, 5), r"bad.json: data.answers\[0\]: "
         "expected a string, found int"),
        (lambda d: d["data"]["dialogs"][1]["dialog"].pop(), r"data.dialogs\[1\].dialog: "
         "expected 10 rounds as data.dialogs\\[0\\], found 9"),
        (lambda d: d["data"].update(dialogs=[]), r"data.dialogs: expected a non-empty list"),
        (lambda d: d["data"]["dialogs"][0].update(image_id=987654),
         r"data.dialogs\[0\].image_id: no image file for image_id 987654 in .*images"),
    ],
    ids=["no-data", "no-answers", "no-caption", "no-gt-index", "question-str", "id-bool",
         "option-range", "gt-mismatch", "answer-int", "short-dialog", "no-dialogs",
         "missing-image"],
)  # fmt: skip
def test_bad_visdial_files_are_one_line_errors_naming_file_and_json_path(
    dataset, tmp_path, change, message
):
    bad = _copy(dataset, tmp_path, change)
    with pytest.raises(DataError, match=message) as e:
        read_visdial(bad, dataset["val"].parent / "images")
    assert "\n" not in str(e.value)


def test_not_json_and_duplicate_keys_are_refused(dataset, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": {"questions": [], "questions": []}}')
    with pytest.raises(DataError, match="bad.json: questions: expected each key once"):
        read_visdial(bad, dataset["val"].parent / "images")
    bad.write_text("{")
    with pytest.raises(DataError, match=r"bad.json: not valid JSON \(line 1"):
        read_visdial(bad)
    with pytest.raises(DataError, match="no such VisDial file"):
        read_visdial(tmp_path / "none.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a[0].pop("gt_relevance"), r"dense.json: \[0\]: missing field 'gt_relevance'"),
        (lambda a: a[1].update(round_id=0), r"dense.json: \[1\].round_id: expected an integer "
         r"in 1\.\.10, found 0"),
        (lambda a: a[0]["gt_relevance"].pop(), r"\[0\].gt_relevance: expected 100 numbers, "
         "found 99"),
        (lambda a: a[0]["gt_relevance"].__setitem__(4, "x"), r"\[0\].gt_relevance\[4\]: "
         "expected a number >= 0, found 'x'"),
        (lambda a: a[2].update(image_id=5555), r"\[2\].image_id: 5555 has no dialog in"),
        (lambda a: a.append(dict(a[0])), r"\[4\]: image_id \d+ round_id \d+ annotated twice"),
    ],
    ids=["no-relevance", "round-0", "short", "string", "unknown-image", "twice"],
)  # fmt: skip
def test_bad_dense_annotations_are_one_line_errors(dataset, tmp_path, change, message):
    entries = json.loads(dataset["val_dense"].read_text())
    change(entries)
    dense = tmp_path / "dense.json"
    dense.write_text(json.dumps(entries))
    with pytest.raises(DataError, match=message):
        read_visdial(dataset["val"], dense=dense)


def test_images_are_found_by_trailing_id_in_visdial_and_coco_names(dataset, tmp_path):
    """VisDial's val/test images are VisualDialog_val2018_<12 digits>.jpg, its train images COCO's
    COCO_train2014_<12 digits>.jpg: both are found by id; two files of one id are refused."""
    from PIL import Image

    data = json.loads(dataset["val"].read_text())
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for k, d in enumerate(data["data"]["dialogs"]):
        name = (f"VisualDialog_val2018_{d['image_id']:012d}.jpg" if k % 2 else
                f"sub/COCO_train2014_{d['image_id']:012d}.jpg")  # fmt: skip
        Image.new("RGB", (8, 8)).save(folder / name)
    ds = read_visdial(dataset["val"], folder)
    assert [d.image.parent.name for d in ds.dialogs] == ["sub", "imgs", "sub", "imgs"]
    Image.new("RGB", (8, 8)).save(folder / f"{data['data']['dialogs'][0]['image_id']}.png")
    with pytest.raises(DataError, match="is also"):
        read_visdial(dataset["val"], folder)
