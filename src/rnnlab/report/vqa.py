"""The VQA ``predict --report`` page: one self-contained HTML file (no script, no external
resource) with, per question, the image, the question, the top answers with their
probabilities and, for a model with stacked attention, the image dimmed where the last attention
layer looks (drawn as the captioning report draws Xu et al.'s maps)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rnnlab.report.captions import attention_uri, png_data_uri, write_report

__all__ = ["Prediction", "render_predictions", "write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.card { display: flex; gap: 10px; border: 1px solid #ddd; border-radius: 6px; padding: 10px;
        width: 440px; }
.card img { width: 96px; height: 96px; image-rendering: pixelated; }
.question { font-weight: bold; margin: 0 0 6px 0; }
table.answers td { padding: 1px 8px 1px 0; }
.bar { background: #4a7; height: 8px; }
figure { margin: 0; font-size: 10px; color: #555; text-align: center; }
"""


@dataclass(frozen=True)
class Prediction:
    """One answered question: the image file, the question, the top answers with their
    probabilities (most likely first) and the attention weights (K,) over a square grid, or
    None."""

    image: Path
    question: str
    answers: Sequence[tuple[str, float]]
    attention: np.ndarray | None = None


def render_predictions(predictions: Sequence[Prediction], *, title: str = "rnnlab VQA",
                       subtitle: str = "") -> str:  # fmt: skip
    """The page as one HTML string."""
    e = html.escape
    cards = []
    for p in predictions:
        rows = "".join(
            f"<tr><td>{e(a)}</td><td>{prob:.3f}</td><td><div class='bar' "
            f"style='width:{max(1, round(120 * prob))}px'></div></td></tr>"
            for a, prob in p.answers
        )
        att = ""
        if p.attention is not None:
            att = (f'<figure><img alt="attention" src="{attention_uri(p.image, p.attention, 96)}">'
                   "<figcaption>attention</figcaption></figure>")  # fmt: skip
        cards.append(
            f'<div class="card"><img alt="{e(p.image.name)}" src="{png_data_uri(p.image, 96)}">'
            f"{att}<div><p class='question'>{e(p.question)}</p>"
            f'<table class="answers">{rows}</table></div></div>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{e(title)}</h1><p>{e(subtitle)}</p>"
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )
