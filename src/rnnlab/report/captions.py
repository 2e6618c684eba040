"""Captioning evaluation: a trained Captioner's captions of a split, scored; two baselines; and
a static, self-contained HTML report of held-out images with generated and reference captions.

Baselines (what a captioner must beat to show it reads the image):

* most frequent caption: every image gets the training set's most common caption;
* nearest neighbour (after Devlin et al. 2015): each image gets a caption of the training image
  closest in pixel (or feature) space, L2; of that image's references, the consensus one, i.e.
  the one with the highest BLEU-4 against the others.

The report embeds the images as PNG data URIs and writes every caption through ``html.escape``:
corpus text is data, never markup; a Content-Security-Policy allows no script at all.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnlab.data.captions import (
    CaptionDataset,
    CaptionImage,
    load_images,
    most_frequent_caption,
    read_caption_json,
    read_features,
)
from rnnlab.data.images import open_rgb
from rnnlab.io import write_inside
from rnnlab.loading import LoadedRun
from rnnlab.metrics.captioning import CaptionScores, bleu, score_captions
from rnnlab.models.captioner import attention_maps, generate_captions


@dataclass(frozen=True)
class CaptionEvaluation:
    """One method's captions of a split: corpus scores and, per image, the caption and scores."""

    method: str
    split: str
    images: tuple[CaptionImage, ...]
    generated: tuple[tuple[str, ...], ...]
    scores: CaptionScores


def score_method(method: str, split: str, images: Sequence[CaptionImage],
                 generated: Sequence[Sequence[str]]) -> CaptionEvaluation:  # fmt: skip
    scores = score_captions(generated, [im.captions for im in images])
    return CaptionEvaluation(method, split, tuple(images), tuple(map(tuple, generated)), scores)


def dataset_of(
    run: LoadedRun, data: str | None = None, images: str | None = None
) -> CaptionDataset:
    """The caption JSON a run was trained on, or ``data`` (its images in ``images``, default the
    JSON's folder)."""
    if data:
        return read_caption_json(data, images or None)
    config = run.train_config
    return read_caption_json(config.data, images or config.images or None)


def model_inputs(
    run: LoadedRun, dataset: CaptionDataset, features: str | None = None
) -> torch.Tensor:
    """Every image of ``dataset`` as the run's model reads it: uint8 pixels or feature rows."""
    if run.model.config.encoder == "features":
        path = features or run.train_config.features
        return torch.from_numpy(read_features(path, len(dataset.images)))
    return torch.from_numpy(load_images(dataset.images, run.model.config.image_size))


def evaluate_run(
    run: LoadedRun,
    dataset: CaptionDataset,
    inputs: torch.Tensor,
    split: str = "test",
    *,
    beam: int = 1,
    temperature: float = 0.0,
    alpha: float = 0.0,
    seed: int = 0,
    max_images: int = 0,
    batch_size: int = 128,
) -> CaptionEvaluation:
    """Caption the images of ``split`` (``inputs`` rows aligned with ``dataset.images``)."""
    images = dataset.split(split)
    if not images:
        raise ValueError(f"{dataset.source}: no {split!r} images to evaluate")
    images = images[: max_images or len(images)]
    generator = torch.Generator().manual_seed(seed)
    max_length = run.train_config.max_length
    device = next(run.model.parameters()).device
    generated = []
    for i in range(0, len(images), batch_size):
        rows = [im.index for im in images[i : i + batch_size]]
        ids = generate_captions(run.model, inputs[rows].to(device), max_length=max_length,
                                beam=beam, temperature=temperature, alpha=alpha,
                                generator=generator)  # fmt: skip
        generated += [run.vocab.decode(caption) for caption in ids]
    method = f"beam {beam}" if beam > 1 else ("greedy" if temperature == 0 else
                                               f"sampled, temperature {temperature:g}")  # fmt: skip
    return score_method(method, split, images, generated)


def attention_of(
    run: LoadedRun, evaluation: CaptionEvaluation, inputs: torch.Tensor, limit: int = 12
) -> list[np.ndarray]:
    """Attention maps (n + 1, K) of the first ``limit`` generated captions, for a model that
    attends over a CNN grid; an empty list for any other model."""
    if not run.model.config.attention or run.model.config.encoder != "cnn":
        return []
    images = evaluation.images[:limit]
    device = next(run.model.parameters()).device
    x = inputs[[im.index for im in images]].to(device)
    ids = [run.vocab.encode(words) for words in evaluation.generated[:limit]]
    return [m.cpu().numpy() for m in attention_maps(run.model, x, ids)]


def most_frequent_baseline(dataset: CaptionDataset, split: str = "test") -> CaptionEvaluation:
    caption = most_frequent_caption(dataset.split("train"))
    images = dataset.split(split)
    return score_method("most frequent caption", split, images, [caption] * len(images))


def nearest_neighbour_baseline(
    dataset: CaptionDataset, inputs: torch.Tensor, split: str = "test"
) -> CaptionEvaluation:
    """Each image gets the consensus reference of its nearest training image (L2 over pixels
    or features ``inputs``, rows aligned with ``dataset.images``)."""
    train, images = dataset.split("train"), dataset.split(split)
    flat = inputs.reshape(len(inputs), -1).float()
    train_x = flat[[im.index for im in train]]
    query = flat[[im.index for im in images]]
    nearest = torch.cdist(query, train_x).argmin(dim=1).tolist()
    generated = [consensus_caption(train[j].captions) for j in nearest]
    return score_method("nearest neighbour", split, images, generated)


def consensus_caption(captions: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The caption with the highest BLEU-4 against the other captions (ties: the first)."""
    if len(captions) == 1:
        return tuple(captions[0])
    scores = [bleu([c], [[o for j, o in enumerate(captions) if j != i]])[0][3]
              for i, c in enumerate(captions)]  # fmt: skip
    return tuple(captions[int(np.argmax(scores))])


# -- the HTML report ------------------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table.scores { border-collapse: collapse; margin-bottom: 20px; }
table.scores td, table.scores th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
table.scores td:first-child, table.scores th:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px; display: flex; gap: 10px; }
.card img { width: 96px; height: 96px; image-rendering: pixelated; flex: none; }
.generated { font-weight: 600; margin: 0 0 4px; }
.refs { margin: 0; padding-left: 16px; color: #555; font-size: 12px; }
.score { color: #777; font-size: 12px; margin-top: 4px; }
.attention { display: flex; flex-wrap: wrap; gap: 2px; margin-top: 6px; }
.attention figure { margin: 0; text-align: center; font-size: 10px; color: #555; }
.attention img { width: 40px; height: 40px; image-rendering: auto; }
"""


def png_data_uri(path: Path, side: int = 96) -> str:
    """The image as a PNG ``data:`` URI, at most ``side`` pixels a side (also the VQA report's)."""
    im = open_rgb(path)  # the training reader's size limit and colour rules
    im.thumbnail((side, side))
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attention_uri(path: Path, alpha: np.ndarray, side: int = 48) -> str:
    """The image dimmed where attention ``alpha`` (K,) is low: Xu et al.'s figure 3."""
    from PIL import Image

    grid = int(round(math.sqrt(alpha.size)))
    weights = alpha.reshape(grid, grid) / max(float(alpha.max()), 1e-12)
    mask = Image.fromarray(np.uint8(255 * weights)).resize((side, side), Image.Resampling.BILINEAR)
    pixels = np.asarray(open_rgb(path).resize((side, side)), dtype=np.float32)
    shade = 0.25 + 0.75 * np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(pixels * shade)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_report(
    model: CaptionEvaluation,
    baselines: Sequence[CaptionEvaluation] = (),
    *,
    title: str = "rnnlab captioning report",
    subtitle: str = "",
    max_images: int = 60,
    attention: Sequence[np.ndarray] = (),
) -> str:
    """The report as one HTML string (no script, no external resource). ``attention``: per
    image (in ``model.images`` order, as many as given), alpha (n + 1, K) over a square grid
    (``rnnlab.models.captioner.attention_maps``), drawn as one dimmed image per word."""
    e = html.escape
    metrics = list(model.scores.as_dict())
    head = "".join(f"<th>{e(m)}</th>" for m in metrics)
    rows = "".join(
        f"<tr><td>{e(ev.method)}</td>"
        + "".join(f"<td>{v:.3f}</td>" for v in ev.scores.as_dict().values())
        + "</tr>"
        for ev in (model, *baselines)
    )
    cards = []
    for i, im in enumerate(model.images[:max_images]):
        refs = "".join(f"<li>{e(' '.join(r))}</li>" for r in im.captions)
        b4, cider = model.scores.per_image_bleu[i][3], model.scores.per_image_cider[i]
        maps = (
            _attention_html(im.path, model.generated[i], attention[i]) if i < len(attention) else ""
        )
        cards.append(
            f'<div class="card"><img alt="{e(im.filename)}" src="{png_data_uri(im.path)}">'
            f'<div><p class="generated">{e(" ".join(model.generated[i]) or "(empty caption)")}</p>'
            f'<ul class="refs">{refs}</ul>'
            f'<div class="score">{e(im.filename)} · BLEU-4 {b4:.3f} · CIDEr-D {cider:.3f}</div>'
            f"{maps}"
            "</div></div>"
        )
    shown = min(max_images, len(model.images))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{e(title)}</h1><p>{e(subtitle)}</p>"
        f"<h2>{e(model.split)} split: {len(model.images)} images</h2>"
        f'<table class="scores"><tr><th>method</th>{head}</tr>{rows}</table>'
        f"<h2>{shown} held-out images: generated caption (bold), references, scores</h2>"
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )


def _attention_html(path: Path, words: Sequence[str], alpha: np.ndarray) -> str:
    figures = "".join(
        f'<figure><img alt="" src="{attention_uri(path, np.asarray(a))}">'
        f"<figcaption>{html.escape(word)}</figcaption></figure>"
        for word, a in zip([*words, "<end>"], alpha, strict=False)
    )
    return f'<div class="attention">{figures}</div>'


def write_report(path: str | Path, text: str) -> Path:
    """Write the report (parent folders created) atomically into its folder, never through a
    symbolic link (``rnnlab.io.write_inside``); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_inside(path.parent, path.name, text)
