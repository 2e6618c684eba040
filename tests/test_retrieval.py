"""VisDial ranking metrics against hand-computed cases and a naive implementation written here
(a rank loop; NDCG as the VisDial v1.0 evaluation defines it: k = candidates of non-zero
relevance, DCG over the model's top k, divided by the DCG of the top k by relevance)."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlab.metrics.retrieval import ground_truth_ranks, ndcg, ranking_scores, scores_to_ranks


def naive_rank(scores: list[float], gt: int) -> int:
    """1 + the candidates ranked above the truth: higher scores, and equal scores listed first."""
    return 1 + sum(s > scores[gt] or (s == scores[gt] and j < gt) for j, s in enumerate(scores))


def naive_ndcg(scores: list[float], relevance: list[float]) -> float:
    k = sum(r != 0 for r in relevance)
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))  # stable, descending
    dcg = sum(relevance[order[i]] / math.log2(i + 2) for i in range(k))
    best = sorted(relevance, reverse=True)
    return dcg / sum(best[i] / math.log2(i + 2) for i in range(k))


def test_hand_computed_ranks_and_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert scores_to_ranks(scores).tolist() == [[4, 1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4]]
    ranks = ground_truth_ranks(scores, torch.tensor([2, 0, 3]))  # ranks 2, 1, 4
    assert ranks.tolist() == [2, 1, 4]
    s = ranking_scores(ranks)
    assert s.r1 == pytest.approx(1 / 3) and s.r5 == 1.0 and s.r10 == 1.0
    assert s.mean_rank == pytest.approx(7 / 3)
    assert s.mrr == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert s.ndcg is None and "ndcg" not in s.as_dict()


def test_a_constant_scorer_ranks_the_truth_at_its_position_not_first():
    scores = torch.zeros(3, 100)
    assert ground_truth_ranks(scores, torch.tensor([0, 41, 99])).tolist() == [1, 42, 100]


def test_ndcg_hand_computed():
    # relevance: candidates 0 and 2 relevant (k = 2); the model ranks 2, 1, 0, 3
    scores = torch.tensor([[0.5, 0.7, 0.9, 0.1]])
    relevance = torch.tensor([[1.0, 0.0, 0.5, 0.0]])
    dcg = 0.5 / math.log2(2) + 0.0 / math.log2(3)  # top 2: candidates 2 and 1
    ideal = 1.0 / math.log2(2) + 0.5 / math.log2(3)
    assert float(ndcg(scores, relevance)[0]) == pytest.approx(dcg / ideal)
    # a perfect ranking scores 1, and what lies below the top k does not count
    assert float(ndcg(torch.tensor([[3.0, 0.0, 2.0, 1.0]]), relevance)[0]) == pytest.approx(1.0)


def test_against_a_naive_loop_on_random_rounds():
    g = torch.Generator().manual_seed(0)
    M, N = 200, 100
    scores = torch.randint(0, 20, (M, N), generator=g).double()  # many ties
    gt = torch.randint(0, N, (M,), generator=g)
    relevance = torch.randint(0, 3, (M, N), generator=g).double() / 2  # 0, 0.5, 1
    relevance[relevance.sum(1) == 0, 0] = 1
    ranks = ground_truth_ranks(scores, gt)
    expected = [naive_rank(scores[i].tolist(), int(gt[i])) for i in range(M)]
    assert ranks.tolist() == expected
    got = ndcg(scores, relevance)
    for i in range(M):
        assert float(got[i]) == pytest.approx(naive_ndcg(scores[i].tolist(),
                                                         relevance[i].tolist()))  # fmt: skip
    s = ranking_scores(ranks, got)
    assert s.r1 == pytest.approx(sum(r == 1 for r in expected) / M)
    assert s.r10 == pytest.approx(sum(r <= 10 for r in expected) / M)
    assert s.mrr == pytest.approx(sum(1 / r for r in expected) / M)
    assert s.ndcg == pytest.approx(float(got.mean()))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="gt_index"):
        ground_truth_ranks(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="non-zero relevance"):
        ndcg(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="ranks"):
        ranking_scores(torch.tensor([], dtype=torch.long))
