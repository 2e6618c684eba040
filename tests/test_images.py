"""rnnlab.data.images: colour modes converted by rule or refused by name, the pixel limit (with the
file and JSON path named, exit 2 from the CLI, no Pillow warning), and the image-folder rule for
symlinks."""

from __future__ import annotations

import json
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from rnnlab.cli import main
from rnnlab.data.captions import load_images, read_caption_json
from rnnlab.data.errors import DataError
from rnnlab.data.images import MAX_IMAGE_PIXELS, load_image, open_rgb


def png(path, width, height, bit_depth, colour_type, rows=b""):
    """A PNG written byte by byte: Pillow cannot write 16-bit RGB, and a bomb's header needs no
    pixels (the size is checked before any is decoded)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64], [32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    pixels = load_image(tmp_path / "g16.png", 2)
    assert pixels.shape == (3, 2, 2)
    assert pixels[0].tolist() == [[0, 64], [128, 255]]  # Pillow's convert gives [[0, 255], ...]
    assert (pixels[0] == pixels[1]).all() and (pixels[1] == pixels[2]).all()


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    row = b"\x00" + struct.pack(">HHH", 65535, 32896, 0)  # filter byte, then one RGB pixel
    png(tmp_path / "rgb16.png", 1, 1, 16, 2, row)
    assert load_image(tmp_path / "rgb16.png", 1)[:, 0, 0].tolist() == [255, 128, 0]


def test_alpha_modes_are_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (40, 255))
    la.save(tmp_path / "la.png")
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    assert Image.open(tmp_path / "p.png").mode == "P"
    for name, opaque in (("rgba.png", [255, 0, 0]), ("la.png", [40] * 3), ("p.png", [255, 0, 0])):
        pixels = load_image(tmp_path / name, 2)[:, 0]
        assert pixels[:, 0].tolist() == [255, 255, 255], name  # was black: alpha dropped
        assert pixels[:, 1].tolist() == opaque, name


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    r, g, b = load_image(tmp_path / "c.jpg", 4)[:, 0, 0].tolist()
    assert r < 20 and g > 235 and b > 235  # cyan


@pytest.mark.parametrize(("mode", "name"), [("F", "32-bit float"), ("I", "32-bit integer")])
def test_modes_without_a_faithful_conversion_are_refused_by_name(tmp_path, mode, name):
    Image.new(mode, (4, 4), 70000).save(tmp_path / "x.tif")
    assert Image.open(tmp_path / "x.tif").mode == mode
    with pytest.raises(DataError, match=rf"x\.tif: {name} images \(Pillow mode {mode}\)"):
        load_image(tmp_path / "x.tif", 4)


def write_dataset(folder, names):
    entries = [
        {"filename": n, "split": s, "sentences": [{"tokens": ["a", "dot"]}]}
        for n, s in zip(names, ["train", "val"] * len(names), strict=False)
    ]
    path = folder / "captions.json"
    path.write_text(json.dumps({"images": entries}))
    return path


@pytest.mark.parametrize(
    ("width", "height"),
    [(8193, 8192), (10_000, 10_000), (20_000, 20_000)],  # ours; Pillow's warning; Pillow's error
)
def test_images_over_the_pixel_limit_are_refused_naming_file_and_json_path(tmp_path, width, height):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    png(tmp_path / "bomb.png", width, height, 1, 0)
    data = read_caption_json(write_dataset(tmp_path, ["ok.png", "bomb.png"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's warning (naming no file) must not appear
        with pytest.raises(DataError) as info:
            load_images(data.images, 8)
    message = str(info.value)
    assert str(tmp_path / "bomb.png") in message and "images[1].filename" in message
    assert f"{MAX_IMAGE_PIXELS:,}" in message and "\n" not in message


def test_the_limit_itself_is_accepted(tmp_path):
    assert MAX_IMAGE_PIXELS == 8192 * 8192 < Image.MAX_IMAGE_PIXELS
    row = b"\x00" + b"\x00" * (8192 // 8)
    png(tmp_path / "edge.png", 8192, 8192, 1, 0, row * 8192)
    assert open_rgb(tmp_path / "edge.png").size == (8192, 8192)


def test_cli_refuses_a_bomb_with_exit_2(tmp_path, capsys):
    for n in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / n)
    png(tmp_path / "bomb.png", 30_000, 30_000, 1, 0)
    data = write_dataset(tmp_path, ["a.png", "b.png", "bomb.png"])
    argv = ["caption", "train", "--data", str(data), "--out-dir", str(tmp_path / "run")]
    assert main(argv + ["--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bomb.png" in err and "images[2].filename" in err
    assert "decompression bomb" not in err.lower() and not (tmp_path / "run").exists()


def test_symlinks_must_stay_inside_the_image_folder(tmp_path):
    images, outside = tmp_path / "images", tmp_path / "secret"
    images.mkdir()
    outside.mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(outside / "private.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(images / "real.png")
    (images / "alias.png").symlink_to(images / "real.png")  # inside: fine
    (images / "sub").mkdir()
    (images / "sub" / "up.png").symlink_to("../real.png")  # relative, still inside
    data = read_caption_json(write_dataset(images, ["real.png", "alias.png", "sub/up.png"]))
    assert load_images(data.images, 4)[:, :, 0, 0].tolist() == [[1, 2, 3]] * 3
    (images / "link.png").symlink_to(outside / "private.png")
    (images / "linked").symlink_to(outside, target_is_directory=True)
    (images / "dangling.png").symlink_to(outside / "not-yet.png")
    for name in ("link.png", "linked/private.png", "dangling.png"):
        with pytest.raises(DataError) as info:
            read_caption_json(write_dataset(images, ["real.png", name]))
        message = str(info.value)
        assert "images[1].filename" in message and "outside the image folder" in message, name
        assert "\n" not in message


def test_a_symlinked_image_folder_is_followed(tmp_path):
    real = tmp_path / "store"
    real.mkdir()
    Image.new("RGB", (4, 4), (5, 6, 7)).save(real / "a.png")
    (tmp_path / "images").symlink_to(real, target_is_directory=True)
    path = write_dataset(real, ["a.png"])
    data = read_caption_json(path, tmp_path / "images")
    assert load_images(data.images, 4)[:, 0, 0, 0].tolist() == [5]


def test_a_link_swapped_after_reading_the_json_is_refused_at_load(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (4, 4)).save(images / "real.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "private.png")
    (images / "x.png").symlink_to(images / "real.png")
    data = read_caption_json(write_dataset(images, ["x.png"]))
    (images / "x.png").unlink()
    (images / "x.png").symlink_to(tmp_path / "private.png")
    with pytest.raises(DataError, match="outside the image folder"):
        load_images(data.images, 4)
