"""Hypothesis features: one number per character, computed from the text alone.

These are the hypotheses the cell search tests each unit against: the quote cell, the line-length
cell, the comment, string, bracket-depth and if-statement cells of Karpathy, Johnson & Fei-Fei
2015 ("Visualizing and Understanding Recurrent Networks", figure 2), plus word, vowel and LaTeX
ones. A feature is *binary* (0/1: inside a comment) or *continuous* (bracket depth). Users add
their own as a Python function ``text -> (N,) array`` or a regular expression (``regex_feature``:
1 on every character a match covers).

Every function takes the text (N characters) and returns float32 (N,). The value at t describes
the text *through* character t (the state a model could know after reading it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

FeatureFunction = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Feature:
    """A named hypothesis: ``fn(text)`` -> (N,) float32; ``binary`` when its values are 0/1."""

    name: str
    fn: FeatureFunction
    binary: bool
    description: str = ""


# -- prose -------------------------------------------------------------------------------------


def in_quote(text: str) -> np.ndarray:
    """1 from an opening double quote through its closing quote (the paper's quote cell)."""
    out = np.zeros(len(text), np.float32)
    inside = False
    for t, ch in enumerate(text):
        if ch == '"':
            out[t] = 1.0
            inside = not inside
        elif inside:
            out[t] = 1.0
    return out


def line_position(text: str) -> np.ndarray:
    """Characters since the last newline (0 at a line's first character; a newline ends its line
    and has its line's length)."""
    out = np.zeros(len(text), np.float32)
    col = 0
    for t, ch in enumerate(text):
        out[t] = col
        col = 0 if ch == "\n" else col + 1
    return out


def line_length(text: str) -> np.ndarray:
    """Length of the line a character is on (its newline excluded)."""
    out = np.zeros(len(text), np.float32)
    start = 0
    for line in text.split("\n"):
        end = start + len(line)
        out[start : min(end + 1, len(text))] = len(line)
        start = end + 1
    return out


def word_start(text: str) -> np.ndarray:
    """1 on a letter that follows a non-letter (the first letter of a word)."""
    letters = np.array([c.isalpha() for c in text], bool)
    out = letters.copy()
    out[1:] &= ~letters[:-1]
    return out.astype(np.float32)


def vowel(text: str) -> np.ndarray:
    """1 on a vowel letter (a e i o u, either case)."""
    return np.array([c in "aeiouAEIOU" for c in text], np.float32)


def consonant(text: str) -> np.ndarray:
    """1 on a letter that is not a vowel."""
    return np.array([c.isalpha() and c not in "aeiouAEIOU" for c in text], np.float32)


# -- code --------------------------------------------------------------------------------------


def _lex(text: str, line_comment: str, block: bool, quotes: str) -> tuple[np.ndarray, np.ndarray]:
    """(in_comment, in_string) of a C-like (``//``, ``/* */``) or Python-like (``#``) text;
    string and comment delimiters count as inside, backslash escapes are honoured."""
    comment = np.zeros(len(text), np.float32)
    string = np.zeros(len(text), np.float32)
    state, quote, t, n = "code", "", 0, len(text)
    while t < n:
        ch = text[t]
        if state == "code":
            if text.startswith(line_comment, t):
                state = "line"
                comment[t : t + len(line_comment)] = 1.0
                t += len(line_comment)
                continue
            if block and text.startswith("/*", t):
                state = "block"
                comment[t : t + 2] = 1.0
                t += 2
                continue
            if ch in quotes:
                state, quote = "string", ch
                string[t] = 1.0
        elif state == "line":
            if ch == "\n":
                state = "code"
            else:
                comment[t] = 1.0
        elif state == "block":
            comment[t] = 1.0
            if text.startswith("*/", t):
                comment[t + 1] = 1.0
                state = "code"
                t += 2
                continue
        else:  # string
            string[t] = 1.0
            if ch == "\\" and t + 1 < n:
                string[t + 1] = 1.0
                t += 2
                continue
            if ch == quote or ch == "\n":  # an unterminated literal ends at the line
                state = "code"
        t += 1
    return comment, string


def in_c_comment(text: str) -> np.ndarray:
    """1 inside a C comment, ``/* ... */`` or ``// ...`` to the end of the line."""
    return _lex(text, "//", True, "\"'")[0]


def in_c_string(text: str) -> np.ndarray:
    """1 inside a C string or character literal."""
    return _lex(text, "//", True, "\"'")[1]


def in_py_comment(text: str) -> np.ndarray:
    """1 inside a Python (or shell) ``#`` comment."""
    return _lex(text, "#", False, "\"'")[0]


def in_py_string(text: str) -> np.ndarray:
    """1 inside a Python string literal (single-line quotes)."""
    return _lex(text, "#", False, "\"'")[1]


_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def _depth(text: str, opening: str, closing: str) -> np.ndarray:
    steps = np.zeros(len(text), np.int64)
    for t, ch in enumerate(text):
        if ch in opening:
            steps[t] = 1
        elif ch in closing:
            steps[t] = -1
    # Clamped at 0: a text cut mid-block starts with unmatched closers.
    depth = np.zeros(len(text), np.float32)
    d = 0
    for t, s in enumerate(steps):
        d = max(0, d + int(s))
        depth[t] = d
    return depth


def bracket_depth(text: str) -> np.ndarray:
    """Nesting depth of ``()``, ``[]`` and ``{}`` together (an opener counts as inside)."""
    return _depth(text, "([{", ")]}")


def paren_depth(text: str) -> np.ndarray:
    """Nesting depth of ``()`` only: calls, conditions, casts."""
    return _depth(text, "(", ")")


def brace_depth(text: str) -> np.ndarray:
    """Nesting depth of ``{}`` only: the paper's code-depth cell."""
    return _depth(text, "{", "}")


def indent_depth(text: str) -> np.ndarray:
    """Leading whitespace of the current line in columns (a tab advances to the next multiple
    of 8), constant along the line."""
    out = np.zeros(len(text), np.float32)
    start = 0
    for line in text.split("\n"):
        col = 0
        for ch in line:
            if ch == " ":
                col += 1
            elif ch == "\t":
                col = (col // 8 + 1) * 8
            else:
                break
        out[start : min(start + len(line) + 1, len(text))] = col
        start += len(line) + 1
    return out


_IF = re.compile(r"\bif\s*\(")


def _if_spans(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(condition, block): the parenthesised condition of ``if (...)`` (C and the like) and the
    statement or ``{...}`` block it guards."""
    cond = np.zeros(len(text), np.float32)
    body = np.zeros(len(text), np.float32)
    for m in _IF.finditer(text):
        t, depth = m.end() - 1, 0
        while t < len(text):  # the matching ')'
            depth += {"(": 1, ")": -1}.get(text[t], 0)
            if depth == 0:
                break
            t += 1
        cond[m.start() : t + 1] = 1.0
        u = t + 1
        while u < len(text) and text[u].isspace():
            u += 1
        if u < len(text) and text[u] == "{":
            depth, v = 0, u
            while v < len(text):
                depth += {"{": 1, "}": -1}.get(text[v], 0)
                if depth == 0:
                    break
                v += 1
        else:
            v = text.find(";", u)
            v = len(text) - 1 if v < 0 else v
        body[t + 1 : v + 1] = 1.0
    return cond, body


def in_if_condition(text: str) -> np.ndarray:
    """1 from ``if`` through the ``)`` that closes its condition."""
    return _if_spans(text)[0]


def in_if_block(text: str) -> np.ndarray:
    """1 on the statement or ``{...}`` block an ``if (...)`` guards."""
    return _if_spans(text)[1]


# -- LaTeX -------------------------------------------------------------------------------------

_MATH = re.compile(r"\$\$.*?\$\$|(?<!\\)\$.*?(?<!\\)\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_ENV = re.compile(r"\\(begin|end)\{([^}]*)\}")


def in_latex_math(text: str) -> np.ndarray:
    """1 inside LaTeX math: ``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``."""
    return _spans(text, _MATH)


def in_latex_env(text: str) -> np.ndarray:
    """1 inside any ``\\begin{...} ... \\end{...}`` environment other than ``document``."""
    steps = np.zeros(len(text) + 1, np.int64)
    for m in _ENV.finditer(text):
        if m.group(2) == "document":
            continue
        if m.group(1) == "begin":
            steps[m.start()] += 1
        else:
            steps[m.end()] -= 1
    return (np.cumsum(steps)[:-1] > 0).astype(np.float32)


def _spans(text: str, pattern: re.Pattern[str]) -> np.ndarray:
    out = np.zeros(len(text), np.float32)
    for m in pattern.finditer(text):
        out[m.start() : m.end()] = 1.0
    return out


def regex_feature(name: str, pattern: str, flags: int = 0, description: str = "") -> Feature:
    """A binary feature that is 1 on every character a match of ``pattern`` covers."""
    try:
        compiled = re.compile(pattern, flags)
    except re.error as e:
        raise ValueError(f"feature {name!r}: bad regular expression {pattern!r}: {e}") from None
    return Feature(name, lambda text: _spans(text, compiled), True, description or pattern)


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("in_quote", in_quote, True, "inside a double-quoted passage"),
        Feature("line_position", line_position, False, "characters since the newline"),
        Feature("line_length", line_length, False, "length of the current line"),
        Feature("in_comment", in_c_comment, True, "inside a C comment (/* */ or //)"),
        Feature("in_string", in_c_string, True, "inside a C string or char literal"),
        Feature("in_py_comment", in_py_comment, True, "inside a Python # comment"),
        Feature("in_py_string", in_py_string, True, "inside a Python string literal"),
        Feature("bracket_depth", bracket_depth, False, "nesting depth of (), [] and {}"),
        Feature("paren_depth", paren_depth, False, "nesting depth of ()"),
        Feature("brace_depth", brace_depth, False, "nesting depth of {}"),
        Feature("indent_depth", indent_depth, False, "leading whitespace of the line"),
        Feature("in_if_condition", in_if_condition, True, "inside the condition of if (...)"),
        Feature("in_if_block", in_if_block, True, "inside the block an if guards"),
        Feature("word_start", word_start, True, "first letter of a word"),
        Feature("vowel", vowel, True, "a vowel"),
        Feature("consonant", consonant, True, "a consonant"),
        Feature("in_latex_math", in_latex_math, True, "inside LaTeX $...$ math"),
        Feature("in_latex_env", in_latex_env, True, "inside a LaTeX environment"),
    )
}


def compute_features(
    text: str, features: Iterable[Feature | str] | None = None
) -> dict[str, np.ndarray]:
    """``{name: (N,) float32}`` for the given features (names from ``FEATURES`` or ``Feature``
    objects; default: all built-in ones). A feature returning the wrong shape is a ValueError."""
    chosen = resolve_features(features)
    out: dict[str, np.ndarray] = {}
    for f in chosen:
        values = np.asarray(f.fn(text), dtype=np.float32)
        if values.shape != (len(text),):
            raise ValueError(
                f"feature {f.name!r}: expected shape ({len(text)},), got {values.shape}"
            )
        out[f.name] = values
    return out


def resolve_features(features: Iterable[Feature | str] | None) -> list[Feature]:
    """Feature objects for names or objects; ValueError listing the known names."""
    if features is None:
        return list(FEATURES.values())
    chosen: list[Feature] = []
    for f in features:
        if isinstance(f, Feature):
            chosen.append(f)
        elif f in FEATURES:
            chosen.append(FEATURES[f])
        else:
            raise ValueError(f"feature: unknown {f!r}; known: {', '.join(FEATURES)}")
    names = [f.name for f in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"feature: duplicate names in {names}")
    return chosen
