"""Hypothesis features: each against a hand-labelled text."""

from __future__ import annotations

import numpy as np
import pytest

from rnnlab.analysis.features import (
    FEATURES,
    brace_depth,
    bracket_depth,
    compute_features,
    consonant,
    in_c_comment,
    in_c_string,
    in_if_block,
    in_if_condition,
    in_latex_env,
    in_latex_math,
    in_py_comment,
    in_py_string,
    in_quote,
    indent_depth,
    line_length,
    line_position,
    paren_depth,
    regex_feature,
    vowel,
    word_start,
)


def marks(text: str, values: np.ndarray) -> str:
    """The characters where a binary feature is on, '.' elsewhere (readable failures)."""
    return "".join(c if v else "." for c, v in zip(text, values, strict=True))


def test_quote_and_lines():
    text = 'He said "hi there" ok\nab'
    assert marks(text, in_quote(text)) == '........"hi there"' + "." * 6
    assert line_position(text).tolist() == list(range(22)) + [0, 1]
    assert line_length(text).tolist() == [21] * 22 + [2, 2]


def test_words_vowels():
    text = "An ox, eh"
    assert marks(text, word_start(text)) == "A..o...e."
    assert marks(text, vowel(text)) == "A..o...e."
    assert marks(text, consonant(text)) == ".n..x...h"


def test_c_comments_and_strings():
    text = 'a = "x/*y\\"z"; // c "q"\nb /* m\n n */ c \'"\''
    assert marks(text, in_c_string(text)) == '...."x/*y\\"z"' + "." * 26 + "'\"'"
    comment = marks(text, in_c_comment(text))
    assert comment == "." * 15 + '// c "q"' + "." * 3 + "/* m\n n */" + "." * 6
    py = "x = '#' # note\ny"
    assert marks(py, in_py_comment(py)) == "........# note.."
    assert marks(py, in_py_string(py)) == "....'#'........."


def test_depths_and_indent():
    text = "f(a[b{c}]) )x"
    assert bracket_depth(text).tolist() == [0, 1, 1, 2, 2, 3, 3, 2, 1, 0, 0, 0, 0]
    assert paren_depth(text).tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert brace_depth(text).tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    code = "a\n    b\n\tc\n"
    assert indent_depth(code).tolist() == [0, 0, 4, 4, 4, 4, 4, 4, 8, 8, 8]


def test_if_condition_and_block():
    text = "x; if (a && (b)) { y(); } z; if(c) w; v"
    cond = marks(text, in_if_condition(text))
    block = marks(text, in_if_block(text))
    assert cond == "...if (a && (b))" + "." * 13 + "if(c)" + "." * 5
    assert block == "." * 16 + " { y(); }" + "." * 9 + " w;" + ".."


def test_latex():
    text = r"a $x^2$ b \[y\] \begin{align} z \end{align} c"
    math = marks(text, in_latex_math(text))
    assert math == "..$x^2$...\\[y\\]" + "." * (len(text) - 15)
    env = marks(text, in_latex_env(text))
    assert env.strip(".") == r"\begin{align} z \end{align}"
    doc = r"\begin{document}x\end{document}"
    assert in_latex_env(doc).sum() == 0


def test_user_features_and_errors():
    text = "TODO: fix; todo later"
    todo = regex_feature("todo", r"(?i)todo")
    values = compute_features(text, [todo, "vowel"])
    assert marks(text, values["todo"]) == "TODO" + "." * 7 + "todo" + "." * 6
    assert set(values) == {"todo", "vowel"}
    with pytest.raises(ValueError, match="unknown 'nope'"):
        compute_features(text, ["nope"])
    with pytest.raises(ValueError, match="bad regular expression"):
        regex_feature("bad", "(")
    from rnnlab.analysis.features import Feature

    wrong = Feature("wrong", lambda t: np.zeros(3), True)
    with pytest.raises(ValueError, match="expected shape"):
        compute_features(text, [wrong])
    with pytest.raises(ValueError, match="duplicate"):
        compute_features(text, ["vowel", "vowel"])


def test_every_builtin_runs_on_any_text():
    text = "é\r\n\t\"'{[(/*#$\\"
    values = compute_features(text)
    assert set(values) == set(FEATURES)
    for v in values.values():
        assert v.shape == (len(text),) and v.dtype == np.float32
