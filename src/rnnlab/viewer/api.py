"""The viewer API's request bodies, checked, and live sampling (the server's ``/api/sample``).

Every body is checked before any work: ``parse_body`` (UTF-8 JSON object, bounded nesting, no
duplicate keys, no NaN) and ``sample_request`` (each field through ``rnnlab.validation`` with
``SampleConfig``'s fields, the validator and ranges of ``rnnlab sample``'s flags). A problem is a
``RequestError``: an HTTP status and a one-line message naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np
import torch

from rnnlab.analysis.trace import iter_trace
from rnnlab.models import CharLM
from rnnlab.sample import SampleConfig
from rnnlab.strictjson import parse_json
from rnnlab.validation import ConfigError, from_mapping

MAX_SAMPLE = 2000  # characters per live sample
MAX_PRIME = 1000  # characters of a live sample's prime
MAX_DEPTH = 8  # nesting of a request body's JSON (the API's own bodies are 2 deep)
SAMPLE_FIELDS = ("prime", "length", "temperature", "seed", "cells")


class RequestError(Exception):
    """An HTTP error with a one-line message for the JSON body."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _BadBody(RequestError):
    """A body strict JSON refuses: a 400."""

    def __init__(self, message: str) -> None:
        super().__init__(HTTPStatus.BAD_REQUEST, message)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: a UTF-8 JSON object, nested at most ``MAX_DEPTH`` deep, no duplicate keys,
    no NaN/Infinity, no integer over 40 digits (``rnnlab.strictjson``); anything else is a 400
    ``RequestError``."""
    depth = 0
    in_string = escaped = False
    for byte in raw:  # the nesting, counted before the recursive parser could overflow the stack
        if escaped:
            escaped = False
        elif in_string:
            escaped = byte == 0x5C  # a backslash: the next byte is taken as is
            in_string = byte != 0x22
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_DEPTH:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"body: nested over {MAX_DEPTH} deep")
        elif byte in (0x5D, 0x7D):
            depth -= 1

    obj = parse_json(raw, "body", error=_BadBody)  # the one strict reader, as for run files
    if not isinstance(obj, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "body: expected a JSON object")
    return obj


@dataclass(frozen=True)
class SampleRequest:
    """A checked POST /api/sample body: the prime's ids, the decoding settings, the units."""

    ids: list[int]
    config: SampleConfig
    cells: list[str]


def sample_request(body: dict[str, Any], tokens: list[str]) -> SampleRequest:
    """Check every field of a /api/sample body: ``length``, ``temperature`` and ``seed`` through
    ``SampleConfig`` (``rnnlab sample``'s own validator and ranges; length at most MAX_SAMPLE),
    ``prime`` against the vocabulary, ``cells`` a list of names. Raises a 400 RequestError whose
    message names the field, what was expected and what was found."""
    source = "POST /api/sample"
    unknown = sorted(k for k in body if k not in SAMPLE_FIELDS)
    if unknown:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"{source}: {unknown[0][:40]!r}: expected one of {', '.join(SAMPLE_FIELDS)}",
        )
    settings = {"length": 200, "temperature": 1.0, "seed": 0}
    settings.update({k: body[k] for k in settings if k in body})
    try:
        config = from_mapping(SampleConfig, settings, source)
        if config.length < 1 or config.length > MAX_SAMPLE:
            raise ConfigError("length", f"an integer in [1, {MAX_SAMPLE}]", config.length, source)
    except ConfigError as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from None
    prime = body.get("prime", "")
    if not isinstance(prime, str) or len(prime) > MAX_PRIME:
        message = f"{source}: prime: expected a string of at most {MAX_PRIME} characters"
        raise RequestError(HTTPStatus.BAD_REQUEST, message)
    stoi = {t: i for i, t in enumerate(tokens)}
    unseen = sorted({ch for ch in prime if ch not in stoi})
    if unseen:
        message = f"{source}: prime: characters not in the vocabulary {unseen[:10]}"
        raise RequestError(HTTPStatus.BAD_REQUEST, message)
    cells = body.get("cells", [])
    if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{source}: cells: expected a list of names")
    return SampleRequest([stoi[ch] for ch in prime] or [0], config, cells)


def sample_records(
    model: CharLM, tokens: list[str], request: SampleRequest
) -> Iterator[dict[str, Any]]:
    """Sample ``request.config.length`` characters after the prime; yield, per character, the
    character, the chosen units' activations after reading it, and the top-5 next-character
    predictions. Temperature 0 takes the most likely character."""
    config, cells = request.config, request.cells
    gen = torch.Generator()
    if config.seed is None:
        gen.seed()
    else:
        gen.manual_seed(config.seed)
    *_, last = iter_trace(model, request.ids, chunk_len=256, top_k=1)
    state, logp = last.state, last.next_logp
    for _ in range(config.length):
        nxt = _choose(torch.as_tensor(logp), config.temperature, gen)
        (chunk,) = iter_trace(model, [nxt], chunk_len=1, top_k=5, state=state)
        state, logp = chunk.state, chunk.next_logp
        names, a = chunk.units()
        values = {c: _finite(float(a[0, names.index(c)]), 3) for c in cells}
        yield {
            "char": tokens[nxt],
            "act": values,
            "top": [
                [tokens[int(i)], _finite(float(p), 4)]
                for i, p in zip(chunk.top_ids[0], chunk.top_probs[0], strict=True)
            ],
        }


def _choose(logp: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
    """One id from log-probabilities (V,). Shifted so the best is 0 before dividing, in float64:
    at any temperature > 0 the best keeps weight 1 and the others underflow to 0 at worst, never
    NaN (dividing first gives -inf everywhere at temperature 1e-300), as ``rnnlab.sample``."""
    logp = logp.double()
    if not torch.isfinite(logp.max()):
        raise ValueError("the model produced non-finite log-probabilities (NaN/inf)")
    if temperature == 0:
        return int(logp.argmax())
    probs = torch.softmax((logp - logp.max()) / temperature, -1)
    return int(torch.multinomial(probs, 1, generator=gen))


def _finite(x: float, digits: int) -> float | None:
    """``x`` rounded, or None (JSON null) when it is NaN or infinite."""
    return round(x, digits) if np.isfinite(x) else None
