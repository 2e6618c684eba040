"""Reading image files for captioning: size limit, colour modes, and the image-folder rule.

Every image rnnlab reads goes through ``open_rgb``: the header's size is checked against
``MAX_IMAGE_PIXELS`` before any pixel is decoded, and the image becomes 8-bit RGB by a rule per
Pillow mode, or is refused naming the mode. Pillow's own ``convert("RGB")`` is wrong for some
modes (measured on Pillow 13):

    mode                       convert("RGB") does               here
    I;16, I;16B/L/N (16-bit)   clips at 255: an almost white     scaled: round(v / 257)
                               picture
    RGBA, LA, PA, P + tRNS     drops alpha: transparent pixels   composited over white
                               show whatever colour they store
    CMYK                       a naive formula, ignoring the     the embedded ICC profile to sRGB
                               embedded ICC profile              (littlecms); without one, naive
    I (32-bit), F, LAB, HSV    clips or guesses                  refused by name
    1, L, P, RGB, RGBX, YCbCr  correct                           convert("RGB")

The pixel limit, 8192 x 8192 = 67,108,864 pixels (201 MB decoded as RGB, 403 MB as 16-bit
RGB), is below Pillow's own bomb limit (89,478,485), so an accepted image never triggers
Pillow's warning, and a bomb is refused with the file's name before Pillow decodes it. A 50 MP
camera photo (8688 x 5792) fits; captioning resizes to ``--image-size`` (tens of pixels) anyway.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rnnlab.data.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage

MAX_IMAGE_PIXELS = 8192 * 8192
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
PLAIN = ("1", "L", "P", "RGB", "RGBX", "YCbCr")
REFUSED = {
    "I": "32-bit integer",
    "F": "32-bit float",
    "LAB": "CIE L*a*b*",
    "HSV": "HSV",
}


def inside_folder(path: Path, folder: Path) -> bool:
    """Whether ``path`` with every symlink followed (a dangling one too) lies inside ``folder``
    with its own links followed: a link inside the image folder to a file inside it is fine, a
    link (or a linked sub-folder) that leads out is not."""
    return path.resolve().is_relative_to(folder.resolve())


def open_rgb(path: str | Path, where: str = "") -> PILImage.Image:
    """The image file ``path`` as an 8-bit RGB Pillow image (see the module's table); ``where``
    (``captions.json: images[3].filename``) is added to every error. Raises DataError."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    at = f"{where}: " if where else ""  # the JSON path first, as the caption reader's errors
    try:
        with warnings.catch_warnings():
            # Pillow warns, naming no file, between its limit and twice it; ours is lower, so
            # every image it would warn about is refused below with the file's name.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(_too_large(path, at, f"{width}x{height}"))
                im.load()
                return _to_rgb(im, path, at)
    except Image.DecompressionBombError:  # over twice Pillow's limit: refused inside open()
        raise DataError(_too_large(path, at, f"over {2 * Image.MAX_IMAGE_PIXELS:,}")) from None
    except FileNotFoundError:
        raise DataError(f"{at}{path}: no such image file") from None
    except IsADirectoryError:
        raise DataError(f"{at}{path}: is a directory, not an image file") from None
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise DataError(f"{at}{path}: cannot read the image ({reason})") from None


def _too_large(path: Path, at: str, size: str) -> str:
    return (
        f"{at}{path}: the image is {size} pixels, over rnnlab's limit of "
        f"{MAX_IMAGE_PIXELS:,} (8192x8192); downscale it first"
    )


def _to_rgb(im: PILImage.Image, path: Path, at: str) -> PILImage.Image:
    from PIL import Image

    mode = im.mode
    if mode in SIXTEEN_BIT:
        grey = (np.asarray(im, dtype=np.uint32) + 128) // 257  # 0..65535 -> 0..255, rounded
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if mode in ALPHA or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBa").convert("RGBA") if mode == "La" else im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode in PLAIN:
        return im.convert("RGB")
    kind = REFUSED.get(mode, "this")
    raise DataError(
        f"{at}{path}: {kind} images (Pillow mode {mode}) are not supported; save it as 8- or "
        "16-bit greyscale or RGB (PNG, JPEG)"
    )


def _cmyk_to_rgb(im: PILImage.Image) -> PILImage.Image:
    """CMYK through its embedded ICC profile to sRGB when Pillow has littlecms; else Pillow's
    formula (what a profile-less CMYK file allows)."""
    profile = im.info.get("icc_profile")
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without littlecms
        return im.convert("RGB")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if converted is not None:
                return converted
        except (OSError, ValueError, ImageCms.PyCMSError):
            pass  # a damaged or foreign profile: the formula below, as without one
    return im.convert("RGB")


def load_image(path: str | Path, size: int, where: str = "") -> np.ndarray:
    """An image file as uint8 (3, size, size), RGB, resized with bilinear filtering if needed;
    ``where`` (the JSON path that named the file) is added to every error."""
    from PIL import Image

    im = open_rgb(path, where)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(array.transpose(2, 0, 1))
