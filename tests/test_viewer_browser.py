"""The viewer in real headless Chromium (Debian's, driven by Playwright): rendering, unit choice,
hover, live sampling, XSS, no outside requests; the self-contained HTML export too.

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
