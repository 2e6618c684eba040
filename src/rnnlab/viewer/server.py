"""The cell viewer's HTTP server: 127.0.0.1 only, Host-checked, size-capped, strict CSP.

Routes (everything else is 404; paths are matched exactly, so ``..`` never reaches the disk)::

    GET  /                      the static page (viewer/static/index.html)
    GET  /static/app.js, /static/style.css
    GET  /api/analysis          the viewer JSON (rnnlab.analysis.export.viewer_payload)
    GET  /api/activations?cells=L0.h.1,L0.c.7   any units' values over the text (<= MAX_CELLS)
    POST /api/sample            {"prime", "length", "temperature", "seed", "cells"} -> NDJSON,
                                one line per generated character, streamed as it is sampled
                                (a failure mid-stream ends it with one {"error": ...} line)

Defences, each for a known attack on local dev servers: binding 127.0.0.1 (nothing on the network
can connect); the Host header must name this server (DNS rebinding: a page on evil.example whose
name later resolves to 127.0.0.1 sends ``Host: evil.example``); request line, body and query caps
(a body over ``MAX_BODY`` is refused from its Content-Length before any of it is read); a
Content-Security-Policy that allows only this origin's own files (no inline script, no CDN);
``nosniff``; JSON is ``application/json``. The page renders corpus text with ``textContent``.

Cross-site requests (CSRF: any page the user visits can POST to 127.0.0.1, e.g. a form with a
``text/plain`` body): an ``/api/`` request whose ``Sec-Fetch-Site`` is not ``same-origin`` (or
``none``, typed by the user) is refused, and so is a POST whose ``Origin`` is not this server's
own or whose body is not ``application/json`` (which a cross-site page can only send after a
CORS preflight, and this server answers none). Every request body is checked field by field by
``rnnlab.validation`` (``SampleConfig``'s own fields and ranges, as ``rnnlab sample``'s flags),
unknown and duplicate keys refused, JSON nesting bounded; every error is a JSON
``{"error": ...}`` with a 4xx status, and an unexpected one a 500, never a traceback.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from rnnlab.analysis.analyze import Analysis
from rnnlab.analysis.export import unit_values, viewer_payload
from rnnlab.models import CharLM
from rnnlab.viewer.api import (
    RequestError,
    parse_body,
    sample_records,
    sample_request,
)

MAX_URL = 2048  # bytes of the request target
MAX_BODY = 8192  # bytes of a POST body
MAX_CELLS = 32  # units per /api/activations or /api/sample request
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


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, data: ViewerData, host: str = "127.0.0.1", port: int = 0) -> None:
        self.data = data
        super().__init__((host, port), ViewerHandler)
        bound_port = self.server_address[1]
        names = set(LOOPBACK) | {host}
        self.allowed_hosts = {f"{n}:{bound_port}" for n in names}
        self.allowed_origins = {f"http://{h}" for h in self.allowed_hosts}
        self.failures: list[str] = []  # the last 100 unexpected errors, kept, never printed

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a traceback here; the library never prints: keep one line."""
        self.record_failure(sys.exc_info()[1])

    def record_failure(self, error: BaseException | None) -> None:
        self.failures = [*self.failures[-99:], f"{type(error).__name__}: {error}"]

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

    def _other(self) -> None:
        """PUT, DELETE, OPTIONS, ...: 405 as JSON (http.server's own answer is an HTML 501)."""
        self._handle(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _other  # noqa: N815

    def _handle(self, method: str) -> None:
        self._streaming = False
        try:
            self._check_request()
            url = urlsplit(self.path)
            self._check_site(method, url.path)
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
            self._error(e.status, str(e), method)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug: a one-line 500, never a traceback on the console
            self.server.record_failure(e)
            if self._streaming:
                self.close_connection = True
            else:
                self._error(
                    HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(e).__name__})", method
                )

    def _error(self, status: HTTPStatus, message: str, method: str) -> None:
        self.close_connection = True
        body = json.dumps({"error": message}).encode()
        self._send(status, body, "application/json", body=method != "HEAD")

    def _check_site(self, method: str, path: str) -> None:
        """Refuse what another site's page makes the browser send (see the module's notes)."""
        site = self.headers.get("Sec-Fetch-Site")
        if path.startswith("/api/") and site is not None and site not in ("same-origin", "none"):
            raise RequestError(HTTPStatus.FORBIDDEN, f"cross-site request refused ({site})")
        if method in ("GET", "HEAD"):
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.server.allowed_origins:
            raise RequestError(HTTPStatus.FORBIDDEN, "Origin is not this server: refused")
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if method == "POST" and kind != "application/json":
            raise RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"
            )

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
        extra = sorted(k for k in query if k != "cells")
        if extra:
            message = f"GET /api/activations: {extra[0][:40]!r}: expected only cells=..."
            raise RequestError(HTTPStatus.BAD_REQUEST, message)
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
        return parse_body(self.rfile.read(length))

    def _sample(self, req: dict[str, Any]) -> None:
        data = self.server.data
        if data.model is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "live sampling needs a model")
        request = sample_request(req, data.tokens)
        if request.cells:
            self._cells(request.cells)  # validates
        self.send_response(HTTPStatus.OK)
        self._security_headers("application/x-ndjson")
        self.end_headers()  # no Content-Length: the body streams until the connection closes
        self.close_connection = True
        self._streaming = True
        with data.lock:
            try:
                for record in sample_records(data.model, data.tokens, request):
                    self._line(record)
            except (BrokenPipeError, ConnectionResetError):
                return
            except Exception as e:  # after the 200: the stream ends with the error, in one line
                self.server.record_failure(e)
                self._line({"error": f"sampling failed ({type(e).__name__}: {e})"[:300]})

    def _line(self, record: dict[str, Any]) -> None:
        self.wfile.write((json.dumps(record, allow_nan=False) + "\n").encode())
        self.wfile.flush()
