"""Sort-of-CLEVR questions as text (Santoro et al. 2017), written in the VQA v2 layout.

The scenes are ``rnnlab.data.scenes`` (75x75, six coloured squares/circles). The paper asks six
kinds of question about the object of a named colour, three about the object alone and three
about its relation to the others; it encodes a question as an 11-bit vector, rnnlab writes it as
words for the question RNN to read::

    non-relational  shape     what shape is the red object?                        square|circle
                    left      is the red object on the left?                       yes|no
                    top       is the red object on the top?                        yes|no
    relational      nearest   what shape is the object nearest to the red object?  square|circle
                    farthest  what shape is the object farthest from the red one?  square|circle
                    count     how many objects have the shape of the red object?   1..6

Question types are ``nonrel-shape`` ... ``rel-count`` (the prefix says which column of the
paper's table a question counts in); answer types follow VQA v2: ``yes/no``, ``number``,
``other``. Each image gets ``questions_per_image`` questions of each group, colour and kind drawn
at random (the paper: 10 and 10).

``write_sort_of_clevr`` writes, per split (``train``, ``val``, ``test``)::

    <out>/<split>/questions.json     {"data_subtype": "soc-<split>", "questions": [...]}
    <out>/<split>/annotations.json   {"annotations": [...]}   ten identical human answers
    <out>/<split>/images/COCO_soc-<split>_000000000000.png

which ``rnnlab.data.vqa.read_vqa_v2`` reads; the same seed gives the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnlab.data.scenes import COLOURS, Scene, random_scene, render_scene
from rnnlab.io import write_atomic

NON_RELATIONAL = ("shape", "left", "top")
RELATIONAL = ("nearest", "farthest", "count")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SceneQuestion:
    """A question about a scene: its text, answer, type (``nonrel-shape`` ... ``rel-count``),
    answer type (VQA v2's ``yes/no`` / ``number`` / ``other``) and whether it is relational."""

    question: str
    answer: str
    question_type: str
    answer_type: str
    relational: bool


def ask(scene: Scene, colour: str, kind: str) -> SceneQuestion:
    """The question of ``kind`` (one of NON_RELATIONAL + RELATIONAL) about the ``colour`` object.

    Raises ValueError for an unknown kind; KeyError for a colour the scene lacks."""
    o = scene.find(colour)
    if kind == "shape":
        text, answer = f"what shape is the {colour} object?", o.shape
    elif kind == "left":
        text, answer = f"is the {colour} object on the left?", _yes(scene.is_left(o))
    elif kind == "top":
        text, answer = f"is the {colour} object on the top?", _yes(scene.is_top(o))
    elif kind == "nearest":
        text = f"what shape is the object nearest to the {colour} object?"
        answer = scene.nearest(o).shape
    elif kind == "farthest":
        text = f"what shape is the object farthest from the {colour} object?"
        answer = scene.farthest(o).shape
    elif kind == "count":
        text = f"how many objects have the shape of the {colour} object?"
        answer = str(scene.count_same_shape(o))
    else:
        raise ValueError(f"kind: expected one of {NON_RELATIONAL + RELATIONAL}, got {kind!r}")
    relational = kind in RELATIONAL
    answer_type = "yes/no" if kind in ("left", "top") else "number" if kind == "count" else "other"
    return SceneQuestion(text, answer, f"{'rel' if relational else 'nonrel'}-{kind}", answer_type,
                         relational)  # fmt: skip


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def scene_questions(scene: Scene, rng: np.random.Generator, per_group: int) -> list[SceneQuestion]:
    """``per_group`` non-relational then ``per_group`` relational questions, colour and kind
    uniform at random."""
    colours = list(COLOURS)
    out = []
    for kinds in (NON_RELATIONAL, RELATIONAL):
        for _ in range(per_group):
            colour = colours[int(rng.integers(len(colours)))]
            out.append(ask(scene, colour, kinds[int(rng.integers(len(kinds)))]))
    return out


def write_sort_of_clevr(out_dir: str | Path, num_train: int = 9800, num_val: int = 200,
                        num_test: int = 200, questions_per_image: int = 10,
                        seed: int = 0) -> Path:  # fmt: skip
    """Write the three splits (module docstring) under ``out_dir``; returns ``out_dir``.
    Split k draws from ``numpy.random.default_rng([seed, k])``, so adding test images never
    changes the training set. Raises ValueError for a negative count or no training images."""
    from PIL import Image

    counts = {"train": num_train, "val": num_val, "test": num_test}
    if num_train < 1 or num_val < 0 or num_test < 0 or questions_per_image < 1:
        raise ValueError(f"sort-of-clevr: expected num_train >= 1, num_val, num_test >= 0 and "
                         f"questions_per_image >= 1, got {num_train}, {num_val}, {num_test}, "
                         f"{questions_per_image}")  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: not a folder; give a new folder for train/, val/ and test/")
    planned = []  # every split drawn first: an existing, different set is refused before writing
    for k, split in enumerate(SPLITS):
        if not counts[split]:
            continue
        rng = np.random.default_rng([seed, k])
        subtype = f"soc-{split}"
        scenes, questions, annotations = [], [], []
        for image_id in range(counts[split]):
            scene = random_scene(rng)
            scenes.append(scene)
            for q in scene_questions(scene, rng, questions_per_image):
                qid = len(questions)
                questions.append({"question_id": qid, "image_id": image_id,
                                  "question": q.question})  # fmt: skip
                annotations.append({
                    "question_id": qid, "image_id": image_id, "question_type": q.question_type,
                    "answer_type": q.answer_type, "multiple_choice_answer": q.answer,
                    "answers": [{"answer": q.answer, "answer_confidence": "yes",
                                 "answer_id": j + 1} for j in range(10)],
                })  # fmt: skip
        meta = {"data_type": "sort-of-clevr", "data_subtype": subtype}
        files = {"questions.json": json.dumps({**meta, "questions": questions}),
                 "annotations.json": json.dumps({**meta, "annotations": annotations})}  # fmt: skip
        for name, text in files.items():
            old = out / split / name
            if old.exists() and (not old.is_file() or old.read_bytes() != text.encode()):
                raise ValueError(f"{old}: a different data set is already there (its runs "
                                 "would no longer match it); give a new folder")  # fmt: skip
        planned.append((split, subtype, scenes, files))
    for split, subtype, scenes, files in planned:
        folder = out / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for image_id, scene in enumerate(scenes):
            name = f"COCO_{subtype}_{image_id:012d}.png"
            Image.fromarray(render_scene(scene)).save(folder / "images" / name)
        for name, text in files.items():
            write_atomic(folder / name, text)
    return out
