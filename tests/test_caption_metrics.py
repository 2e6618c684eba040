"""BLEU-1..4 and CIDEr-D against the COCO caption evaluation's own scorers (pycocoevalcap, on
pre-tokenised captions) and BLEU-4 against NLTK's corpus BLEU where the definitions agree."""

from __future__ import annotations

import random

import pytest

from rnnlab.metrics.captioning import bleu, cider_d, score_captions

WORDS = "a the red blue small large circle square triangle above below left of right and".split()


def random_corpus(
    seed: int, images: int = 30, shortest: int = 1
) -> tuple[list[list[str]], list[list[list[str]]]]:
    rng = random.Random(seed)

    def sentence() -> list[str]:
        return [rng.choice(WORDS) for _ in range(rng.randint(shortest, 12))]

    candidates, references = [], []
    for _ in range(images):
        refs = [sentence() for _ in range(rng.randint(1, 5))]
        # Half the candidates are edits of a reference, so high-order n-grams match too.
        if rng.random() < 0.5:
            cand = list(rng.choice(refs))
            if cand and rng.random() < 0.7:
                cand[rng.randrange(len(cand))] = rng.choice(WORDS)
        else:
            cand = sentence()
        candidates.append(cand)
        references.append(refs)
    return candidates, references


def coco_inputs(candidates, references):
    res = {i: [" ".join(c)] for i, c in enumerate(candidates)}
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    return gts, res


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bleu_equals_pycocoevalcap(seed, capsys):
    from pycocoevalcap.bleu.bleu import Bleu

    candidates, references = random_corpus(seed)
    ours, ours_per_image = bleu(candidates, references)
    theirs, theirs_per_image = Bleu(4).compute_score(*coco_inputs(candidates, references))
    capsys.readouterr()  # the COCO scorer prints its counts
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    for k in range(4):
        got = [image[k] for image in ours_per_image]
        assert got == pytest.approx(theirs_per_image[k], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cider_d_equals_pycocoevalcap(seed):
    from pycocoevalcap.cider.cider import Cider

    candidates, references = random_corpus(seed)
    ours, ours_per_image = cider_d(candidates, references)
    theirs, theirs_per_image = Cider().compute_score(*coco_inputs(candidates, references))
    assert ours > 0.1  # the comparison is not between two zeros
    assert ours == pytest.approx(float(theirs), rel=1e-9)
    assert ours_per_image == pytest.approx(list(theirs_per_image), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_bleu4_equals_nltk_corpus_bleu(seed):
    from nltk.translate.bleu_score import corpus_bleu

    # NLTK agrees with the COCO definition (closest reference length, ties to the shorter;
    # corpus-level brevity penalty) up to COCO's 1e-15/1e-9 smoothing when every order has a
    # match and every candidate has at least 4 tokens: NLTK counts a shorter candidate's missing
    # 4-grams as one 4-gram guessed (its denominator is max(1, count)), COCO as none.
    candidates, references = random_corpus(seed, images=60, shortest=4)
    ours = bleu(candidates, references)[0][3]
    theirs = corpus_bleu(references, candidates)
    assert theirs > 0.05
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_exact_match_scores_one_and_wrong_words_score_zero():
    refs = [[["a", "red", "circle", "above", "a", "blue", "square"]], [["a", "green", "dot"]]]
    perfect = score_captions([refs[0][0], refs[1][0]], refs)
    assert perfect.bleu == pytest.approx((1.0, 1.0, 1.0, 1.0))
    wrong = score_captions([["x", "y", "z", "w"], ["q", "r", "s"]], refs)
    assert max(wrong.bleu) < 1e-6 and wrong.cider == 0.0
    assert set(perfect.as_dict()) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D"}


def test_cider_d_clips_repetition_and_penalises_length():
    references = [
        [["a", "red", "circle"], ["a", "red", "round", "circle"]],
        [["a", "blue", "square"]],
    ]
    good = cider_d([["a", "red", "circle"], ["a", "blue", "square"]], references)[1][0]
    repeated = cider_d([["red"] * 8, ["a", "blue", "square"]], references)[1][0]
    assert good > repeated >= 0


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="one reference list per candidate"):
        bleu([["a"]], [])
    with pytest.raises(ValueError, match="references\\[0\\]"):
        cider_d([["a"]], [[]])
    with pytest.raises(TypeError, match="candidates\\[0\\]"):
        bleu(["a red circle"], [[["a"]]])


def test_edge_cases_equal_pycocoevalcap(capsys):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    # An empty candidate, a candidate shorter than 4 words, a one-word reference.
    candidates = [[], ["a", "b"], ["a"]]
    references = [[["a", "b", "c"]], [["a", "b"]], [["a", "x"], ["b"]]]
    gts, res = coco_inputs(candidates, references)
    theirs, theirs_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    ours, ours_per_image = bleu(candidates, references)
    assert ours == pytest.approx(theirs, rel=1e-12)
    for k in range(4):
        assert [image[k] for image in ours_per_image] == pytest.approx(theirs_per_image[k])
    cider, cider_per_image = cider_d(candidates, references)
    coco, coco_per_image = Cider().compute_score(gts, res)
    assert cider == pytest.approx(float(coco)) and cider_per_image == pytest.approx(
        list(coco_per_image)
    )
