"""The viewer in real headless Chromium (Debian's, driven by Playwright): rendering, unit choice,
hover, live sampling, XSS, no outside requests, readable glyphs (WCAG contrast from computed
colours), a cross-site page refused; the self-contained HTML export too.

Slow (a browser start). Skipped when no Chromium is installed, unless RNNLAB_REQUIRE_BROWSER=1
(CI sets it, so a missing browser fails there instead of passing silently).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from analysis_models import XSS, tiny_viewer

from rnnlab.viewer import ViewerServer, write_html

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("RNNLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("RNNLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM} (RNNLAB_REQUIRE_BROWSER=1)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served():
    data, text = tiny_viewer()
    srv = ViewerServer(data)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, text
    srv.shutdown()
    srv.server_close()


class Watch:
    """Everything a page does that a test should know about: dialogs, requests, errors."""

    def __init__(self, page) -> None:
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def open_page(browser, url):
    page = browser.new_page()
    watch = Watch(page)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    return page, watch


def test_renders_one_span_per_character_and_recolours(browser, served, tmp_path):
    srv, _ = served
    page, watch = open_page(browser, srv.url)
    text = srv.data.payload["text"]
    assert page.locator("#text > span").count() == len(text)
    assert page.eval_on_selector("#text", "e => e.textContent") == text
    before = page.eval_on_selector_all("#text > span", "s => s.map(x => x.style.backgroundColor)")
    units = srv.data.units
    target = next(u for u in units if u != page.eval_on_selector("#unit", "e => e.value"))
    page.select_option("#unit", target)
    page.wait_for_selector(f"body[data-unit='{target}']")
    after = page.eval_on_selector_all("#text > span", "s => s.map(x => x.style.backgroundColor)")
    assert after != before and len(set(after)) > 3
    page.locator("#features button.unit").first.click()
    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert (tmp_path / "viewer.png").stat().st_size > 1000
    assert watch.errors == [] and watch.dialogs == []


def test_hover_shows_predictions(browser, served):
    srv, _ = served
    page, watch = open_page(browser, srv.url)
    page.locator("#text > span").nth(5).hover()
    tip = page.locator("#tip")
    tip.wait_for(state="visible")
    content = tip.text_content()
    top = srv.data.payload["top"][5]
    assert content.startswith("next:") and len(top) == 5
    assert f"{top[0][1] * 100:.1f}%" in content
    assert watch.errors == []


def test_live_sampling_appends_characters(browser, served):
    srv, _ = served
    page, watch = open_page(browser, srv.url)
    page.fill("#prime", "the ")
    page.fill("#length", "40")
    page.click("#sample-go")
    page.wait_for_selector("#sample-text[data-done='1']", timeout=30000)
    assert page.locator("#sample-text > span").count() == 40
    colours = page.eval_on_selector_all(
        "#sample-text > span", "s => s.map(x => x.style.backgroundColor)"
    )
    assert all(c.startswith("rgb") for c in colours)  # coloured as they arrive
    assert watch.errors == []


def test_xss_renders_literally_and_nothing_leaves_the_machine(browser, served):
    srv, _ = served
    page, watch = open_page(browser, srv.url)
    page.wait_for_timeout(300)  # give an injected handler time to fire, if there were one
    assert watch.dialogs == []
    assert page.evaluate("document.querySelectorAll('script').length") == 1  # app.js only
    assert page.locator("#text img, #text script").count() == 0
    assert XSS in page.eval_on_selector("#text", "e => e.textContent")
    assert "</script>" in page.eval_on_selector("#text", "e => e.textContent")
    page.click("#sample-go")
    page.wait_for_selector("#sample-text[data-done='1']", timeout=30000)
    hosts = {urlsplit(u).hostname for u in watch.requests}
    assert hosts == {"127.0.0.1"}, watch.requests


def test_html_export_works_offline(browser, tmp_path):
    data, _ = tiny_viewer()
    path = write_html(data.payload, tmp_path / "cells.html")
    page, watch = open_page(browser, path.as_uri())
    assert page.locator("#text > span").count() == len(data.payload["text"])
    assert watch.dialogs == [] and watch.errors == []
    assert page.locator("#text img").count() == 0
    assert page.is_hidden("#sample-panel")
    first = page.eval_on_selector_all("#text > span", "s => s.map(x => x.style.backgroundColor)")
    assert len(set(first)) > 3  # the first embedded unit is drawn
    assert all(u.startswith("file:") for u in watch.requests), watch.requests


def contrast(fg, bg):
    """WCAG 2 contrast ratio of two sRGB colours (0-255 triples)."""

    def luminance(c):
        s = [u / 255 for u in c]
        lin = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in s]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def rgb(css):
    """'rgb(1, 2, 3)' (as getComputedStyle writes an opaque colour) -> (1, 2, 3)."""
    assert css.startswith("rgb(") and css.count(",") == 2, css  # opaque, no alpha
    return tuple(int(x) for x in css[4:-1].split(","))


COMPUTED = "s => s.map(x => [getComputedStyle(x).color, getComputedStyle(x).backgroundColor])"


def assert_readable(pairs, at_least=4.5):
    worst = min(contrast(rgb(fg), rgb(bg)) for fg, bg in pairs)
    assert worst >= at_least, worst


def sweep_viewer():
    """The tiny viewer with unit L0.h.0 swept over every activation from -1 to +1 (both ends
    exact) and c unit L0.c.0 from -6 to +6 (shown as tanh), embedded and served alike."""
    import numpy as np

    data, _ = tiny_viewer()
    n = len(data.payload["text"])
    sweep = np.linspace(-1.0, 1.0, n)
    wide = np.linspace(-6.0, 6.0, n)
    data.activations[:, data.index["L0.h.0"]] = sweep
    data.activations[:, data.index["L0.c.0"]] = wide
    data.payload["activations"] = {"L0.h.0": sweep.tolist(), "L0.c.0": wide.tolist()}
    return data


def test_every_character_is_readable_at_every_activation(browser, tmp_path):
    """WCAG AA (4.5:1) between each glyph's computed colour and its computed background, over an
    activation sweep that includes -1 and +1 (full red and full blue), in the exported page and
    the served one, and in the live sample."""
    data = sweep_viewer()
    page, watch = open_page(browser, write_html(data.payload, tmp_path / "c.html").as_uri())
    for unit in ("L0.h.0", "L0.c.0"):
        page.select_option("#unit", unit)
        page.wait_for_selector(f"body[data-unit='{unit}']")
        pairs = page.eval_on_selector_all("#text > span", COMPUTED)
        backgrounds = {bg for _, bg in pairs}
        assert {"rgb(255, 0, 0)", "rgb(0, 0, 255)", "rgb(255, 255, 255)"} <= backgrounds
        assert_readable(pairs)
    legend = page.eval_on_selector_all("#legend span", "s => s.map(x => getComputedStyle(x).color)")
    header = page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
    assert_readable([(c, header) for c in legend])
    assert watch.errors == []

    srv = ViewerServer(data)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        page, watch = open_page(browser, srv.url)
        page.select_option("#unit", "L0.h.0")
        page.wait_for_selector("body[data-unit='L0.h.0']")
        assert_readable(page.eval_on_selector_all("#text > span", COMPUTED))
        page.fill("#prime", "the ")
        page.fill("#length", "60")
        page.click("#sample-go")
        page.wait_for_selector("#sample-text[data-done='1']", timeout=30000)
        assert_readable(page.eval_on_selector_all("#sample-text > span", COMPUTED))
        assert watch.errors == []
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_cross_site_page_cannot_make_the_viewer_sample(browser, served, tmp_path):
    """A real cross-site attempt: a page from another origin (a file:// page here) posts a form
    and a no-cors fetch to the viewer; Chromium sends Origin/Sec-Fetch-Site, and nothing is
    sampled (the server answers 403 before any work)."""
    srv, _ = served
    seen = []
    original = srv.data.lock

    class Counting:
        def __enter__(self):
            seen.append(1)
            return original.__enter__()

        def __exit__(self, *a):
            return original.__exit__(*a)

    srv.data.lock = Counting()
    try:
        attack = tmp_path / "attack.html"
        target = srv.url + "api/sample"
        attack.write_text(
            f'<form id="f" method="POST" action="{target}" enctype="text/plain">'
            '<input name=\'{"prime":"the ","length":5,"x":"\' value=\'"}\'></form>'
            f'<script>fetch("{target}", {{method: "POST", mode: "no-cors", body: "{{}}"}});'
            "document.getElementById('f').submit();</script>"
        )
        page = browser.new_page()
        responses = []
        page.on("response", lambda r: responses.append((r.url, r.status)))
        page.goto(attack.as_uri(), wait_until="commit")
        page.wait_for_timeout(1500)
        assert seen == []  # the sampler never ran
        statuses = [s for u, s in responses if u.startswith(target)]
        assert statuses and all(s in (403, 415) for s in statuses), responses
    finally:
        srv.data.lock = original
