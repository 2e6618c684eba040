"""The cell viewer's HTTP server: 127.0.0.1 only, Host-checked, size-capped, strict CSP.

Routes (everything else is 404; paths are matched exactly, so ``..`` never reaches the disk)::

    GET  /                      the static page (viewer/static/index.html)
    GET  /static/app.js, /static/style.css
    GET  /api/analysis          the viewer JSON (rnnlab.analysis.export.viewer_payload)
    GET  /api/activations?cells=L0.h.1,L0.c.7   any units' values over the text (<= MAX_CELLS)
    POST /api/sample            {"prime", "length", "temperature", "seed", "cells"} -> NDJSON,
                                one line per generated character, streamed as it is sampled

Defences, each for a known attack on local dev servers: binding 127.0.0.1 (nothing on the network
can connect); the Host header must name this server (DNS rebinding: a page on evil.example whose
name later resolves to 127.0.0.1 sends ``Host: evil.example``); request line, body and query caps
(a body over ``MAX_BODY`` is refused from its Content-Length before any of it is read); a
Content-Security-Policy that allows only this origin's own files (no inline script, no CDN);
``nosniff``; JSON is ``application/json``. The page renders corpus text with ``textContent``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from rnnlab.analysis.analyze import Analysis
from rnnlab.analysis.export import unit_values, viewer_payload
from rnnlab.analysis.trace import iter_trace
from rnnlab.models import CharLM

MAX_URL = 2048  # bytes of the request target
MAX_BODY = 8192  # bytes of a POST body
MAX_CELLS = 32  # units per /api/activations or /api/sample request
MAX_SAMPLE = 2000  # characters per live sample
MAX_PRIME = 1000  # characters of a live sample's prime
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'none'"
)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
LOOPBACK = ("127.0.0.1", "localhost")


def static_file(name: str) -> bytes:
    """A file of the page, from the installed package (``rnnlab/viewer/static``)."""
    return resources.files("rnnlab.viewer").joinpath("static", name).read_bytes()


@dataclass
class ViewerData:
    """What the server shows: ``payload`` (the viewer JSON), every unit's activations over its
    text (``activations`` (N, U), names ``units``), and optionally the model for live sampling
    with its vocabulary ``tokens``."""

    payload: dict[str, Any]
    units: list[str]
    activations: np.ndarray
    model: CharLM | None = None
    tokens: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.activations.shape != (len(self.payload["text"]), len(self.units)):
            raise ValueError(
                f"activations: expected shape ({len(self.payload['text'])}, {len(self.units)}), "
                f"got {self.activations.shape}"
            )
        self.index = {u: i for i, u in enumerate(self.units)}
        self.lock = threading.Lock()  # one sampler at a time on the shared model


def viewer_data(
    analysis: Analysis,
    tokens: list[str],
    model: CharLM | None = None,
    units: list[str] | None = None,
) -> ViewerData:
    """ViewerData for an ``Analysis``: its payload (``viewer_payload``; the model's shape as
    ``model_info``) plus every unit's activations over the window, and the model to sample."""
    info: dict[str, Any] = {}
    if model is not None:
        info = {
            "cell": model.rnn.cell,
            "hidden_size": model.rnn.hidden_size,
            "num_layers": model.rnn.num_layers,
            "vocab_size": model.head.out_features,
        }
    payload = viewer_payload(analysis, tokens, info, units)
    w = analysis.window
    return ViewerData(payload, list(w.units), w.activations, model, list(tokens))


class RequestError(Exception):
    """An HTTP error with a one-line message for the JSON body."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: ViewerData, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data = data
        super().__init__((host, port), ViewerHandler)
        bound_port = self.server_address[1]
        names = set(LOOPBACK) | {host}
        self.allowed_hosts = {f"{n}:{bound_port}" for n in names}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "rnnlab-viewer"
    sys_version = ""
    timeout = 30  # seconds a client may stall mid-request before its socket is closed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the library never prints; errors reach the client as JSON."""

    # -- dispatch -------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def _handle(self, method: str) -> None:
        try:
            self._check_request()
            url = urlsplit(self.path)
            if method in ("GET", "HEAD") and url.path in STATIC:
                name, kind = STATIC[url.path]
                self._send(HTTPStatus.OK, static_file(name), kind, body=method == "GET")
            elif method == "GET" and url.path == "/api/analysis":
                self._json(self.server.data.payload)
            elif method == "GET" and url.path == "/api/activations":
                self._json(self._activations(parse_qs(url.query)))
            elif method == "POST" and url.path == "/api/sample":
                self._sample(self._read_json())
            elif url.path in STATIC or url.path.startswith("/api/"):
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here")
            else:
                raise RequestError(HTTPStatus.NOT_FOUND, "not found")
        except RequestError as e:
            self.close_connection = True
            body = json.dumps({"error": str(e)}).encode()
            self._send(e.status, body, "application/json", body=method != "HEAD")

    def _check_request(self) -> None:
        if self.headers.get("Host", "") not in self.server.allowed_hosts:
            raise RequestError(HTTPStatus.FORBIDDEN, "Host header does not name this server")
        if len(self.path) > MAX_URL:
            raise RequestError(HTTPStatus.REQUEST_URI_TOO_LONG, f"URL over {MAX_URL} bytes")

    def _send(self, status: HTTPStatus, payload: bytes, kind: str, body: bool = True) -> None:
        self.send_response(status)
        self._security_headers(kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _security_headers(self, kind: str) -> None:
        self.send_header("Content-Type", kind)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")

    def _json(self, obj: Any) -> None:
        self._send(HTTPStatus.OK, json.dumps(obj, allow_nan=False).encode(), "application/json")

    # -- API ------------------------------------------------------------------------------------

    def _cells(self, cells: list[str]) -> list[int]:
        if not cells:
            raise RequestError(HTTPStatus.BAD_REQUEST, "cells: give at least one unit")
        if len(cells) > MAX_CELLS:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"cells: at most {MAX_CELLS} units")
        index = self.server.data.index
        unknown = [c for c in cells if c not in index]
        if unknown:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"cells: unknown unit {unknown[0][:40]!r}")
        return [index[c] for c in cells]

    def _activations(self, query: dict[str, list[str]]) -> dict[str, list[float]]:
        cells = [c for v in query.get("cells", []) for c in v.split(",") if c]
        cols = self._cells(cells)
        acts = self.server.data.activations
        return {c: unit_values(acts[:, j]) for c, j in zip(cells, cols, strict=True)}

    def _read_json(self) -> dict[str, Any]:
        if "Transfer-Encoding" in self.headers:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length body")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required") from None
        if length < 0 or length > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        try:
            obj = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body: expected JSON") from None
        if not isinstance(obj, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "body: expected a JSON object")
        return obj

    def _sample(self, req: dict[str, Any]) -> None:
        data = self.server.data
        if data.model is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "live sampling needs a model")
        prime = req.get("prime", "")
        length = req.get("length", 200)
        temperature = req.get("temperature", 1.0)
        seed = req.get("seed", 0)
        if not isinstance(prime, str) or len(prime) > MAX_PRIME:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"prime: a string of <= {MAX_PRIME} chars")
        if not isinstance(length, int) or not 0 < length <= MAX_SAMPLE:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"length: an integer in 1..{MAX_SAMPLE}")
        if not isinstance(temperature, (int, float)) or not 0 < temperature <= 10:
            raise RequestError(HTTPStatus.BAD_REQUEST, "temperature: a number in (0, 10]")
        if not isinstance(seed, int):
            raise RequestError(HTTPStatus.BAD_REQUEST, "seed: an integer")
        cells = req.get("cells", [])
        if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
            raise RequestError(HTTPStatus.BAD_REQUEST, "cells: a list of unit names")
        if cells:
            self._cells(cells)  # validates
        stoi = {t: i for i, t in enumerate(data.tokens)}
        unseen = sorted({ch for ch in prime if ch not in stoi})
        if unseen:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"prime: unseen characters {unseen[:10]}")
        ids = [stoi[ch] for ch in prime] or [0]
        self.send_response(HTTPStatus.OK)
        self._security_headers("application/x-ndjson")
        self.end_headers()  # no Content-Length: the body streams until the connection closes
        self.close_connection = True
        with data.lock:
            for record in _sample_records(data, ids, length, float(temperature), seed, cells):
                try:
                    self.wfile.write((json.dumps(record) + "\n").encode())
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return


def _sample_records(
    data: ViewerData,
    ids: list[int],
    length: int,
    temperature: float,
    seed: int,
    cells: list[str],
) -> Iterator[dict[str, Any]]:
    """Sample ``length`` characters after ``ids``; yield, per character, the character, the
    chosen units' activations after reading it, and the top-5 next-character predictions."""
    model = data.model
    if model is None:
        raise ValueError("live sampling needs a model")
    gen = torch.Generator().manual_seed(seed)
    *_, last = iter_trace(model, ids, chunk_len=256, top_k=1)
    state, logp = last.state, last.next_logp
    for _ in range(length):
        probs = torch.softmax(torch.as_tensor(logp) / temperature, -1)
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        (chunk,) = iter_trace(model, [nxt], chunk_len=1, top_k=5, state=state)
        state, logp = chunk.state, chunk.next_logp
        names, a = chunk.units()
        values = {c: round(float(a[0, names.index(c)]), 3) for c in cells}
        yield {
            "char": data.tokens[nxt],
            "act": values,
            "top": [
                [data.tokens[int(i)], round(float(p), 4)]
                for i, p in zip(chunk.top_ids[0], chunk.top_probs[0], strict=True)
            ],
        }
