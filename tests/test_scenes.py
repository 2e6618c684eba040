"""Sort-of-CLEVR scenes: placement, geometry against a naive computation, pixels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rnnlab.data.scenes import COLOURS, OBJECT_RADIUS, random_scene, render_scene


def test_scene_has_one_object_per_colour_inside_and_apart() -> None:
    for seed in range(20):
        scene = random_scene(np.random.default_rng(seed))
        assert [o.colour for o in scene.objects] == list(COLOURS)
        for o in scene.objects:
            assert OBJECT_RADIUS <= o.x < scene.size - OBJECT_RADIUS
            assert OBJECT_RADIUS <= o.y < scene.size - OBJECT_RADIUS
        for a, b in itertools.combinations(scene.objects, 2):
            assert (
                abs(a.x - b.x) >= 2 * OBJECT_RADIUS + 2 or abs(a.y - b.y) >= 2 * OBJECT_RADIUS + 2
            )


def test_geometry_matches_a_naive_computation() -> None:
    scene = random_scene(np.random.default_rng(3))
    for o in scene.objects:
        d = {p.colour: math.dist((o.x, o.y), (p.x, p.y)) for p in scene.objects if p is not o}
        assert scene.nearest(o).colour == min(d, key=d.get)
        assert scene.farthest(o).colour == max(d, key=d.get)
        assert scene.count_same_shape(o) == [p.shape for p in scene.objects].count(o.shape)
        assert scene.is_left(o) == (o.x < 37.5)
        assert scene.find(o.colour) is o
    with pytest.raises(KeyError):
        scene.find("purple")


def test_pixels_show_each_object_in_its_colour() -> None:
    scene = random_scene(np.random.default_rng(1))
    image = render_scene(scene)
    assert image.shape == (75, 75, 3) and image.dtype == np.uint8
    for o in scene.objects:
        assert tuple(image[int(o.y), int(o.x)]) == COLOURS[o.colour]
    assert (image == 255).all(-1).mean() > 0.8  # mostly white background
    again = render_scene(random_scene(np.random.default_rng(1)))
    assert np.array_equal(image, again)


def test_too_small_an_image_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        random_scene(np.random.default_rng(0), size=20)
