"""VQA data: the easy-vqa layout, the VQA v2 layout, questions as words, answers as classes.

Two on-disk layouts are read, each checked value by value; every problem is a DataError naming
the file and the JSON path (``questions.json: [12][1]``), and no question is dropped silently.

easy-vqa (Zhou 2020, the ``easy-vqa`` wheel's ``data/{train,test}``)::

    <split>/questions.json   [["what color is the shape?", "blue", 0], ...]   text, answer, image
    <split>/images/0.png     image ids index the PNGs: images/<id>.png

  It has no question or answer types; here the answer type is ``yes/no``, ``shape`` (circle,
  rectangle, triangle) or ``color``, and the question type is the question's template: its
  colour and shape words replaced by ``<color>`` / ``<shape>`` ("is there a <color> shape?").

VQA v2 (Goyal et al. 2017; the layout of VQA v1, Antol et al. 2015)::

    questions JSON    {"data_subtype": "val2014",
                       "questions": [{"question_id": 1, "image_id": 42, "question": "..."}]}
    annotations JSON  {"annotations": [{"question_id": 1, "image_id": 42,
                       "question_type": "what color is the", "answer_type": "other",
                       "multiple_choice_answer": "blue",
                       "answers": [{"answer": "blue", "answer_id": 1, ...}, ... 10 ...]}]}
    image file        <images>/COCO_<data_subtype>_<image_id as 12 digits>.jpg (or .png)

  Every question needs its annotation (same ``question_id`` and ``image_id``) and vice versa.
  The training target is ``multiple_choice_answer`` (the most common human answer); the ten
  human answers are kept for the official VQA accuracy (``rnnlab.metrics.vqa``).

The image folder defaults to ``images/`` beside the JSON when that folder exists, else the
JSON's own folder. Image files are read by ``rnnlab.data.images`` (pixel limit, colour modes)
into uint8 (3, S, S); a missing file is a DataError naming the file and the JSON path that
named it. Questions are lower-cased word tokens (``rnnlab.data.captions.tokenize``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.data.captions import tokenize
from rnnlab.data.errors import DataError
from rnnlab.data.images import load_image
from rnnlab.data.text import read_text
from rnnlab.data.vocab import Vocab
from rnnlab.strictjson import parse_json

QUESTION_SPECIALS = ("<pad>", "<unk>")
PAD, UNK = 0, 1
EASY_VQA_SHAPES = ("circle", "rectangle", "triangle")
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
MAX_JSON_BYTES = 2 << 30  # VQA v2's largest file is about 350 MB


@dataclass(frozen=True)
class VQAQuestion:
    """One question: its image (a row of ``VQADataset.images``), words, the answer to learn, the
    human answers to score against (one for easy-vqa, ten for VQA v2), its types, and ``where``
    the JSON path that holds it."""

    image: int
    question: str
    words: tuple[str, ...]
    answer: str
    human_answers: tuple[str, ...]
    question_type: str
    answer_type: str
    where: str


@dataclass(frozen=True)
class VQADataset:
    """A set of questions read and checked: ``images`` the distinct image files, in order of
    first mention, with the JSON path that first named each (``image_where``)."""

    source: Path
    layout: str  # "easy-vqa" | "vqa-v2"
    image_dir: Path
    images: tuple[Path, ...]
    image_where: tuple[str, ...]
    questions: tuple[VQAQuestion, ...]

    @property
    def has_human_answers(self) -> bool:
        """Whether the official VQA accuracy applies (VQA v2: ten answers per question)."""
        return self.layout == "vqa-v2"

    def subset(self, keep: Sequence[int]) -> VQADataset:
        """The questions at positions ``keep`` (the images stay, so rows keep their meaning)."""
        return VQADataset(self.source, self.layout, self.image_dir, self.images,
                          self.image_where, tuple(self.questions[i] for i in keep))  # fmt: skip


def read_vqa(
    data: str | Path, annotations: str | Path | None = None, images: str | Path | None = None
) -> VQADataset:
    """The easy-vqa layout (``data`` a split folder or its questions.json, no ``annotations``)
    or the VQA v2 layout (``data`` the questions JSON, ``annotations`` its annotations JSON). A
    folder holding ``annotations.json`` beside ``questions.json`` is read as VQA v2 (the layout
    ``rnnlab.data.sort_of_clevr`` writes)."""
    folder = Path(data)
    if folder.is_dir() and not annotations and (folder / "annotations.json").is_file():
        return read_vqa_v2(folder / "questions.json", folder / "annotations.json", images)
    if annotations:
        if folder.is_dir():
            folder = folder / "questions.json"
        return read_vqa_v2(folder, annotations, images)
    return read_easy_vqa(data, images)


def read_easy_vqa(path: str | Path, images: str | Path | None = None) -> VQADataset:
    """One split of easy-vqa: a folder holding ``questions.json`` and ``images/``, or the
    questions.json itself. Raises DataError naming the file and JSON path of a bad value."""
    path = Path(path)
    file = path / "questions.json" if path.is_dir() else path
    rows = _read_json(file, "questions")
    if not isinstance(rows, list):
        raise DataError(f"{file}: expected a list of [question, answer, image_id], "
                        f"found {_kind(rows)}")  # fmt: skip
    root = Path(images) if images else file.parent / "images"
    image_rows: dict[int, int] = {}
    paths: list[Path] = []
    wheres: list[str] = []
    questions = []
    for i, row in enumerate(rows):
        where = f"{file}: [{i}]"
        if not isinstance(row, list) or len(row) != 3:
            raise DataError(f"{where}: expected [question, answer, image_id], found {_show(row)}")
        text, answer, image_id = row
        words = _question_words(text, f"{where}[0]")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}[1]: expected the answer as a non-empty string, "
                            f"found {_show(answer)}")  # fmt: skip
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id < 0:
            raise DataError(f"{where}[2]: expected an image id (an integer >= 0), "
                            f"found {_show(image_id)}")  # fmt: skip
        if image_id not in image_rows:
            image_rows[image_id] = len(paths)
            paths.append(root / f"{image_id}.png")
            wheres.append(f"{where}[2]")
        answer = answer.strip().lower()
        questions.append(VQAQuestion(image_rows[image_id], text, words, answer, (answer,),
                                     easy_vqa_template(words), easy_vqa_answer_type(answer),
                                     where))  # fmt: skip
    if not questions:
        raise DataError(f"{file}: the question list is empty")
    return VQADataset(file, "easy-vqa", root, tuple(paths), tuple(wheres), tuple(questions))


def easy_vqa_template(words: Sequence[str]) -> str:
    """easy-vqa's question type: the question with colour and shape words replaced."""
    out = []
    for w in words:
        out.append("<color>" if w in EASY_VQA_COLORS else "<shape>" if w in EASY_VQA_SHAPES else w)
    return " ".join(out)


def easy_vqa_answer_type(answer: str) -> str:
    """``yes/no``, ``shape`` or ``color`` (easy-vqa ships no answer types)."""
    if answer in ("yes", "no"):
        return "yes/no"
    return "shape" if answer in EASY_VQA_SHAPES else "color"


def read_vqa_v2(
    questions_file: str | Path, annotations_file: str | Path, images: str | Path | None = None
) -> VQADataset:
    """A VQA v2 questions JSON with its annotations JSON (module docstring). Raises DataError
    naming the file and JSON path of a missing field, a wrong type, an unmatched question or
    annotation, or a duplicate id."""
    qfile, afile = Path(questions_file), Path(annotations_file)
    qdata = _read_json(qfile, "questions")
    adata = _read_json(afile, "annotations")
    if not isinstance(qdata, dict) or not isinstance(qdata.get("questions"), list):
        raise DataError(f'{qfile}: expected an object with a "questions" list (VQA v2 layout)')
    if not isinstance(adata, dict) or not isinstance(adata.get("annotations"), list):
        raise DataError(f'{afile}: expected an object with an "annotations" list (VQA v2 layout)')
    subtype = qdata.get("data_subtype")
    if not isinstance(subtype, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", subtype):
        raise DataError(f"{qfile}: data_subtype: expected the image set's name (letters, digits, "
                        f"- or _, e.g. val2014), found {_show(subtype)}")  # fmt: skip
    notes: dict[int, tuple[dict[str, Any], str]] = {}
    for i, note in enumerate(adata["annotations"]):
        where = f"{afile}: annotations[{i}]"
        if not isinstance(note, dict):
            raise DataError(f"{where}: expected an object, found {_kind(note)}")
        qid = _integer(note, "question_id", where)
        if qid in notes:
            raise DataError(f"{where}.question_id: {qid} is also {notes[qid][1].split(': ')[1]}")
        notes[qid] = (note, where)
    root = Path(images) if images else _default_images(qfile)
    image_rows: dict[int, int] = {}
    paths: list[Path] = []
    wheres: list[str] = []
    questions, seen = [], set()
    for i, entry in enumerate(qdata["questions"]):
        where = f"{qfile}: questions[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, found {_kind(entry)}")
        qid = _integer(entry, "question_id", where)
        image_id = _integer(entry, "image_id", where)
        words = _question_words(entry.get("question"), f"{where}.question")
        if qid in seen:
            raise DataError(f"{where}.question_id: {qid} appears twice")
        seen.add(qid)
        if qid not in notes:
            raise DataError(f"{where}.question_id: {qid} has no annotation in {afile}")
        note, at = notes[qid]
        if _integer(note, "image_id", at) != image_id:
            raise DataError(f"{at}.image_id: {note['image_id']} but the question "
                            f"({where}) is about image {image_id}")  # fmt: skip
        humans = note.get("answers")
        if not isinstance(humans, list) or not humans:
            raise DataError(f"{at}.answers: expected a non-empty list, found {_show(humans)}")
        human = tuple(_text(h, "answer", f"{at}.answers[{j}]") for j, h in enumerate(humans))
        answer = _text(note, "multiple_choice_answer", at)
        if not answer.strip():  # the training target: an answer-vocabulary token
            raise DataError(f"{at}.multiple_choice_answer: expected a non-empty answer, "
                            f"found {_show(answer)}")  # fmt: skip
        qtype = _text(note, "question_type", at)
        atype = _text(note, "answer_type", at)
        if image_id not in image_rows:
            image_rows[image_id] = len(paths)
            paths.append(_coco_image(root, subtype, image_id))
            wheres.append(f"{where}.image_id")
        questions.append(VQAQuestion(image_rows[image_id], entry["question"], words, answer,
                                     human, qtype, atype, where))  # fmt: skip
    extra = set(notes) - seen
    if extra:
        qid = min(extra)
        raise DataError(f"{notes[qid][1]}.question_id: {qid} has no question in {qfile}")
    if not questions:
        raise DataError(f"{qfile}: the questions list is empty")
    return VQADataset(qfile, "vqa-v2", root, tuple(paths), tuple(wheres), tuple(questions))


def _default_images(file: Path) -> Path:
    beside = file.parent / "images"
    return beside if beside.is_dir() else file.parent


def _coco_image(root: Path, subtype: str, image_id: int) -> Path:
    """COCO's name for an image; a ``.png`` of the same stem when there is no ``.jpg``."""
    jpg = root / f"COCO_{subtype}_{image_id:012d}.jpg"
    png = jpg.with_suffix(".png")
    return png if not jpg.exists() and png.exists() else jpg


def _read_json(file: Path, what: str) -> Any:
    """A JSON file read by the one bounded reader (a device or FIFO is refused by name) and the
    strict parser (duplicate keys, NaN, huge numbers and deep nesting are errors with a line)."""
    if not file.exists() and not file.is_symlink():
        raise DataError(f"{file}: no such {what} file")
    text = read_text(file, max_bytes=MAX_JSON_BYTES)
    return parse_json(text, str(file), error=DataError)


def _question_words(text: Any, where: str) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise DataError(f"{where}: expected the question as a string, found {_show(text)}")
    words = tuple(tokenize(text))
    if not words:
        raise DataError(f"{where}: the question has no words ({text!r})")
    return words


def _integer(entry: dict[str, Any], name: str, where: str) -> int:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        missing = "missing" if name not in entry else f"found {_show(value)}"
        raise DataError(f"{where}.{name}: expected an integer >= 0, {missing}")
    return value


def _text(entry: Any, name: str, where: str) -> str:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, found {_kind(entry)}")
    value = entry.get(name)
    if not isinstance(value, str):
        missing = "missing" if name not in entry else f"found {_show(value)}"
        raise DataError(f"{where}.{name}: expected a string, {missing}")
    return value


def _kind(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _show(x: Any) -> str:
    text = repr(x)
    return f"{_kind(x)} {text[:60]}{'...' if len(text) > 60 else ''}"


# -- vocabularies and encoding ---------------------------------------------------------------------


def build_vocabs(train: VQADataset, max_answers: int, min_count: int = 1) -> tuple[Vocab, Vocab]:
    """(question words: ``<pad>`` ``<unk>`` then words seen ``min_count`` times, most frequent
    first; answers: the ``max_answers`` most frequent training answers, no specials)."""
    words = Vocab.build((q.words for q in train.questions), QUESTION_SPECIALS, kind="words",
                        order="frequency", min_count=min_count)  # fmt: skip
    counts = Counter(q.answer for q in train.questions)
    top = sorted(counts, key=lambda a: (-counts[a], a))[:max_answers]
    answers = Vocab(top, 0, kind="symbols", counts=[counts[a] for a in top])
    return words, answers


@dataclass(frozen=True)
class EncodedQuestions:
    """Questions as ids (word ids (N, T) padded with ``<pad>``, lengths (N,)), image rows (N,),
    answer classes (N,) (-1 where the answer is outside the answer vocabulary) and how many
    questions were cut to the length cap."""

    ids: np.ndarray
    lengths: np.ndarray
    image_rows: np.ndarray
    answers: np.ndarray
    truncated: int


def encode_questions(data: VQADataset, words: Vocab, answers: Vocab,
                     max_length: int) -> EncodedQuestions:  # fmt: skip
    """Every question of ``data``, its words cut to ``max_length`` (unseen words: ``<unk>``)."""
    n = len(data.questions)
    ids = np.zeros((n, max_length), dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    truncated = 0
    index = {a: i for i, a in enumerate(answers.tokens)}
    for i, q in enumerate(data.questions):
        row = words.encode(q.words, "replace")[:max_length]
        truncated += len(q.words) > max_length
        ids[i, : len(row)] = row
        lengths[i] = len(row)
    rows = np.array([q.image for q in data.questions], dtype=np.int64)
    classes = np.array([index.get(q.answer, -1) for q in data.questions], dtype=np.int64)
    return EncodedQuestions(ids, lengths, rows, classes, truncated)


def load_vqa_images(data: VQADataset, size: int) -> np.ndarray:
    """The dataset's images as uint8 (N, 3, size, size). A missing or unreadable file is a
    DataError naming it and the JSON path that named it (and how many others are missing)."""
    missing = [i for i, p in enumerate(data.images) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        i = missing[0]
        raise DataError(f"{data.image_where[i]}: no such image file {data.images[i]}{more}")
    out = np.empty((len(data.images), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(data.images):
        out[i] = load_image(path, size, data.image_where[i])
    return out
