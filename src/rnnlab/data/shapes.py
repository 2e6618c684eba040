"""A deterministic synthetic captioning set: PNG images of coloured shapes, five reference captions
each, written in the Karpathy-split caption JSON format (``rnnlab.data.captions``).

Real COCO or Flickr images cannot be fetched here, so tests, the demo and the benchmark use this.
Each image holds one shape, or two shapes in a clear spatial relation, on a grey background::

    "a small red circle above a large blue square"     two shapes: colour, kind, size, relation
    "a blue square below a red circle"                 the same image, described from the other side
    "a large green triangle"                           one shape

A shape has a colour (5), a kind (circle, square, triangle) and a size (small, large); two shapes
are placed with the first above, below, left or right of the second, with position jitter so no
two images are alike. Captions are worded from a few templates (with and without sizes, either
shape first), so an image's references disagree in wording but not in content, as people's do.
The same ``seed`` gives the same JSON and the same pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnlab.io import write_atomic

COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (230, 200, 30),
    "purple": (148, 60, 189),
}
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
RELATIONS = {"above": "below", "below": "above", "left": "right", "right": "left"}
_WORDS = {"above": "above", "below": "below", "left": "to the left of", "right": "to the right of"}
_SUPERSAMPLE = 4  # shapes are drawn 4x larger and downsampled: smooth, deterministic edges


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    size: str
    x: float  # centre, as a fraction of the image side
    y: float
    radius: float  # half the shape's extent, as a fraction of the image side

    def words(self, with_size: bool) -> list[str]:
        return (["a", self.size] if with_size else ["a"]) + [self.colour, self.kind]


def describe(shapes: list[Shape], relation: str | None, rng: np.random.Generator) -> list[str]:
    """Five reference captions (space-separated words) of one image, in a shuffled order."""
    if relation is None:
        (s,) = shapes
        texts = [
            s.words(True),
            s.words(False),
            ["a", "single", s.size, s.colour, s.kind],
            ["one", s.colour, s.kind, "on", "a", "grey", "background"],
            ["there", "is", *s.words(True)],
        ]
    else:
        a, b = shapes
        rel, inverse = _WORDS[relation].split(), _WORDS[RELATIONS[relation]].split()
        texts = [
            [*a.words(True), *rel, *b.words(True)],
            [*a.words(False), *rel, *b.words(False)],
            [*b.words(True), *inverse, *a.words(True)],
            [*b.words(False), *inverse, *a.words(False)],
            ["there", "is", *a.words(True), *rel, *b.words(False)],
        ]
    order = rng.permutation(len(texts))
    return [" ".join(texts[i]) for i in order]


def sample_scene(rng: np.random.Generator) -> tuple[list[Shape], str | None]:
    """One or two shapes (two with probability 3/4) and their relation."""

    def shape(x: float, y: float, size: str | None = None) -> Shape:
        size = size or SIZES[rng.integers(len(SIZES))]
        radius = rng.uniform(0.08, 0.11) if size == "small" else rng.uniform(0.15, 0.19)
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        return Shape(colour, KINDS[rng.integers(len(KINDS))], size, x, y, radius)

    if rng.random() < 0.25:
        return [shape(rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))], None
    relation = list(RELATIONS)[rng.integers(len(RELATIONS))]
    near, far = rng.uniform(0.22, 0.30), rng.uniform(0.70, 0.78)  # along the relation's axis
    across = rng.uniform(0.3, 0.7, size=2)  # the other axis: jitter that keeps the relation clear
    first, second = (near, far) if relation in ("above", "left") else (far, near)
    if relation in ("above", "below"):
        a, b = shape(across[0], first), shape(across[1], second)
    else:
        a, b = shape(first, across[0]), shape(second, across[1])
    return [a, b], relation


def render(
    shapes: list[Shape],
    size: int,
    background: int = 128,
    colours: dict[str, tuple[int, int, int]] = COLOURS,
) -> np.ndarray:
    """The image as uint8 (size, size, 3); ``colours`` maps each shape's colour name to RGB."""
    from PIL import Image, ImageDraw

    big = size * _SUPERSAMPLE
    im = Image.new("RGB", (big, big), (background,) * 3)
    draw = ImageDraw.Draw(im)
    for s in shapes:
        cx, cy, r = s.x * big, s.y * big, s.radius * big
        box = (cx - r, cy - r, cx + r, cy + r)
        if s.kind == "circle":
            draw.ellipse(box, fill=colours[s.colour])
        elif s.kind == "square":
            draw.rectangle(box, fill=colours[s.colour])
        else:  # an upward triangle inscribed in the same box
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colours[s.colour])
    return np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def write_shapes_dataset(
    out_dir: str | Path,
    num_images: int = 2000,
    *,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``out_dir/images/NNNNN.png`` and ``out_dir/captions.json``; returns the JSON's path.

    The last ``num_test`` images are the test split, the ``num_val`` before them val, the rest
    train. Each entry's ``filepath`` is ``images``, so ``read_caption_json`` finds the images
    from the JSON's own folder (as COCO's entries say ``train2014``)."""
    from PIL import Image

    if num_images < 1 or num_val < 0 or num_test < 0 or num_val + num_test >= num_images:
        raise ValueError(
            f"num_images {num_images} must exceed num_val {num_val} + num_test {num_test} >= 0"
        )
    if not 16 <= image_size <= 1024:
        raise ValueError(f"image_size: expected 16..1024, got {image_size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: not a folder; give a new folder for captions.json and images/")
    rng = np.random.default_rng(seed)
    scenes, entries = [], []
    for i in range(num_images):
        shapes, relation = sample_scene(rng)
        scenes.append(shapes)
        filename = f"{i:05d}.png"
        split = (
            "test"
            if i >= num_images - num_test
            else ("val" if i >= num_images - num_test - num_val else "train")
        )
        captions = describe(shapes, relation, rng)
        entries.append({
            "filepath": "images",
            "filename": filename,
            "imgid": i,
            "split": split,
            "sentences": [
                {"tokens": text.split(), "raw": text, "imgid": i, "sentid": 5 * i + j}
                for j, text in enumerate(captions)
            ],
            "sentids": [5 * i + j for j in range(len(captions))],
        })  # fmt: skip
    path = out / "captions.json"
    text = json.dumps({"dataset": "shapes", "images": entries}) + "\n"
    if path.exists() and (not path.is_file() or path.read_bytes() != text.encode()):
        raise ValueError(f"{path}: a different data set is already there (its runs would no "
                         "longer match it); give a new folder")  # fmt: skip
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i, shapes in enumerate(scenes):
        Image.fromarray(render(shapes, image_size)).save(out / "images" / f"{i:05d}.png")
    write_atomic(path, text)
    return path
