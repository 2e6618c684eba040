"""rnnlab.data.vqa, .sort_of_clevr and .easy_vqa on files the tests write: the two layouts read
back, and every bad input is one line naming the file and the JSON path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rnnlab.data.errors import DataError
from rnnlab.data.scenes import Scene, SceneObject
from rnnlab.data.sort_of_clevr import ask, write_sort_of_clevr
from rnnlab.data.vqa import (
    build_vocabs,
    encode_questions,
    load_vqa_images,
    read_easy_vqa,
    read_vqa,
    read_vqa_v2,
)

pytestmark = pytest.mark.usefixtures("cache_env")


def png(path: Path, colour: tuple[int, int, int] = (255, 0, 0), side: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), colour, dtype=np.uint8)).save(path)


def easy(root: Path, rows: Any, images: tuple[int, ...] = (0, 1)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "questions.json").write_text(json.dumps(rows))
    for i in images:
        png(root / "images" / f"{i}.png", (255, 0, 0) if i % 2 else (0, 0, 255))
    return root


ROWS = [["What color is the shape?", "Blue", 0], ["is there a red circle?", "no", 0],
        ["what shape is present?", "circle", 1]]  # fmt: skip


def test_easy_vqa_layout(tmp_path: Path) -> None:
    data = read_easy_vqa(easy(tmp_path / "train", ROWS))
    assert data.layout == "easy-vqa" and len(data.images) == 2
    q = data.questions[0]
    assert q.words == ("what", "color", "is", "the", "shape") and q.answer == "blue"
    assert q.answer_type == "color" and q.question_type == "what color is the shape"
    assert data.questions[1].question_type == "is there a <color> <shape>"
    assert data.questions[1].answer_type == "yes/no"
    assert data.questions[2].answer_type == "shape" and data.questions[2].image == 1
    pixels = load_vqa_images(data, 8)
    assert pixels.shape == (2, 3, 8, 8) and pixels[0, 2, 0, 0] == 255  # image 0 is blue
    assert read_vqa(tmp_path / "train" / "questions.json").questions == data.questions


@pytest.mark.parametrize(("rows", "where", "what"), [
    ({"a": 1}, "questions.json:", "expected a list"),
    ([["q?", "a", 0], ["q?", "a"]], "questions.json: [1]", "expected [question, answer"),
    ([[3, "a", 0]], "questions.json: [0][0]", "expected the question as a string"),
    ([["?!", "a", 0]], "questions.json: [0][0]", "no words"),
    ([["q?", None, 0]], "questions.json: [0][1]", "expected the answer"),
    ([["q?", "a", "0"]], "questions.json: [0][2]", "expected an image id"),
    ([["q?", "a", -1]], "questions.json: [0][2]", "expected an image id"),
    ([["q?", "a", True]], "questions.json: [0][2]", "expected an image id"),
    ([], "questions.json:", "empty"),
])  # fmt: skip
def test_easy_vqa_errors(tmp_path: Path, rows: Any, where: str, what: str) -> None:
    with pytest.raises(DataError) as err:
        read_easy_vqa(easy(tmp_path, rows))
    msg = str(err.value)
    assert where in msg and what in msg and "\n" not in msg


def test_easy_vqa_missing_image_and_file(tmp_path: Path) -> None:
    data = read_easy_vqa(easy(tmp_path / "a", [*ROWS, ["q?", "no", 7]]))
    with pytest.raises(DataError, match=r"questions.json: \[3\]\[2\]: no such image file .*7.png"):
        load_vqa_images(data, 8)
    with pytest.raises(DataError, match="no such questions file"):
        read_easy_vqa(tmp_path / "none")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "questions.json").write_text('[["q", "a", 0], ')
    with pytest.raises(DataError, match="questions.json"):
        read_easy_vqa(tmp_path / "bad")


def v2(root: Path, questions: Any = None, annotations: Any = None,
       subtype: Any = "val2014") -> tuple[Path, Path]:  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    if questions is None:
        questions = [{"question_id": 10, "image_id": 5, "question": "What colour is it?"},
                     {"question_id": 11, "image_id": 6, "question": "Is it red?"}]  # fmt: skip
    if annotations is None:
        annotations = [
            {"question_id": 10, "image_id": 5, "question_type": "what color is",
             "answer_type": "other", "multiple_choice_answer": "red",
             "answers": [{"answer": "red", "answer_id": j} for j in range(10)]},
            {"question_id": 11, "image_id": 6, "question_type": "is it",
             "answer_type": "yes/no", "multiple_choice_answer": "yes",
             "answers": [{"answer": a, "answer_id": j}
                         for j, a in enumerate(["yes"] * 7 + ["no"] * 3)]},
        ]  # fmt: skip
    q = {"questions": questions} if subtype is None else {"data_subtype": subtype,
                                                          "questions": questions}  # fmt: skip
    (root / "q.json").write_text(json.dumps(q))
    (root / "a.json").write_text(json.dumps({"annotations": annotations}))
    png(root / "images" / "COCO_val2014_000000000005.jpg")
    png(root / "images" / "COCO_val2014_000000000006.png")  # a PNG where there is no .jpg
    return root / "q.json", root / "a.json"


def test_vqa_v2_layout(tmp_path: Path) -> None:
    data = read_vqa_v2(*v2(tmp_path))
    assert data.layout == "vqa-v2" and data.has_human_answers
    assert [p.name for p in data.images] == ["COCO_val2014_000000000005.jpg",
                                             "COCO_val2014_000000000006.png"]  # fmt: skip
    q = data.questions[1]
    assert q.answer == "yes" and q.human_answers.count("no") == 3 and q.answer_type == "yes/no"
    assert load_vqa_images(data, 8).shape == (2, 3, 8, 8)
    assert read_vqa(*v2(tmp_path / "b")).questions[0].words == ("what", "colour", "is", "it")


def _note(**changes: Any) -> dict[str, Any]:
    note = {"question_id": 10, "image_id": 5, "question_type": "what", "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": [{"answer": "red", "answer_id": 1}]}  # fmt: skip
    note.update(changes)
    return {k: v for k, v in note.items() if v is not ...}


Q = [{"question_id": 10, "image_id": 5, "question": "what?"}]


@pytest.mark.parametrize(("questions", "annotations", "subtype", "where", "what"), [
    (Q, [_note(question_id=...)], "v", "a.json: annotations[0].question_id", "missing"),
    (Q, [_note(question_id="10")], "v", "a.json: annotations[0].question_id", "found str"),
    (Q, [_note(answers=...)], "v", "a.json: annotations[0].answers", "non-empty list"),
    (Q, [_note(answers=[{"answer": 3}])], "v", "a.json: annotations[0].answers[0].answer",
     "expected a string"),
    (Q, [_note(answer_type=None)], "v", "a.json: annotations[0].answer_type", "found null"),
    (Q, [_note(multiple_choice_answer=...)], "v", "annotations[0].multiple_choice_answer",
     "missing"),
    (Q, [_note(multiple_choice_answer=" ")], "v", "annotations[0].multiple_choice_answer",
     "non-empty answer"),
    (Q, [_note(image_id=6)], "v", "a.json: annotations[0].image_id", "about image 5"),
    (Q, [_note(), _note()], "v", "a.json: annotations[1].question_id", "annotations[0]"),
    (Q, [_note(), _note(question_id=99)], "v", "annotations[1].question_id",
     "no question in"),
    ([{"question_id": 10, "image_id": 5}], [_note()], "v", "q.json: questions[0].question",
     "found null"),
    ([{"question_id": 10, "image_id": 5.5, "question": "q"}], [_note()], "v",
     "q.json: questions[0].image_id", "found float"),
    ([*Q, {"question_id": 12, "image_id": 5, "question": "q"}], [_note()], "v",
     "q.json: questions[1].question_id", "has no annotation"),
    ([*Q, *Q], [_note()], "v", "q.json: questions[1].question_id", "appears twice"),
    (Q, [_note()], None, "q.json: data_subtype", "found null"),
    (Q, [_note()], "../x", "q.json: data_subtype", "found str"),
    ("x", [_note()], "v", "q.json:", '"questions" list'),
])  # fmt: skip
def test_vqa_v2_errors(tmp_path: Path, questions: Any, annotations: Any, subtype: Any,
                       where: str, what: str) -> None:  # fmt: skip
    with pytest.raises(DataError) as err:
        read_vqa_v2(*v2(tmp_path, questions, annotations, subtype))
    msg = str(err.value)
    assert where in msg and what in msg and "\n" not in msg, msg


def test_vqa_v2_missing_image(tmp_path: Path) -> None:
    q, a = v2(tmp_path)
    data = read_vqa_v2(q, a)
    (tmp_path / "images" / "COCO_val2014_000000000005.jpg").unlink()
    with pytest.raises(DataError) as err:
        load_vqa_images(data, 8)
    msg = str(err.value)
    assert "q.json: questions[0].image_id" in msg and "COCO_val2014_000000000005.jpg" in msg
    assert "\n" not in msg


def test_vocabularies_and_encoding(tmp_path: Path) -> None:
    data = read_easy_vqa(easy(tmp_path, ROWS * 2 + [["what is the colour?", "red", 1]]))
    words, answers = build_vocabs(data, max_answers=3)
    assert words.tokens[:2] == ["<pad>", "<unk>"]
    assert answers.tokens == ["blue", "circle", "no"]  # most frequent, ties alphabetical
    enc = encode_questions(data, words, answers, max_length=4)
    assert enc.truncated == 4 and enc.lengths.tolist() == [4, 4, 4, 4, 4, 4, 4]
    assert enc.answers.tolist() == [0, 2, 1, 0, 2, 1, -1]  # "red": outside the 3 kept
    assert words.tokens[enc.ids[0, 0]] == "what" and enc.image_rows.tolist()[-1] == 1


def test_sort_of_clevr_questions() -> None:
    objects = (SceneObject("red", "circle", 10, 10), SceneObject("green", "square", 60, 12),
               SceneObject("blue", "square", 14, 60), SceneObject("orange", "circle", 62, 64),
               SceneObject("gray", "square", 30, 40),
               SceneObject("yellow", "square", 50, 40))  # fmt: skip
    scene = Scene(objects)
    assert ask(scene, "red", "shape").answer == "circle"
    assert ask(scene, "red", "left").answer == "yes" and ask(scene, "green", "left").answer == "no"
    assert ask(scene, "blue", "top").answer == "no"
    assert ask(scene, "red", "nearest").answer == "square"  # gray at distance 36
    assert ask(scene, "red", "farthest").answer == "circle"  # orange
    count = ask(scene, "green", "count")
    assert count.answer == "4" and count.relational and count.question_type == "rel-count"
    assert count.answer_type == "number" and ask(scene, "red", "top").answer_type == "yes/no"
    with pytest.raises(ValueError, match="kind"):
        ask(scene, "red", "size")


def test_sort_of_clevr_files_read_back_and_are_deterministic(tmp_path: Path) -> None:
    write_sort_of_clevr(tmp_path / "a", 3, 1, 0, questions_per_image=2, seed=4)
    write_sort_of_clevr(tmp_path / "b", 3, 1, 0, questions_per_image=2, seed=4)
    for name in ("questions.json", "annotations.json", "images/COCO_soc-train_000000000002.png"):
        assert (tmp_path / "a/train" / name).read_bytes() == (
            tmp_path / "b/train" / name
        ).read_bytes()
    assert not (tmp_path / "a" / "test").exists()
    data = read_vqa(tmp_path / "a" / "train")  # a folder with annotations.json: VQA v2
    assert data.layout == "vqa-v2" and len(data.questions) == 12 and len(data.images) == 3
    kinds = [q.question_type.split("-")[0] for q in data.questions[:4]]
    assert kinds == ["nonrel", "nonrel", "rel", "rel"]
    assert load_vqa_images(data, 75).shape == (3, 3, 75, 75)
    write_sort_of_clevr(tmp_path / "c", 3, 1, 0, questions_per_image=2, seed=5)
    assert (tmp_path / "c/train/questions.json").read_bytes() != (
        tmp_path / "a/train/questions.json").read_bytes()  # fmt: skip


def test_easy_vqa_from_a_wheel(tmp_path: Path) -> None:
    """A small wheel in the package's layout: extracted, read; a wrong sha256 is refused."""
    import zipfile

    from rnnlab.data import easy_vqa

    wheel = tmp_path / easy_vqa.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("easy_vqa/data/train/questions.json", json.dumps(ROWS))
        z.writestr("easy_vqa/data/../../evil.txt", "x")
        z.writestr("easy_vqa/data/.DS_Store", "x")
        z.writestr("easy_vqa/__init__.py", "")
    with pytest.raises(DataError, match="sha256 .* is not"):
        easy_vqa.easy_vqa_root(tmp_path / "cache", wheel)
    import hashlib

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    original = easy_vqa.WHEEL_SHA256
    easy_vqa.WHEEL_SHA256 = digest
    try:
        root = easy_vqa.easy_vqa_root(tmp_path / "cache", wheel)
    finally:
        easy_vqa.WHEEL_SHA256 = original
    assert root == tmp_path / "cache" / "data"
    assert read_easy_vqa(root / "train").questions[0].answer == "blue"
    assert not (tmp_path / "evil.txt").exists() and not (root / ".DS_Store").exists()


def test_the_real_easy_vqa_wheel_if_present(tmp_path: Path) -> None:
    """The published wheel, when a copy is in the user's cache (no network in tests)."""
    from rnnlab.data import easy_vqa

    home = Path.home() / ".cache" / "rnnlab" / "easy-vqa" / easy_vqa.WHEEL_NAME
    if not home.is_file():
        pytest.skip(f"no local copy of {easy_vqa.WHEEL_NAME} at {home}")
    copy = tmp_path / easy_vqa.WHEEL_NAME
    shutil.copy(home, copy)
    root = easy_vqa.easy_vqa_root(tmp_path / "cache", copy)
    train, test = read_easy_vqa(root / "train"), read_easy_vqa(root / "test")
    assert (len(train.questions), len(train.images)) == (38575, 4000)
    assert (len(test.questions), len(test.images)) == (9673, 1000)
    _, answers = build_vocabs(train, 1000)
    assert len(answers) == 13
    assert load_vqa_images(test.subset([0]), 64).shape == (1000, 3, 64, 64)
