"""Caption metrics: BLEU-1..4 (Papineni et al. 2002) and CIDEr-D (Vedantam et al. 2015), with the
definitions of the COCO caption evaluation (Chen et al. 2015) that captioning papers report.

Inputs are pre-tokenised: a candidate is a list of tokens, each image has one candidate and one or
more references. Both scores are plain Python over n-gram counts; tests compare them with the
``pycocoevalcap`` scorers and NLTK's corpus BLEU.

BLEU, as the COCO evaluation computes it:
- modified n-gram precision: a candidate n-gram counts at most as often as it occurs in the one
  reference where it occurs most; counts are summed over the corpus before dividing;
- the reference length of each image is the reference length closest to the candidate's (ties go
  to the shorter one); the brevity penalty ``exp(1 - r/c)`` uses the corpus sums of r and c;
- BLEU-n is the geometric mean of precisions 1..n times the penalty; ``1e-15`` is added to each
  matched count and ``1e-9`` to each total, so an empty order gives a tiny score, not an error.
Per-image BLEU uses the same formula on that image's counts alone.

CIDEr-D: each sentence becomes, for n = 1..4, a TF-IDF vector over its n-grams, with the term
frequency the raw count and the IDF ``log(N_images) - log(max(1, df))`` where df counts the images
whose *references* contain the n-gram. The score of an image is
``10 * mean_n mean_refs [ sum_g min(c_g, r_g) r_g / (|c| |r|) * exp(-delta^2 / (2 sigma^2)) ]``
with candidate weights clipped at the reference's (the "-D" against gaming by repetition) and a
Gaussian penalty on the length difference, sigma = 6. The corpus score is the mean over images.
As in the COCO code, ``delta`` is the difference in bigram counts (= the length difference for
sentences of two or more tokens), and the IDF table is built from the scored set's references.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

Tokens = Sequence[str]
NGram = tuple[str, ...]

_TINY = 1e-15  # the COCO code's smoothing of matched counts
_SMALL = 1e-9  # and of totals


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores and per-image scores.

    ``bleu[k]`` is BLEU-(k+1) of the corpus, ``per_image_bleu[i][k]`` image i's; ``cider`` is
    CIDEr-D of the corpus (the mean of ``per_image_cider``)."""

    bleu: tuple[float, ...]
    cider: float
    per_image_bleu: tuple[tuple[float, ...], ...]
    per_image_cider: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        """``{"BLEU-1": ..., "BLEU-4": ..., "CIDEr-D": ...}``."""
        out = {f"BLEU-{k + 1}": b for k, b in enumerate(self.bleu)}
        out["CIDEr-D"] = self.cider
        return out


def ngrams(tokens: Tokens, n: int) -> Counter[NGram]:
    """Counts of every k-gram, k = 1..n, of one sentence."""
    counts: Counter[NGram] = Counter()
    words = tuple(tokens)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[words[i : i + k]] += 1
    return counts


def _check(candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(
            f"candidates and references: expected one reference list per candidate, got "
            f"{len(candidates)} candidates and {len(references)} reference lists"
        )
    if not candidates:
        raise ValueError("candidates: expected at least one caption to score, got none")
    for i, (cand, refs) in enumerate(zip(candidates, references, strict=True)):
        if isinstance(cand, str):
            raise TypeError(f"candidates[{i}]: expected a list of tokens, got a string")
        if not refs:
            raise ValueError(f"references[{i}]: expected at least one reference, got none")
        for j, ref in enumerate(refs):
            if isinstance(ref, str):
                raise TypeError(f"references[{i}][{j}]: expected a list of tokens, got a string")


def _bleu_from(correct: Sequence[float], guess: Sequence[float], c: float, r: float) -> list[float]:
    """BLEU-1..n from matched and total n-gram counts and candidate/reference lengths."""
    scores, product = [], 1.0
    for k, (m, g) in enumerate(zip(correct, guess, strict=True)):
        product *= (m + _TINY) / (g + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (c + _TINY) / (r + _SMALL)
    if ratio < 1:  # brevity penalty exp(1 - r/c)
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(
    candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]], n: int = 4
) -> tuple[list[float], list[list[float]]]:
    """(corpus BLEU-1..n, per-image BLEU-1..n) of tokenised captions; see the module docstring.

    candidates: one token list per image; references: per image, a list of token lists."""
    _check(candidates, references)
    total_correct, total_guess = [0.0] * n, [0.0] * n
    total_c = total_r = 0.0
    per_image = []
    for cand, refs in zip(candidates, references, strict=True):
        counts = ngrams(cand, n)
        clip: dict[NGram, int] = {}
        for ref in refs:
            for g, k in ngrams(ref, n).items():
                clip[g] = max(clip.get(g, 0), k)
        correct = [0.0] * n
        for g, k in counts.items():
            correct[len(g) - 1] += min(k, clip.get(g, 0))
        c = len(cand)
        guess = [float(max(0, c - k)) for k in range(n)]
        r = min((abs(len(ref) - c), len(ref)) for ref in refs)[1]  # closest, ties: shorter
        per_image.append(_bleu_from(correct, guess, c, r))
        total_c, total_r = total_c + c, total_r + r
        for k in range(n):
            total_correct[k] += correct[k]
            total_guess[k] += guess[k]
    return _bleu_from(total_correct, total_guess, total_c, total_r), per_image


def cider_d(
    candidates: Sequence[Tokens],
    references: Sequence[Sequence[Tokens]],
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-image CIDEr-D) of tokenised captions; see the module docstring."""
    _check(candidates, references)
    ref_counts = [[ngrams(ref, n) for ref in refs] for refs in references]
    df: Counter[NGram] = Counter()
    for refs in ref_counts:
        df.update({g for counts in refs for g in counts})
    log_images = math.log(float(len(candidates)))

    def vector(counts: Counter[NGram]) -> tuple[list[dict[NGram, float]], list[float], int]:
        vec: list[dict[NGram, float]] = [{} for _ in range(n)]
        norms = [0.0] * n
        bigrams = 0
        for g, tf in counts.items():
            weight = tf * (log_images - math.log(max(1.0, df[g])))
            vec[len(g) - 1][g] = weight
            norms[len(g) - 1] += weight * weight
            if len(g) == 2:
                bigrams += tf
        return vec, [math.sqrt(x) for x in norms], bigrams

    per_image = []
    for cand, refs in zip(candidates, ref_counts, strict=True):
        c_vec, c_norm, c_len = vector(ngrams(cand, n))
        total = 0.0
        for ref in refs:
            r_vec, r_norm, r_len = vector(ref)
            penalty = math.exp(-((c_len - r_len) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0)
                          for g, w in c_vec[k].items())  # fmt: skip
                if c_norm[k] != 0 and r_norm[k] != 0:
                    dot /= c_norm[k] * r_norm[k]
                total += dot * penalty
        per_image.append(10.0 * total / n / len(refs))
    return sum(per_image) / len(per_image), per_image


def score_captions(
    candidates: Sequence[Tokens], references: Sequence[Sequence[Tokens]]
) -> CaptionScores:
    """BLEU-1..4 and CIDEr-D, corpus and per image, of tokenised captions."""
    corpus_bleu, image_bleu = bleu(candidates, references, 4)
    corpus_cider, image_cider = cider_d(candidates, references)
    return CaptionScores(
        bleu=tuple(corpus_bleu),
        cider=corpus_cider,
        per_image_bleu=tuple(tuple(b) for b in image_bleu),
        per_image_cider=tuple(image_cider),
    )
