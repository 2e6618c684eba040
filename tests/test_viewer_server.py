"""The viewer's server (C11): loopback only, Host check, cross-site requests refused, request
caps, exact routes, headers, live sampling with every field checked as the CLI checks it, a fuzz
of every endpoint; and the self-contained HTML export."""

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
    headers = dict(headers or {})
    if method == "POST":
        headers.setdefault("Content-Type", "application/json")  # what the page's fetch sends
    for k, v in headers.items():
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
    assert request(server, "GET", f"/api/activations?cells={units[0]}&top=3")[0].status == 400
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


def sample_body(**fields):
    return json.dumps({"prime": "the ", "length": 3, **fields}).encode()


def test_cross_site_requests_are_refused(server):
    """A page on another site can make the browser POST here: a form (text/plain, urlencoded or
    multipart, no preflight) or a fetch; the browser names the site in Origin/Sec-Fetch-Site."""
    port = server.server_address[1]
    own = f"http://127.0.0.1:{port}"
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    for headers in (
        evil,
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Origin": f"http://127.0.0.1:{port + 1}"},
        {"Origin": f"https://127.0.0.1:{port}"},
        {"Origin": own, "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        resp, body = request(server, "POST", "/api/sample", body=sample_body(), headers=headers)
        assert resp.status == 403, headers
        assert resp.getheader("Content-Type") == "application/json" and "error" in json.loads(body)
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""):
        resp, body = request(
            server, "POST", "/api/sample", body=sample_body(), headers={"Content-Type": kind}
        )
        assert resp.status == 415 and "application/json" in json.loads(body)["error"], kind
    units = server.data.units
    cross = {"Sec-Fetch-Site": "cross-site"}
    resp, _ = request(server, "GET", f"/api/activations?cells={units[0]}", headers=cross)
    assert resp.status == 403
    assert request(server, "GET", "/", headers=cross)[0].status == 200  # a link to the page
    for headers in ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {}):
        resp, data = request(server, "POST", "/api/sample", body=sample_body(), headers=headers)
        assert resp.status == 200 and len(data.decode().splitlines()) == 3


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1e-300},
        {"temperature": 5e-324},
        {"temperature": 1e-6},
        {"temperature": 1e6},
        {"temperature": 0},  # argmax, as `rnnlab sample --temperature 0`
        {"seed": 2**63 - 1},
        {"seed": None},  # fresh entropy, as `rnnlab sample` without --seed
        {"length": 1, "prime": ""},
    ],
)
def test_extreme_but_valid_values_sample(server, fields):
    body = json.dumps({"prime": "the ", "length": 4, **fields}).encode()
    resp, data = request(server, "POST", "/api/sample", body=body)
    assert resp.status == 200
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert len(records) == fields.get("length", 4) and all("char" in r for r in records)
    assert server.failures == []


@pytest.mark.parametrize(
    ("fields", "field", "found"),
    [
        ({"seed": 2**64}, "seed", "18446744073709551616"),
        ({"seed": 2**63}, "seed", "9223372036854775808"),
        ({"seed": -1}, "seed", "-1"),
        ({"seed": 1.5}, "seed", "1.5"),
        ({"temperature": 1e7}, "temperature", "10000000.0"),
        ({"temperature": -1e-300}, "temperature", "-1e-300"),
        ({"temperature": "1"}, "temperature", "'1'"),
        ({"temperature": True}, "temperature", "True"),
        ({"length": 2001}, "length", "2001"),
        ({"length": 0}, "length", "0"),
        ({"length": 10**30}, "length", str(10**30)),
    ],
)
def test_each_field_is_checked_by_the_cli_validator(server, fields, field, found):
    resp, body = request(server, "POST", "/api/sample", body=sample_body(**fields))
    assert resp.status == 400
    error = json.loads(body)["error"]
    # rnnlab.validation's one-line form: source, field, expected, found
    assert error.startswith(f"POST /api/sample: {field}: expected ") and f"found {found}" in error


def test_hostile_json_gets_a_json_answer(server):
    for raw in (
        b"[" * 4000,  # a RecursionError in json.loads: the request got no answer at all
        b'{"cells": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"prime": "a", "prime": "b"}',
        b'{"temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"seed": ' + b"9" * 5000 + b"}",
        b'{"length": 3, "top_k": 2}',
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",
        b"",
    ):
        resp, body = request(server, "POST", "/api/sample", body=raw)
        assert resp.status == 400, raw[:40]
        assert "\n" not in json.loads(body)["error"]
    assert server.failures == []


def hostile_value(rng, depth=0):
    """A JSON value chosen to break a server: wrong types, extreme numbers, odd strings."""
    atoms = [
        None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63), 2**64, 10**300, 0.0, -0.0, 1e-320,
        1e308, -1e308, 1.5, "", "a", "\x00", "☃", "\ud800", "the ", "L0.h.0", "<script>",
        "a" * 1200, "0", "1e9",
    ]  # fmt: skip
    roll = rng.random()
    if depth < 3 and roll < 0.15:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3 and roll < 0.25:
        return {rng.choice(["a", "length", "cells", ""]): hostile_value(rng, depth + 1)}
    return rng.choice(atoms)


def hostile_body(rng):
    keys = ["prime", "length", "temperature", "seed", "cells", "top_k", "__proto__", ""]
    kind = rng.random()
    if kind < 0.6:
        obj = {k: hostile_value(rng) for k in rng.sample(keys, rng.randint(0, 5))}
        return json.dumps(obj).encode("utf-8", "surrogatepass")
    if kind < 0.8:
        valid = bytearray(sample_body(length=2))
        for _ in range(rng.randint(1, 4)):
            valid[rng.randrange(len(valid))] = rng.randrange(256)
        return bytes(valid)
    if kind < 0.9:
        return sample_body()[: rng.randrange(20)]
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def hostile_query(rng):
    units = ["L0.h.0", "L0.c.3", "L9.h.999", "", "%00", "%ff", "..", ",,,", "a" * 300]
    parts = [f"cells={','.join(rng.choices(units, k=rng.randint(0, 40)))}"]
    if rng.random() < 0.3:
        parts.append(rng.choice(["cells=", "x=1", "cells", "&&&", "cells=%E2%98%83", "=%"]))
    return "&".join(rng.sample(parts, len(parts)))


def test_fuzz_every_endpoint(server):
    """250 hostile requests (fixed seed) against the real server on 127.0.0.1: every one gets an
    answer, a known status, a one-line JSON error unless it succeeded, and no failure inside."""
    import random

    rng = random.Random(23)
    paths = ["/", "/index.html", "/static/app.js", "/static/style.css", "/api/analysis",
             "/api/activations", "/api/sample", "/api/", "/nope"]  # fmt: skip
    methods = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]
    allowed = {200, 400, 403, 404, 405, 411, 413, 414, 415}
    for i in range(250):
        method = "POST" if i % 2 else rng.choice(methods)
        path = "/api/sample" if i % 4 == 1 else rng.choice(paths)
        if path == "/api/activations" or rng.random() < 0.1:
            path += "?" + hostile_query(rng)
        body = hostile_body(rng) if method in ("POST", "PUT", "PATCH") else None
        resp, data = request(server, method, path, body=body)
        assert resp.status in allowed, (method, path, body, resp.status)
        if resp.status != 200 and method != "HEAD":
            assert resp.getheader("Content-Type") == "application/json", (method, path)
            error = json.loads(data)["error"]
            assert error and "\n" not in error and "Traceback" not in error
        elif path == "/api/sample" and resp.status == 200:
            records = [json.loads(line) for line in data.decode().splitlines()]
            assert records and all("error" not in r for r in records), body
    assert server.failures == []


def test_a_model_that_fails_mid_stream_ends_it_with_an_error_line(capfd):
    """A diverged model (NaN weights) after the 200 has gone: the stream's last line says why;
    the server prints nothing (it used to print a traceback) and keeps serving."""
    import torch

    data, _ = tiny_viewer()
    with torch.no_grad():
        data.model.head.weight.fill_(float("nan"))
    srv = ViewerServer(data)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        resp, body = request(srv, "POST", "/api/sample", body=sample_body())
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert resp.status == 200 and list(lines[-1]) == ["error"]
        assert "non-finite" in lines[-1]["error"] and len(srv.failures) == 1
        assert request(srv, "GET", "/api/analysis")[0].status == 200
        assert capfd.readouterr().err == ""
    finally:
        srv.shutdown()
        srv.server_close()
