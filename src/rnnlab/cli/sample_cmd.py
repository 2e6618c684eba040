"""``rnnlab sample RUN_DIR``: generated text on stdout (logs on stderr), streamed as produced.

Output is bytes: a text model writes UTF-8 whatever the locale (``--output-encoding`` to
override); a byte-level model writes the bytes it generates, so text in any encoding (Latin-1
included) comes back intact, and a multi-byte character is never split into U+FFFD.
"""

from __future__ import annotations

import argparse
import codecs
import os
import time
from pathlib import Path

from rnnlab.cli.common import RunOptions, add_config_flags, given, stdout_bytes

FLUSH_SECONDS = 0.05  # streamed text reaches the reader at least this often


def register(sub: argparse._SubParsersAction) -> None:
    from rnnlab.sample import SampleConfig

    p = sub.add_parser("sample", help="sample text from a trained run")
    p.add_argument("run_dir", help="run directory or checkpoint directory")
    p.add_argument(
        "--prime", default=None, help="text to start from (default: a character of the vocabulary)"
    )
    p.add_argument(
        "--prime-file",
        default=None,
        help="read the prime from this file, byte for byte (line endings kept)",
    )
    p.add_argument(
        "--output-encoding",
        default=None,
        help="encoding of stdout (default: utf-8 for text models, raw bytes for byte-level models)",
    )
    add_config_flags(p, RunOptions)
    add_config_flags(p, SampleConfig)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rnnlab.runs import load_run, sample_ids
    from rnnlab.runtime import set_threads
    from rnnlab.sample import SampleConfig

    options = RunOptions(**given(args, RunOptions))
    config = SampleConfig(**given(args, SampleConfig))
    if args.prime is not None and args.prime_file:
        raise ValueError("--prime and --prime-file: give one")
    encoding = _check_encoding(args.output_encoding)
    raw_prime = _read_prime_file(Path(args.prime_file)) if args.prime_file else None
    set_threads(options.threads)
    run = load_run(args.run_dir, options.checkpoint, options.device)
    prime: str | bytes | None = args.prime
    if prime is not None:  # the bytes typed, whatever the locale decoded them into
        raw_prime = os.fsencode(prime)
    if raw_prime is not None:
        prime = raw_prime if run.vocab.kind == "bytes" else _decode_prime(raw_prime, args)
    if prime is not None and len(prime) == 0:
        prime = None
    shown_prime = prime if prime is not None else run.vocab.default_prime()
    writer = _Writer(run.vocab.kind == "bytes", encoding)
    if config.length == 0:  # validate the prime, print nothing: the same in every mode
        sample_ids(run, prime, config)
        return 0
    if config.num_samples > 1 or config.beam:  # several samples: print each when complete
        rows = sample_ids(run, prime, config)
        for k, row in enumerate(rows):
            writer.text("\n" + "-" * 40 + "\n" if k else "")
            writer.prime(shown_prime)
            writer.tokens(run.vocab.to_bytes(row))
            writer.end()
        return 0

    token_bytes = [run.vocab.to_bytes([i]) for i in range(len(run.vocab))]  # a lookup a token

    def stream(step: int, ids) -> None:  # noqa: ANN001
        if step == 0:  # only once the prime is known to be valid
            writer.prime(shown_prime)
        writer.tokens(token_bytes[int(ids[0])])

    sample_ids(run, prime, config, on_token=stream)
    writer.end()
    return 0


def _check_encoding(name: str | None) -> str | None:
    if name is None:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ValueError(f"--output-encoding: unknown encoding {name!r}") from None


def _read_prime_file(path: Path) -> bytes:
    if not path.is_file():
        raise ValueError(f"--prime-file: {path} is not a readable regular file")
    if path.stat().st_size > 100_000_000:
        raise ValueError(f"--prime-file: {path} is over 100 MB; use a shorter prime")
    return path.read_bytes()


def _decode_prime(data: bytes, args: argparse.Namespace) -> str:
    try:
        return data.decode("utf-8")  # bytes, so CRLF and lone CR stay as they are
    except UnicodeDecodeError as e:
        where = f"--prime-file {args.prime_file}" if args.prime_file else "--prime"
        raise ValueError(
            f"{where}: invalid UTF-8 at byte offset {e.start}; a text model's prime must be UTF-8"
        ) from None


class _Writer:
    """Bytes to stdout: raw for byte-level models (or re-encoded through an incremental UTF-8
    decoder when ``--output-encoding`` is given), text models in UTF-8 or the encoding asked."""

    def __init__(self, byte_level: bool, encoding: str | None) -> None:
        self.out = stdout_bytes()
        self.byte_level, self.encoding = byte_level, encoding
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.flushed_at = 0.0

    def _convert(self, data: bytes, final: bool = False) -> bytes:
        if self.encoding is None or (not self.byte_level and self.encoding == "utf-8"):
            return data
        text = self.decoder.decode(data, final) if self.byte_level else data.decode("utf-8")
        return text.encode(self.encoding, "replace")

    def prime(self, prime: str | bytes) -> None:
        data = prime if isinstance(prime, bytes) else prime.encode("utf-8", "surrogateescape")
        self.out.write(self._convert(data))

    def tokens(self, data: bytes) -> None:
        """Streamed output: flushed at most every FLUSH_SECONDS (a reader sees text appear live;
        a flush per character would cost a system call per character)."""
        self.out.write(self._convert(data))
        now = time.monotonic()
        if now - self.flushed_at >= FLUSH_SECONDS:
            self.out.flush()
            self.flushed_at = now

    def text(self, text: str) -> None:
        self.out.write(self._convert(text.encode("utf-8")))

    def end(self) -> None:
        self.out.write(self._convert(b"", final=True) + self._convert(b"\n"))
        self.out.flush()
