"""The viewer's server (C11): loopback only, Host check, request caps, exact routes, headers,
live sampling; and the self-contained HTML export."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time

import pytest
from analysis_models import XSS, tiny_viewer

from rnnlab.viewer import ViewerServer, render_html
from rnnlab.viewer.server import MAX_BODY, MAX_CELLS


@pytest.fixture(scope="module")
def server():
    data, text = tiny_viewer()
    srv = ViewerServer(data)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, host=None, body=None, headers=None):
    port = srv.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"127.0.0.1:{port}" if host is None else host)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_binds_loopback_only(server):
    assert server.server_address[0] == "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outbound address
        address = probe.getsockname()[0]
    except OSError:
        address = None
    finally:
        probe.close()
    if address and not address.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((address, server.server_address[1]), timeout=2)


def test_host_header_checked(server):
    port = server.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        resp, _ = request(server, "GET", "/", host=host)
        assert resp.status == 200
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", ""):
        resp, body = request(server, "GET", "/api/analysis", host=host)
        assert resp.status == 403
        assert b'"text"' not in body


def test_security_headers_and_types(server):
    resp, body = request(server, "GET", "/")
    csp = resp.getheader("Content-Security-Policy")
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    assert resp.getheader("Content-Type").startswith("text/html")
    assert not re.search(rb"<script(?![^>]*\bsrc=)[^>]*>", body)  # no inline script
    assert not re.search(rb"(src|href)=\"(https?:)?//", body)  # nothing from another origin
    resp, body = request(server, "GET", "/api/analysis")
    assert resp.getheader("Content-Type") == "application/json"
    assert resp.getheader("Content-Security-Policy") == csp
    payload = json.loads(body)
    assert payload["format"] == "rnnlab.cells" and payload["version"] == 1
    assert XSS in payload["text"]


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/..",
        "/static/",
        "/static/app.js/../../server.py",
        "/etc/passwd",
    ],
)
def test_path_traversal_is_404(server, path):
    resp, body = request(server, "GET", path)
    assert resp.status == 404
    assert b"root:" not in body


def test_query_and_url_limits(server):
    units = json.loads(request(server, "GET", "/api/analysis")[1])["units"]
    resp, body = request(server, "GET", f"/api/activations?cells={units[0]},{units[1]}")
    assert resp.status == 200
    got = json.loads(body)
    assert set(got) == {units[0], units[1]} and len(got[units[0]]) > 0
    many = ",".join([units[0]] * (MAX_CELLS + 1))
    assert request(server, "GET", f"/api/activations?cells={many}")[0].status == 400
    assert request(server, "GET", "/api/activations?cells=L9.h.999")[0].status == 400
    assert request(server, "GET", "/api/activations")[0].status == 400
    assert request(server, "GET", "/api/analysis?x=" + "a" * 5000)[0].status == 414


def test_oversized_body_refused_before_it_is_read(server):
    """A 100 MB upload: the server answers 413 after the headers, having read none of it."""
    port = server.server_address[1]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST /api/sample HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {100_000_000}\r\n\r\n".encode()
    )
    sent = 0
    start = time.monotonic()
    try:
        sock.sendall(b"x" * 65536)  # a little of the body; the rest is never sent
        sent = 65536
    except OSError:
        pass
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"HTTP/1.0 413") or reply.startswith(b"HTTP/1.1 413"), reply[:80]
    assert time.monotonic() - start < 5 and sent <= 65536
    body = json.dumps({"prime": "a" * (MAX_BODY + 10)}).encode()
    assert request(server, "POST", "/api/sample", body=body)[0].status == 413
    chunked = {"Transfer-Encoding": "chunked"}
    assert request(server, "POST", "/api/sample", headers=chunked)[0].status == 411


def test_live_sampling_streams_characters(server):
    units = json.loads(request(server, "GET", "/api/analysis")[1])["units"]
    body = json.dumps({"prime": "the ", "length": 25, "temperature": 1.0, "cells": [units[0]]})
    resp, data = request(server, "POST", "/api/sample", body=body.encode())
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/x-ndjson"
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert len(records) == 25
    tokens = set(server.data.tokens)
    assert all(r["char"] in tokens and set(r["act"]) == {units[0]} for r in records)
    assert all(len(r["top"]) == 5 for r in records)
    for bad in (
        {"prime": "☃"},
        {"length": 0},
        {"length": 10**6},
        {"temperature": -1},
        {"cells": ["nope"]},
        [1, 2],
    ):
        resp, _ = request(server, "POST", "/api/sample", body=json.dumps(bad).encode())
        assert resp.status == 400
    assert request(server, "POST", "/api/sample", body=b"{not json")[0].status == 400
    assert request(server, "POST", "/api/analysis", body=b"{}")[0].status == 405


def test_html_export_is_self_contained_and_escaped():
    data, text = tiny_viewer()
    page = render_html(data.payload)
    assert XSS not in page and "<img" not in page  # the payload only as \\u003c-escaped JSON
    assert page.count("<script") == 2  # the data block and the page's own script
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "'sha256-" in csp and "unsafe-inline" not in csp
    assert not re.search(r"(src|href)=\"", page)  # loads nothing
    block = re.search(r'id="rnnlab-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(block)["text"] == data.payload["text"]
