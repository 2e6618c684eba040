"""``rnnlab cells --html``: the viewer as one self-contained HTML file (no server, no sampling).

The page's own script and stylesheet are inlined and allowed by hash in a
``<meta http-equiv="Content-Security-Policy">`` (``default-src 'none'``: the file can load
nothing and run no other script); the analysis JSON sits in a ``<script type="application/json">``
block (data, never executed) with ``<``, ``>`` and ``&`` escaped as ``\\u003c``..., so no text in
it can close the block. The script reads it with ``textContent`` and renders as the served page.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from rnnlab.io import write_inside
from rnnlab.viewer.server import static_file


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def _json_block(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(payload: dict[str, Any]) -> str:
    """The self-contained page for a viewer payload (``rnnlab.analysis.export.viewer_payload``)."""
    page = static_file("index.html").decode("utf-8")
    script = static_file("app.js").decode("utf-8")
    style = static_file("style.css").decode("utf-8")
    if "</script" in script.lower() or "</style" in style.lower():
        raise ValueError("viewer assets must not contain a closing script/style tag")
    csp = (
        f"default-src 'none'; script-src {_hash(script)}; style-src {_hash(style)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    head_links = (
        '<link rel="stylesheet" href="/static/style.css">\n'
        '<script src="/static/app.js" defer></script>'
    )
    if head_links not in page:
        raise ValueError("index.html: the stylesheet/script links to inline are missing")
    page = page.replace(
        head_links,
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n<style>{style}</style>',
    )
    body_end = (
        f'<script type="application/json" id="rnnlab-data">{_json_block(payload)}</script>\n'
        f"<script>{script}</script>\n</body>"
    )
    return page.replace("</body>", body_end, 1)


def write_html(payload: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_inside(path.parent, path.name, render_html(payload))  # never through a link
