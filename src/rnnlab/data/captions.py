"""Caption data: the COCO / Karpathy-split caption JSON, its word vocabulary, images and features.

The JSON format is the one of Karpathy & Fei-Fei (2015)'s splits (``dataset_coco.json``,
``dataset_flickr8k.json``), which neuraltalk2 and most captioning code read::

    {"images": [{"filename": "0001.png", "split": "train",        # train | val | test | restval
                 "filepath": "train2014",                         # optional sub-folder
                 "sentences": [{"tokens": ["a", "red", "circle"], "raw": "A red circle."}, ...]},
                ...]}

An image's file is ``image_dir / filepath / filename``. A sentence needs ``tokens`` (a list of
strings) or ``raw`` (text, tokenised by :func:`tokenize`). ``restval`` counts as ``train``, as in
Karpathy's code. Every problem is a DataError naming the file and the JSON path of the bad value;
no image or sentence is ever dropped silently. An image's path may not contain ``..`` or be
absolute, and with every symlink followed it must stay inside the image folder (a link to a file
or a linked sub-folder elsewhere is refused). Images are read by ``rnnlab.data.images`` (pixel
limit, colour modes) into uint8 (3, S, S); precomputed features are ``.npy`` or
``.safetensors`` files with one row per entry of ``images[]``, in order: (N, F) vectors or
(N, K, F) grids of K locations.

Token ids: ``<pad>`` 0, ``<start>`` 1, ``<end>`` 2, ``<unk>`` 3, then the words kept by the count
threshold, most frequent first. A batch of captions is laid out for teacher forcing as::

    ids      <start> a  red circle <end> <pad> <pad>      (B, T + 2): T = the length cap
    input    <start> a  red circle <end> <pad>            ids[:, :-1]
    target   a       red circle <end> <pad> <pad>         ids[:, 1:]  (<pad> ignored by the loss)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from rnnlab.data.errors import DataError
from rnnlab.data.images import inside_folder, load_image
from rnnlab.data.vocab import Vocab
from rnnlab.strictjson import parse_json

__all__ = [
    "CaptionDataset",
    "CaptionImage",
    "CaptionVocab",
    "EncodedCaptions",
    "encode_captions",
    "load_image",
    "load_images",
    "most_frequent_caption",
    "read_caption_json",
    "read_features",
    "tokenize",
]

SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = 0, 1, 2, 3
SPLITS = ("train", "val", "test", "restval")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped (as Karpathy's preprocessing of COCO)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class CaptionImage:
    """One entry of ``images[]``: its file, split, reference captions and row ``index``;
    ``where`` is the JSON path that names the file (``captions.json: images[3].filename``)."""

    index: int
    filename: str
    path: Path
    split: str
    captions: tuple[tuple[str, ...], ...]
    where: str = ""
    folder: Path | None = None  # the image folder the file must stay inside


@dataclass(frozen=True)
class CaptionDataset:
    """A caption JSON file read and checked; ``images`` in the file's order."""

    source: Path
    image_dir: Path
    images: tuple[CaptionImage, ...]

    def split(self, name: str) -> list[CaptionImage]:
        """The images of split ``train`` (with ``restval``), ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split: expected train|val|test, got {name!r}")
        wanted = ("train", "restval") if name == "train" else (name,)
        return [im for im in self.images if im.split in wanted]


def read_caption_json(path: str | Path, image_dir: str | Path | None = None) -> CaptionDataset:
    """Read and check a Karpathy-split caption JSON; ``image_dir`` defaults to the JSON's folder.

    Raises DataError naming the file and the JSON path of the first bad value."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such caption file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the caption file ({_reason(e)})") from None
    data = parse_json(text, str(path), error=DataError)  # strict: duplicate keys, NaN, bigints
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f'{path}: expected an object with an "images" list (Karpathy format)')
    root = Path(image_dir) if image_dir is not None else path.parent
    images, seen = [], {}
    for i, entry in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, found {_kind(entry)}")
        filename = _relative(entry.get("filename"), f"{where}.filename")
        folder = entry.get("filepath", "")
        folder = _relative(folder, f"{where}.filepath") if folder else ""
        split = entry.get("split")
        if split not in SPLITS:
            raise DataError(f"{where}.split: expected one of {'|'.join(SPLITS)}, found {split!r}")
        sentences = entry.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise DataError(f"{where}.sentences: expected a non-empty list, found {sentences!r}")
        captions = tuple(_caption(s, f"{where}.sentences[{j}]") for j, s in enumerate(sentences))
        file = root / folder / filename if folder else root / filename
        _check_inside(file, root, f"{where}.filename")
        if file in seen:
            raise DataError(f"{where}.filename: {file} is also images[{seen[file]}]")
        seen[file] = i
        images.append(CaptionImage(i, filename, file, split, captions, f"{where}.filename", root))
    if not images:
        raise DataError(f"{path}: the images list is empty")
    return CaptionDataset(path, root, tuple(images))


def _caption(sentence: Any, where: str) -> tuple[str, ...]:
    if not isinstance(sentence, dict):
        raise DataError(f"{where}: expected an object, found {_kind(sentence)}")
    tokens = sentence.get("tokens")
    if tokens is None and isinstance(sentence.get("raw"), str):
        tokens = tokenize(sentence["raw"])
    elif not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise DataError(f"{where}.tokens: expected a list of strings, found {_kind(tokens)}")
    words = tuple(w for t in tokens for w in t.lower().split())
    if not words:
        raise DataError(f"{where}: the caption has no words")
    return words


def _relative(name: Any, where: str) -> str:
    """A relative path that stays inside the image folder (no ``..``, not absolute)."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: expected a file name, found {name!r}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or "\x00" in name:
        raise DataError(f"{where}: {name!r} must be a path inside the image folder")
    return name


def _check_inside(file: Path, root: Path, where: str) -> None:
    if not inside_folder(file, root):
        raise DataError(
            f"{where}: {file} is a symlink (or in a linked folder) that leads outside the image "
            f"folder {root} (to {file.resolve()}); copy the file into the folder instead"
        )


def _kind(x: Any) -> str:
    return "null" if x is None else type(x).__name__


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e)


# -- vocabulary ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CaptionVocab(Vocab):
    """A ``Vocab`` of kind ``"words"`` whose ids 0-3 are ``SPECIALS``: ``words[i]`` is the word of
    id ``i``. The name captioning has used; new code can say ``Vocab``. Unlike ``Vocab`` it maps
    an unseen word to ``<unk>`` by default (``encode``).

    Raises DataError as ``Vocab`` does, for any kind but ``"words"``, and when the first four
    tokens are not ``SPECIALS``.
    """

    num_specials: int = len(SPECIALS)
    _: KW_ONLY
    kind: str = "words"

    def __post_init__(self) -> None:
        if self.kind != "words":
            raise DataError(f"expected a caption word vocabulary, found kind {self.kind!r}")
        if tuple(self.tokens[:4]) != SPECIALS or self.num_specials != len(SPECIALS):
            raise DataError(f"vocabulary: expected {SPECIALS} first, found {self.tokens[:4]}")
        super().__post_init__()

    @classmethod
    def build(  # type: ignore[override]
        cls, captions: Iterable[Sequence[str]], min_count: int = 1
    ) -> CaptionVocab:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical),
        with their counts. Raises ValueError for a ``min_count`` below 1."""
        order = "frequency"
        vocab = super().build(captions, SPECIALS, kind="words", order=order, min_count=min_count)
        return vocab  # type: ignore[return-value]

    @property
    def words(self) -> tuple[str, ...]:
        """The tokens, specials first, as a tuple."""
        return tuple(self.tokens)

    def encode(  # type: ignore[override]
        self, seq: Sequence[str], unknown: str = "replace", where: str = ""
    ) -> list[int]:
        """Word ids; a word outside the vocabulary becomes ``<unk>`` unless ``unknown`` says
        ``"error"`` (DataError naming ``where``) or ``"skip"``."""
        return super().encode(seq, unknown, where)  # type: ignore[return-value]


@dataclass(frozen=True)
class EncodedCaptions:
    """Captions as padded ids (N, T + 2) with ``<start>``/``<end>``, their image rows (N,), and
    how many were cut to the length cap (reported by the caller, never hidden)."""

    ids: np.ndarray
    image_rows: np.ndarray
    truncated: int


def encode_captions(
    images: Sequence[CaptionImage], vocab: CaptionVocab, max_length: int
) -> EncodedCaptions:
    """Every caption of ``images`` (row i of the result belongs to ``images[image_rows[i]]``),
    cut to ``max_length`` words, as ``<start> w1 .. wT <end> <pad>..`` (N, max_length + 2)."""
    if max_length < 1:
        raise ValueError(f"max_length: expected >= 1, got {max_length}")
    rows, ids, truncated = [], [], 0
    for r, image in enumerate(images):
        for caption in image.captions:
            words = vocab.encode(caption)
            truncated += len(words) > max_length
            line = [START, *words[:max_length], END]
            ids.append(line + [PAD] * (max_length + 2 - len(line)))
            rows.append(r)
    return EncodedCaptions(
        np.asarray(ids, dtype=np.int64).reshape(-1, max_length + 2),
        np.asarray(rows, dtype=np.int64),
        truncated,
    )


# -- images and features ------------------------------------------------------------------------


def load_images(images: Sequence[CaptionImage | str | Path], size: int) -> np.ndarray:
    """Images as uint8 (N, 3, size, size); the first missing or unreadable file is a DataError
    that also says how many others are missing."""
    paths = [im.path if isinstance(im, CaptionImage) else Path(im) for im in images]
    missing = [p for p in paths if not p.exists()]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: no such image file{more}")
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, (p, im) in enumerate(zip(paths, images, strict=True)):
        where = ""
        if isinstance(im, CaptionImage):
            where = im.where
            if im.folder is not None:  # again, just before reading: a link may have changed
                _check_inside(p, im.folder, where)
                p = p.resolve()
        out[i] = load_image(p, size, where)
    return out


def read_features(
    path: str | Path, rows: int | None = None, width: int | None = None
) -> np.ndarray:
    """Precomputed image features as float32 (N, F) or (N, K, F): a ``.npy`` array (read without
    pickle) or a ``.safetensors`` file holding one tensor (or one named ``features``).

    Checked in full before anything uses them: a float dtype, 2 or 3 dimensions, every size > 0,
    ``rows`` rows and width F = ``width`` when given, every value finite and within float32.
    Raises DataError naming the file and what it holds."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1 and "features" not in tensors:
                raise DataError(
                    f"{path}: expected one tensor or one named 'features', found "
                    f"{', '.join(sorted(tensors)) or 'none'}"
                )
            array = tensors.get("features", next(iter(tensors.values()), None))
        else:
            raise DataError(f"{path}: expected a .npy or .safetensors feature file")
    except FileNotFoundError:
        raise DataError(f"{path}: no such feature file") from None
    except DataError:
        raise
    except Exception as e:  # numpy's and safetensors' parsers: a damaged or pickled file
        raise DataError(f"{path}: cannot read the features ({_reason(e)})") from None
    shape = tuple(array.shape)
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.floating):
        raise DataError(
            f"{path}: expected float features (N, F) or (N, K, F), found {array.dtype} {shape}"
        )
    if 0 in shape:
        names = ("N", "F") if array.ndim == 2 else ("N", "K", "F")
        empty = ", ".join(f"{n}={d}" for n, d in zip(names, shape, strict=True) if d == 0)
        raise DataError(
            f"{path}: expected features (N, F) or (N, K, F) with every size > 0, found "
            f"{array.dtype} {shape} ({empty})"
        )
    if rows is not None and shape[0] != rows:
        raise DataError(f"{path}: expected {rows} rows (one per image), found {shape[0]}")
    if width is not None and shape[-1] != width:
        raise DataError(f"{path}: expected features of width F={width}, found {shape[-1]}")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: the features hold NaN or inf")
    if np.abs(array).max() > np.finfo(np.float32).max:  # float64 values a float32 cannot hold
        raise DataError(f"{path}: a feature value is beyond float32's range (3.4e38)")
    return array.astype(np.float32)


def most_frequent_caption(images: Sequence[CaptionImage]) -> tuple[str, ...]:
    """The caption occurring most often among ``images`` (ties: the first seen)."""
    counts = Counter(c for im in images for c in im.captions)
    if not counts:
        raise DataError("no captions to count")
    return counts.most_common(1)[0][0]
