"""Visual dialog data: the VisDial v1.0 JSON layout (Das et al. 2017), its images, its dense
relevance annotations, and dialogs as tensors.

One split per file, as VisDial releases them (``visdial_1.0_val.json``)::

    {"version": "1.0", "split": "val",
     "data": {"questions": ["what colour is it", ...],           # the split's distinct questions
              "answers":   ["red", ...],                         # and answers
              "dialogs": [{"image_id": 185565, "caption": "a man riding a horse",
                           "dialog": [{"question": 12,           # index into questions
                                       "answer": 40,             # index into answers
                                       "answer_options": [...],  # N indices (100 in VisDial)
                                       "gt_index": 7},           # answer_options[7] == answer
                                      ...]},                     # 10 rounds
                          ...]}}

Dense annotations (``visdial_1.0_val_dense_annotations.json``, for NDCG): a list of
``{"image_id", "round_id" (1-based), "gt_relevance": [N numbers]}``, one round per dialog.

Images are found by id in the image folder (default: ``images/`` beside the JSON, else the JSON's
folder; sub-folders are searched too): a file whose name, without extension, ends in the id,
zero-padded or not (``VisualDialog_val2018_000000185565.jpg``, ``COCO_train2014_000000185565.jpg``,
``185565.png``). Rounds may carry ``coref_distance`` (the synthetic set's; absent in VisDial).

Every problem is a DataError naming the file and the JSON path of the bad value
(``visdial_1.0_val.json: data.dialogs[3].dialog[2].gt_index: expected ...``). Every dialog of a
file has the same number of rounds and every round the same number of options (as in VisDial's
train and val; its test split, with one unanswered round, is not read).

Token ids are the captioning vocabulary's (``<pad>`` 0, ``<start>`` 1, ``<end>`` 2, ``<unk>`` 3);
words come from ``rnnlab.data.captions.tokenize``; a question or answer of punctuation only (it
has no words) is one ``<unk>``. Shapes: D dialogs, R rounds, N options,
A answers, Q questions, T tokens.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.data.captions import END, PAD, START, UNK, CaptionVocab, tokenize
from rnnlab.data.errors import DataError
from rnnlab.data.images import inside_folder, load_image
from rnnlab.strictjson import parse_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_ROUNDS = 100
_TRAILING_ID = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class DialogRound:
    """One round: indices into the split's questions and answers, the options and the ground
    truth's position among them, and the coreference distance (None: not given)."""

    question: int
    answer: int
    options: tuple[int, ...]
    gt_index: int
    coref_distance: int | None = None


@dataclass(frozen=True)
class Dialog:
    """One image's dialog; ``where`` is its JSON path (``file: data.dialogs[3]``)."""

    image_id: int
    caption: tuple[str, ...]
    rounds: tuple[DialogRound, ...]
    image: Path
    where: str


@dataclass(frozen=True)
class VisDialDataset:
    """A VisDial file read and checked. ``relevance`` maps (dialog position, round 0-based) to
    the options' relevance (N,), from the dense annotations when given."""

    source: Path
    split: str
    image_dir: Path
    questions: tuple[tuple[str, ...], ...]
    answers: tuple[tuple[str, ...], ...]
    dialogs: tuple[Dialog, ...]
    relevance: dict[tuple[int, int], tuple[float, ...]]
    dense_source: Path | None = None

    @property
    def num_rounds(self) -> int:
        return len(self.dialogs[0].rounds)

    @property
    def num_options(self) -> int:
        return len(self.dialogs[0].rounds[0].options)


def _kind(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _read(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    return parse_json(data, str(path), error=DataError)


def _int(x: Any, where: str, low: int = 0, high: int | None = None) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise DataError(f"{where}: expected an integer, found {_kind(x)}")
    if x < low or (high is not None and x > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise DataError(f"{where}: expected an integer in {span}, found {x}")
    return x


def _field(obj: dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    return obj[key]


def _texts(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: expected a list of strings, found {_kind(value)}")
    out = []
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise DataError(f"{where}[{i}]: expected a string, found {_kind(text)}")
        out.append(tuple(tokenize(text)))
    return tuple(out)


def read_visdial(
    path: str | Path, image_dir: str | Path | None = None, dense: str | Path | None = None
) -> VisDialDataset:
    """Read and check a VisDial v1.0 file, find every dialog's image, and read the dense
    relevance file ``dense`` if given. Raises DataError naming the file and JSON path."""
    path = Path(path)
    top = _read(path, "VisDial file")
    if not isinstance(top, dict):
        raise DataError(f"{path}: (top level): expected an object, found {_kind(top)}")
    split = top.get("split", "")
    if not isinstance(split, str):
        raise DataError(f"{path}: split: expected a string, found {_kind(split)}")
    data = _field(top, "data", f"{path}: (top level)")
    if not isinstance(data, dict):
        raise DataError(f"{path}: data: expected an object, found {_kind(data)}")
    questions = _texts(_field(data, "questions", f"{path}: data"), f"{path}: data.questions")
    answers = _texts(_field(data, "answers", f"{path}: data"), f"{path}: data.answers")
    raw = _field(data, "dialogs", f"{path}: data")
    if not isinstance(raw, list) or not raw:
        raise DataError(
            f"{path}: data.dialogs: expected a non-empty list, found "
            f"{_kind(raw) if not isinstance(raw, list) else 'an empty list'}"
        )
    root = (
        Path(image_dir)
        if image_dir
        else (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    )
    images = index_images(root)
    dialogs: list[Dialog] = []
    seen: dict[int, int] = {}
    shape: tuple[int, int] | None = None
    for d, entry in enumerate(raw):
        where = f"{path}: data.dialogs[{d}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, found {_kind(entry)}")
        image_id = _int(_field(entry, "image_id", where), f"{where}.image_id")
        if image_id in seen:
            raise DataError(f"{where}.image_id: {image_id} is also data.dialogs[{seen[image_id]}]")
        seen[image_id] = d
        text = _field(entry, "caption", where)
        if not isinstance(text, str) or not tokenize(text):
            raise DataError(f"{where}.caption: expected a caption with words, found {text!r:.60}")
        rounds = _field(entry, "dialog", where)
        if not isinstance(rounds, list) or not 1 <= len(rounds) <= MAX_ROUNDS:
            raise DataError(
                f"{where}.dialog: expected a list of 1..{MAX_ROUNDS} rounds, found "
                f"{_kind(rounds) if not isinstance(rounds, list) else len(rounds)}"
            )
        parsed = tuple(
            _round(r, f"{where}.dialog[{i}]", len(questions), len(answers))
            for i, r in enumerate(rounds)
        )
        this = (len(parsed), len(parsed[0].options))
        if shape is None:
            shape = this
        for i, r in enumerate(parsed):
            if len(r.options) != shape[1]:
                raise DataError(
                    f"{where}.dialog[{i}].answer_options: expected {shape[1]} options "
                    f"as data.dialogs[0].dialog[0], found {len(r.options)}"
                )
        if this[0] != shape[0]:
            raise DataError(
                f"{where}.dialog: expected {shape[0]} rounds as data.dialogs[0], found {this[0]}"
            )
        if image_id not in images:
            raise DataError(
                f"{where}.image_id: no image file for image_id {image_id} in {root} "
                f"(expected a name ending in {image_id:012d} or {image_id}, e.g. "
                f"VisualDialog_val2018_{image_id:012d}.jpg); give --images FOLDER"
            )
        file = images[image_id]
        if not inside_folder(file, root):
            raise DataError(f"{where}.image_id: {file} leads outside the image folder {root}")
        dialogs.append(Dialog(image_id, tuple(tokenize(text)), parsed, file, where))
    dataset = VisDialDataset(path, split, root, questions, answers, tuple(dialogs), {})
    if dense is not None:
        relevance = read_dense(dense, dataset)
        dataset = VisDialDataset(
            path, split, root, questions, answers, tuple(dialogs), relevance, Path(dense)
        )
    return dataset


def _round(r: Any, where: str, num_questions: int, num_answers: int) -> DialogRound:
    if not isinstance(r, dict):
        raise DataError(f"{where}: expected an object, found {_kind(r)}")
    q = _int(_field(r, "question", where), f"{where}.question", 0, num_questions - 1)
    a = _int(_field(r, "answer", where), f"{where}.answer", 0, num_answers - 1)
    options = _field(r, "answer_options", where)
    if not isinstance(options, list) or not options:
        raise DataError(
            f"{where}.answer_options: expected a non-empty list of answer indices, "
            f"found {_kind(options)}"
        )
    opts = tuple(
        _int(o, f"{where}.answer_options[{j}]", 0, num_answers - 1) for j, o in enumerate(options)
    )
    gt = _int(_field(r, "gt_index", where), f"{where}.gt_index", 0, len(opts) - 1)
    if opts[gt] != a:
        raise DataError(
            f"{where}.gt_index: answer_options[{gt}] is answer {opts[gt]}, but the "
            f"round's answer is {a}"
        )
    coref = r.get("coref_distance")
    if coref is not None:
        coref = _int(coref, f"{where}.coref_distance", 0, MAX_ROUNDS)
    return DialogRound(q, a, opts, gt, coref)


def index_images(root: Path) -> dict[int, Path]:
    """image_id -> file for every image file under ``root`` whose name ends in digits. Raises
    DataError for a missing folder or two files of one id."""
    if not root.is_dir():
        raise DataError(f"{root}: no such image folder; give --images FOLDER")
    found: dict[int, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            match = _TRAILING_ID.search(stem)
            if suffix.lower() not in IMAGE_SUFFIXES or not match:
                continue
            file = Path(folder) / name
            key = int(match.group(1))
            if key in found:
                raise DataError(
                    f"{file}: image_id {key} is also {found[key]}; keep one file per "
                    "image id in the image folder"
                )
            found[key] = file
    return found


def read_dense(
    path: str | Path, dataset: VisDialDataset
) -> dict[tuple[int, int], tuple[float, ...]]:
    """The dense relevance file, checked against ``dataset``: (dialog position, round) ->
    relevance (N,). Raises DataError naming the file and JSON path."""
    path = Path(path)
    entries = _read(path, "dense annotation file")
    if not isinstance(entries, list) or not entries:
        raise DataError(
            f"{path}: (top level): expected a non-empty list of annotations, found {_kind(entries)}"
        )
    position = {d.image_id: i for i, d in enumerate(dataset.dialogs)}
    out: dict[tuple[int, int], tuple[float, ...]] = {}
    for k, e in enumerate(entries):
        where = f"{path}: [{k}]"
        if not isinstance(e, dict):
            raise DataError(f"{where}: expected an object, found {_kind(e)}")
        image_id = _int(_field(e, "image_id", where), f"{where}.image_id")
        if image_id not in position:
            raise DataError(f"{where}.image_id: {image_id} has no dialog in {dataset.source}")
        round_id = _int(_field(e, "round_id", where), f"{where}.round_id", 1, dataset.num_rounds)
        rel = _field(e, "gt_relevance", where)
        if not isinstance(rel, list) or len(rel) != dataset.num_options:
            raise DataError(
                f"{where}.gt_relevance: expected {dataset.num_options} numbers, found "
                f"{len(rel) if isinstance(rel, list) else _kind(rel)}"
            )
        for j, v in enumerate(rel):
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise DataError(f"{where}.gt_relevance[{j}]: expected a number >= 0, found {v!r}")
        if not any(rel):
            raise DataError(f"{where}.gt_relevance: every value is 0; NDCG needs a relevant one")
        key = (position[image_id], round_id - 1)
        if key in out:
            raise DataError(f"{where}: image_id {image_id} round_id {round_id} annotated twice")
        out[key] = tuple(float(v) for v in rel)
    return out


def dialog_words(dataset: VisDialDataset) -> list[tuple[str, ...]]:
    """Every caption, question and answer used by the dialogs (for building a vocabulary)."""
    used_q = {r.question for d in dataset.dialogs for r in d.rounds}
    used_a = {o for d in dataset.dialogs for r in d.rounds for o in r.options}
    return (
        [d.caption for d in dataset.dialogs]
        + [dataset.questions[i] for i in sorted(used_q)]
        + [dataset.answers[i] for i in sorted(used_a)]
    )


# -- tensors --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedDialogs:
    """A split as arrays (numpy int64 unless said):

    questions (D, R, Tq), question_lengths (D, R)     question words
    facts (D, R, Tf), fact_lengths (D, R)             history items: fact 0 is the caption, fact
                                                      t + 1 the words of q_t a_t (rounds from 0);
                                                      round t's history is facts 0..t
    answers (A, Ta + 2)                               every answer, <start> words <end> <pad>..
    options (D, R, N), gt_index (D, R)                answer rows of the options, the truth's place
    coref (D, R)                                      coreference distance (-1: not given)
    relevance (D, R, N) float32                       NaN where not annotated
    truncated                                         texts cut to max_length (reported, not hidden)
    """

    questions: np.ndarray
    question_lengths: np.ndarray
    facts: np.ndarray
    fact_lengths: np.ndarray
    answers: np.ndarray
    options: np.ndarray
    gt_index: np.ndarray
    coref: np.ndarray
    relevance: np.ndarray
    truncated: int


def _pad(rows: Sequence[list[int]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def encode_dialogs(dataset: VisDialDataset, vocab: CaptionVocab, max_length: int) -> EncodedDialogs:
    """The dataset's dialogs as arrays (see :class:`EncodedDialogs`); every text is cut to
    ``max_length`` words (a fact, question plus answer, to twice that)."""
    if max_length < 1:
        raise ValueError(f"max_length: expected >= 1, got {max_length}")
    cut = 0

    def ids(words: Sequence[str], limit: int) -> list[int]:
        nonlocal cut
        cut += len(words) > limit
        return vocab.encode(list(words[:limit])) or [UNK]  # punctuation only: one <unk>

    D, R, N = len(dataset.dialogs), dataset.num_rounds, dataset.num_options
    q_rows, f_rows = [], []
    for d in dataset.dialogs:
        q_rows += [ids(dataset.questions[r.question], max_length) for r in d.rounds]
        f_rows.append(ids(d.caption, 2 * max_length))
        f_rows += [
            ids(dataset.questions[r.question] + dataset.answers[r.answer], 2 * max_length)
            for r in d.rounds[:-1]
        ]
    answers = [[START, *ids(a, max_length), END] for a in dataset.answers]
    relevance = np.full((D, R, N), np.nan, dtype=np.float32)
    for (d, r), rel in dataset.relevance.items():
        relevance[d, r] = rel
    return EncodedDialogs(
        questions=_pad(q_rows, max(map(len, q_rows))).reshape(D, R, -1),
        question_lengths=np.array([len(r) for r in q_rows], dtype=np.int64).reshape(D, R),
        facts=_pad(f_rows, max(map(len, f_rows))).reshape(D, R, -1),
        fact_lengths=np.array([len(r) for r in f_rows], dtype=np.int64).reshape(D, R),
        answers=_pad(answers, max(map(len, answers))),
        options=np.array([[r.options for r in d.rounds] for d in dataset.dialogs], dtype=np.int64),
        gt_index=np.array([[r.gt_index for r in d.rounds] for d in dataset.dialogs], np.int64),
        coref=np.array(
            [
                [-1 if r.coref_distance is None else r.coref_distance for r in d.rounds]
                for d in dataset.dialogs
            ],
            dtype=np.int64,
        ),
        relevance=relevance,
        truncated=cut,
    )


def load_dialog_images(dataset: VisDialDataset, size: int) -> np.ndarray:
    """Every dialog's image as uint8 (D, 3, size, size); errors name the dialog's JSON path."""
    out = np.empty((len(dataset.dialogs), 3, size, size), dtype=np.uint8)
    for i, d in enumerate(dataset.dialogs):
        out[i] = load_image(d.image, size, f"{d.where}.image_id")
    return out
