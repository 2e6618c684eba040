"""Synthetic visual dialogs over Sort-of-CLEVR scenes, in the spirit of CLEVR-Dialog (Kottur et al.
2019, "CLEVR-Dialog: A Diagnostic Dataset for Multi-Round Reasoning in Visual Dialog"), written in
the VisDial v1.0 layout so that one reader (``rnnlab.data.visdial``) reads them and real VisDial.

A dialog is a caption and ``ROUNDS`` rounds about one scene (``rnnlab.data.scenes``). The dialog
keeps a *focus*, the object "it" refers to. A round asks one of:

    names an object (sets the focus)
        what shape is the red object?         the red one is a square
        where is the red object?              the red square is at the top left
        what is nearest to the red object?    the blue circle is nearest
    refers back ("it" = the focus)
        what shape is it?                     the red one is a square
        where is it?                          the red square is at the top left
        what is nearest to it?                the blue circle is nearest    (focus -> blue)
        and the one farthest from it?         the gray square is farthest   (focus -> gray)
        how many objects share its shape?     3 squares
        how many objects are left of it?      2 to its left
    names nothing (focus kept)
        how many circles are there?           4 circles

The caption ("there are 2 squares and 4 circles") names no object, so a back-referring question
cannot be answered from the image and the question alone: the referent was named only in an
earlier question or answer. Each round records its *coreference distance*, the number of rounds
back to where its referent was last named (0: the question names its own object or none), as
CLEVR-Dialog tags its questions.

Every answer names what it is about, so the candidates of a round include the same kind of answer
about every other object; a model that does not know the referent cannot tell them apart.

Candidates: 100 per round, built as VisDial builds them (Das et al. 2017, sec. 4): the ground
truth, answers to similar questions (the same question kind about other objects and values), the
most popular answers of the split, then random answers of the pool, shuffled; ``gt_index`` is the
ground truth's position. Dense relevance (VisDial's ``gt_relevance`` for NDCG), one round per
dialog: 1 for the ground truth, 0.5 for another candidate that is true of the image (a shape,
position or count statement), 0 otherwise.

Files written (VisDial v1.0 names; each JSON is ``{"version", "split", "data": {"questions",
"answers", "dialogs"}}``)::

    out_dir/visdial_1.0_{train,val,test}.json
    out_dir/visdial_1.0_{val,test}_dense_annotations.json    [{"image_id", "round_id" (1-based),
                                                                "gt_relevance": [100 floats]}]
    out_dir/images/CLEVRDialog_{split}_{image_id:012d}.png

Rounds carry one field VisDial does not: ``coref_distance`` (the reader takes it when present).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnlab.data.scenes import COLOURS, SHAPES, Scene, SceneObject, random_scene, render_scene

ROUNDS = 10
NUM_OPTIONS = 100
SIMILAR, POPULAR = 50, 30  # VisDial's candidate recipe: 50 similar, 30 popular, the rest random
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Round:
    """One generated question and answer, the kind of question and its coreference distance."""

    question: str
    answer: str
    kind: str  # shape | where | nearest | farthest | same_shape | left_count | count
    coref_distance: int


def _where(scene: Scene, o: SceneObject) -> str:
    vertical = "top" if scene.is_top(o) else "bottom"
    horizontal = "left" if scene.is_left(o) else "right"
    return f"the {o.colour} {o.shape} is at the {vertical} {horizontal}"


def _answer(scene: Scene, kind: str, o: SceneObject) -> tuple[str, SceneObject | None]:
    """The answer of question ``kind`` about object ``o``, and the new focus it names (if any)."""
    if kind == "shape":
        return f"the {o.colour} one is a {o.shape}", None
    if kind == "where":
        return _where(scene, o), None
    if kind == "nearest":
        p = scene.nearest(o)
        return f"the {p.colour} {p.shape} is nearest", p
    if kind == "farthest":
        p = scene.farthest(o)
        return f"the {p.colour} {p.shape} is farthest", p
    if kind == "same_shape":
        return f"{scene.count_same_shape(o)} {o.shape}s", None
    if kind == "left_count":
        return f"{sum(p.x < o.x for p in scene.others(o))} to its left", None
    raise ValueError(f"kind: unknown question kind {kind!r}")


_NAMED = {
    "shape": "what shape is the {} object?",
    "where": "where is the {} object?",
    "nearest": "what is nearest to the {} object?",
}
_BACK = {
    "shape": "what shape is it?",
    "where": "where is it?",
    "nearest": "what is nearest to it?",
    "farthest": "and the one farthest from it?",
    "same_shape": "how many objects share its shape?",
    "left_count": "how many objects are left of it?",
}


def caption(scene: Scene) -> str:
    """A caption that names no object: how many of each shape."""
    n = Counter(o.shape for o in scene.objects)
    return f"there are {n['square']} squares and {n['circle']} circles"


def generate_dialog(scene: Scene, rng: np.random.Generator, rounds: int = ROUNDS) -> list[Round]:
    """``rounds`` rounds about ``scene``: the first names an object; later ones refer back
    (about 60%), name a new object (25%) or name none (15%)."""
    out: list[Round] = []
    focus: SceneObject | None = None
    named_at = 0  # the round (1-based) where the focus was last named
    for r in range(1, rounds + 1):
        draw = rng.random()
        if focus is not None and draw < 0.6:
            kind = list(_BACK)[int(rng.integers(len(_BACK)))]
            answer, new = _answer(scene, kind, focus)
            out.append(Round(_BACK[kind], answer, kind, r - named_at))
            if new is not None or kind in ("shape", "where"):  # the answer names the focus again
                focus, named_at = new or focus, r
        elif focus is not None and draw < 0.75:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            count = sum(o.shape == shape for o in scene.objects)
            out.append(Round(f"how many {shape}s are there?", f"{count} {shape}s", "count", 0))
        else:
            focus = scene.objects[int(rng.integers(len(scene.objects)))]
            kind = list(_NAMED)[int(rng.integers(len(_NAMED)))]
            answer, new = _answer(scene, kind, focus)
            out.append(Round(_NAMED[kind].format(focus.colour), answer, kind, 0))
            focus, named_at = new or focus, r
    return out


def answer_pool() -> dict[str, list[str]]:
    """Every answer the generator can give, by question kind (the 'similar questions' pools)."""
    objs = [(c, s) for c in COLOURS for s in SHAPES]
    places = [f"{v} {h}" for v in ("top", "bottom") for h in ("left", "right")]
    return {
        "shape": [f"the {c} one is a {s}" for c, s in objs],
        "where": [f"the {c} {s} is at the {p}" for c, s in objs for p in places],
        "nearest": [f"the {c} {s} is nearest" for c, s in objs],
        "farthest": [f"the {c} {s} is farthest" for c, s in objs],
        "same_shape": [f"{n} {s}s" for s in SHAPES for n in range(1, len(COLOURS) + 1)],
        "left_count": [f"{n} to its left" for n in range(len(COLOURS))],
        "count": [f"{n} {s}s" for s in SHAPES for n in range(len(COLOURS) + 1)],
    }


def true_statements(scene: Scene) -> set[str]:
    """Answers that are true of the scene whatever was asked (shape, position, shape counts)."""
    out = {f"the {o.colour} one is a {o.shape}" for o in scene.objects}
    out |= {_where(scene, o) for o in scene.objects}
    out |= {f"{sum(o.shape == s for o in scene.objects)} {s}s" for s in SHAPES}
    return out


def candidates(
    gt: str,
    kind: str,
    popular: list[str],
    pool: dict[str, list[str]],
    rng: np.random.Generator,
    num_options: int = NUM_OPTIONS,
) -> list[str]:
    """``num_options`` distinct answers with ``gt`` among them, in random order: the ground
    truth, up to 50 answers to similar questions, up to 30 popular answers, random ones."""
    everything = sorted({a for answers in pool.values() for a in answers})
    if num_options > len(everything):
        raise ValueError(
            f"num_options: at most {len(everything)} distinct answers exist, got {num_options}"
        )
    chosen = [gt]
    seen = {gt}

    def take(source: list[str], limit: int) -> None:
        for i in rng.permutation(len(source)):
            if len(chosen) >= num_options or limit <= 0:
                return
            if source[i] not in seen:
                chosen.append(source[i])
                seen.add(source[i])
                limit -= 1

    take(pool[kind], SIMILAR)
    take(popular, POPULAR)
    take(everything, num_options)
    return [chosen[i] for i in rng.permutation(len(chosen))]


def write_clevr_dialog(
    out_dir: str | Path,
    num_dialogs: int = 2000,
    *,
    num_val: int = 200,
    num_test: int = 200,
    rounds: int = ROUNDS,
    num_options: int = NUM_OPTIONS,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the dataset (see the module docstring); returns the paths of the three split files
    and the two dense files (keys ``train``, ``val``, ``test``, ``val_dense``, ``test_dense``).
    Same seed, same files."""
    from PIL import Image

    if num_dialogs < 1 or num_val < 1 or num_test < 0 or num_val + num_test >= num_dialogs:
        raise ValueError(
            f"num_dialogs {num_dialogs} must exceed num_val {num_val} (>= 1) + "
            f"num_test {num_test} (>= 0)"
        )
    if not 1 <= rounds <= 20:
        raise ValueError(f"rounds: expected 1..20, got {rounds}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = answer_pool()
    sizes = {"train": num_dialogs - num_val - num_test, "val": num_val, "test": num_test}
    paths: dict[str, Path] = {}
    image_id = 0
    for split in SPLITS:
        if not sizes[split]:
            continue
        scenes, dialogs = [], []
        for _ in range(sizes[split]):
            image_id += 1
            scene = random_scene(rng)
            name = f"CLEVRDialog_{split}_{image_id:012d}.png"
            Image.fromarray(render_scene(scene)).save(out / "images" / name)
            scenes.append((image_id, scene))
            dialogs.append(generate_dialog(scene, rng, rounds))
        counts = Counter(r.answer for d in dialogs for r in d)
        popular = [a for a, _ in counts.most_common(POPULAR)]
        questions: dict[str, int] = {}
        answers: dict[str, int] = {}
        entries, dense = [], []
        for (iid, scene), dialog in zip(scenes, dialogs, strict=True):
            rows = []
            for r in dialog:
                options = candidates(r.answer, r.kind, popular, pool, rng, num_options)
                rows.append(
                    {
                        "question": questions.setdefault(r.question, len(questions)),
                        "answer": answers.setdefault(r.answer, len(answers)),
                        "answer_options": [answers.setdefault(a, len(answers)) for a in options],
                        "gt_index": options.index(r.answer),
                        "coref_distance": r.coref_distance,
                    }
                )
            entries.append({"image_id": iid, "caption": caption(scene), "dialog": rows})
            if split != "train":  # one densely annotated round per dialog, as VisDial's
                pick = int(rng.integers(len(dialog)))
                true = true_statements(scene)
                names = {v: k for k, v in answers.items()}
                relevance = [
                    1.0 if o == rows[pick]["answer"] else 0.5 if names[o] in true else 0.0
                    for o in rows[pick]["answer_options"]
                ]
                dense.append({"image_id": iid, "round_id": pick + 1, "gt_relevance": relevance})
        data = {"questions": list(questions), "answers": list(answers), "dialogs": entries}
        paths[split] = out / f"visdial_1.0_{split}.json"
        paths[split].write_text(json.dumps({"version": "1.0", "split": split, "data": data}))
        if split != "train":
            paths[f"{split}_dense"] = out / f"visdial_1.0_{split}_dense_annotations.json"
            paths[f"{split}_dense"].write_text(json.dumps(dense))
    return paths
