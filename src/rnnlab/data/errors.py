"""DataError: the one exception type for user-facing data problems (bad files, short corpora...).

Every message is a single line that names the problem and says what to do, so the CLI can print it
as-is and exit non-zero. It subclasses ``ValueError`` so generic callers still catch it.
"""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the user's data; the message is one line: what is wrong and what to do."""


class InvalidUTF8Error(DataError):
    """The file is not valid UTF-8; ``offset`` is the byte offset of the first bad byte."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset
