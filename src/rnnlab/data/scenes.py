"""Sort-of-CLEVR scenes (Santoro et al. 2017, "A simple neural network module for relational
reasoning", NeurIPS): the objects, their geometry and their pixels; shared by the VQA questions
(``rnnlab.data.sort_of_clevr``) and the multi-round dialogs (``rnnlab.data.clevr_dialog``).

A scene is a 75x75 image with one object of each of six colours (red, green, blue, orange, gray,
yellow), each a square or a circle of radius 5 pixels, on a white background, placed at random
with no two objects overlapping, as in the paper. An object is named by its colour, which is how
the questions refer to it ("what shape is the object nearest to the red one?").

The geometry the questions ask about lives here, once: left/top halves, nearest and farthest
object (Euclidean distance between centres), objects of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rnnlab.data.shapes import Shape, render

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "orange": (255, 156, 0),
    "gray": (128, 128, 128),
    "yellow": (255, 255, 0),
}
SHAPES = ("square", "circle")
IMAGE_SIZE = 75  # pixels per side
OBJECT_RADIUS = 5  # pixels: a square of side 10, a circle of diameter 10
_MAX_TRIES = 10_000


@dataclass(frozen=True)
class SceneObject:
    """One object: its colour (its name in questions), shape and centre in pixels."""

    colour: str
    shape: str
    x: float  # 0 = left edge
    y: float  # 0 = top edge


@dataclass(frozen=True)
class Scene:
    """Objects in ``COLOURS`` order, one per colour, and the image side in pixels."""

    objects: tuple[SceneObject, ...]
    size: int = IMAGE_SIZE

    def find(self, colour: str) -> SceneObject:
        """The object of this colour; KeyError if the scene has none."""
        for o in self.objects:
            if o.colour == colour:
                return o
        raise KeyError(colour)

    def is_left(self, o: SceneObject) -> bool:
        """Whether o's centre lies in the left half of the image."""
        return o.x < self.size / 2

    def is_top(self, o: SceneObject) -> bool:
        """Whether o's centre lies in the top half of the image."""
        return o.y < self.size / 2

    def others(self, o: SceneObject) -> list[SceneObject]:
        return [p for p in self.objects if p is not o]

    def nearest(self, o: SceneObject) -> SceneObject:
        """The other object closest to o (centre distance; ties: first in COLOURS order)."""
        return min(self.others(o), key=lambda p: distance(o, p))

    def farthest(self, o: SceneObject) -> SceneObject:
        """The other object farthest from o (centre distance; ties: first in COLOURS order)."""
        return max(self.others(o), key=lambda p: distance(o, p))

    def count_same_shape(self, o: SceneObject) -> int:
        """How many objects have o's shape, o included (1..6), as the paper's count question."""
        return sum(p.shape == o.shape for p in self.objects)


def distance(a: SceneObject, b: SceneObject) -> float:
    """Euclidean distance between two centres, in pixels."""
    return math.hypot(a.x - b.x, a.y - b.y)


def random_scene(
    rng: np.random.Generator, size: int = IMAGE_SIZE, radius: int = OBJECT_RADIUS
) -> Scene:
    """A scene with one object per colour, shapes uniform, centres uniform over the positions that
    keep the object inside the image, rejected while two objects would overlap (centres closer than
    ``2 * radius + 2`` pixels on both axes' bounding boxes).

    Raises ValueError if the image is too small to place six objects.
    """
    gap = 2 * radius + 2
    placed: list[SceneObject] = []
    for colour in COLOURS:
        for _ in range(_MAX_TRIES):
            x, y = (float(v) for v in rng.integers(radius, size - radius, size=2))
            if all(abs(x - p.x) >= gap or abs(y - p.y) >= gap for p in placed):
                break
        else:
            raise ValueError(f"size: {size} pixels cannot hold {len(COLOURS)} objects of radius "
                             f"{radius}; use a larger image")  # fmt: skip
        placed.append(SceneObject(colour, SHAPES[int(rng.integers(len(SHAPES)))], x, y))
    return Scene(tuple(placed), size)


def render_scene(scene: Scene) -> np.ndarray:
    """The scene's pixels, uint8 (size, size, 3), white background."""
    s = scene.size
    shapes = [
        Shape(o.colour, o.shape, "small", o.x / s, o.y / s, OBJECT_RADIUS / s)
        for o in scene.objects
    ]
    return render(shapes, s, background=255, colours=COLOURS)
