"""Retrieval metrics as the Visual Dialog evaluation reports them (Das et al. 2017; the VisDial
v1.0 challenge's evaluation): a model scores the N candidate answers of a round (N = 100 in
VisDial), and the ground-truth answer's *rank* among them gives

    R@k        fraction of rounds whose ground truth ranks within the top k (k = 1, 5, 10)
    mean rank  the ground truth's mean rank (1 = best, N = worst; lower is better)
    MRR        mean reciprocal rank, mean(1 / rank)

and, where relevance is given for every candidate (VisDial's dense annotations), NDCG:

    k     = number of candidates with non-zero relevance
    DCG   = sum over the model's top k candidates, i = 1..k, of relevance_i / log2(i + 1)
    NDCG  = DCG / (the DCG of the candidates sorted by relevance, top k), averaged over rounds

Ranks follow a stable sort on descending score: among equal scores the candidate listed first
ranks higher (as the evaluation's ``scores.sort`` does on CPU), so a model that scores every
candidate alike ranks the ground truth at its position in the list, not first.

Shapes: M rounds (flattened over dialogs), N candidates per round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = ["RankingScores", "ground_truth_ranks", "ndcg", "ranking_scores", "scores_to_ranks"]


def scores_to_ranks(scores: Tensor) -> Tensor:
    """scores (M, N) -> ranks (M, N) int64 in 1..N: the rank of each candidate (1 = highest
    score; ties: the earlier candidate ranks higher)."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores: expected (M, N) with N >= 1, got {tuple(scores.shape)}")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (M, N)
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def ground_truth_ranks(scores: Tensor, gt_index: Tensor) -> Tensor:
    """The rank (1..N) of each round's ground truth: scores (M, N), gt_index (M,) -> (M,)."""
    if gt_index.shape != scores.shape[:1]:
        raise ValueError(f"gt_index: expected ({scores.shape[0]},), got {tuple(gt_index.shape)}")
    if len(gt_index) and not (0 <= int(gt_index.min()) and int(gt_index.max()) < scores.shape[1]):
        raise ValueError(f"gt_index: expected values in 0..{scores.shape[1] - 1}")
    return scores_to_ranks(scores).gather(1, gt_index.long()[:, None]).squeeze(1)


def ndcg(scores: Tensor, relevance: Tensor) -> Tensor:
    """NDCG of each round as VisDial defines it (k = candidates with non-zero relevance):
    scores and relevance (M, N) -> (M,) in [0, 1]. Raises ValueError for a round with no
    relevant candidate (its ideal DCG is 0)."""
    if relevance.shape != scores.shape:
        raise ValueError(f"relevance: expected {tuple(scores.shape)}, got {tuple(relevance.shape)}")
    relevance = relevance.double()
    k = (relevance != 0).sum(dim=1)  # (M,)
    if bool((k == 0).any()):
        raise ValueError("relevance: every round needs a candidate of non-zero relevance")
    N = scores.shape[1]
    discount = 1.0 / torch.log2(torch.arange(N, dtype=torch.float64, device=scores.device) + 2)
    within = torch.arange(N, device=scores.device)[None, :] < k[:, None]  # (M, N): top k only
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    dcg = (relevance.gather(1, order) * discount * within).sum(dim=1)
    ideal = (relevance.sort(dim=1, descending=True).values * discount * within).sum(dim=1)
    return dcg / ideal


@dataclass(frozen=True)
class RankingScores:
    """The VisDial metrics over a set of rounds (``ndcg`` None where no relevance was given)."""

    r1: float
    r5: float
    r10: float
    mean_rank: float
    mrr: float
    ndcg: float | None
    rounds: int

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "rounds"}


def ranking_scores(ranks: Tensor, ndcgs: Tensor | None = None) -> RankingScores:
    """R@1/5/10, mean rank and MRR of ground-truth ranks (M,), and the mean of per-round NDCGs
    (any number of rounds: VisDial annotates one round per dialog). Raises ValueError for no
    rounds."""
    if ranks.dim() != 1 or len(ranks) == 0:
        raise ValueError(f"ranks: expected (M,) with M >= 1, got {tuple(ranks.shape)}")
    r = ranks.double()
    mean_ndcg = None
    if ndcgs is not None and len(ndcgs):
        mean_ndcg = float(ndcgs.double().mean())
    return RankingScores(
        r1=float((r <= 1).double().mean()),
        r5=float((r <= 5).double().mean()),
        r10=float((r <= 10).double().mean()),
        mean_rank=float(r.mean()),
        mrr=float(r.reciprocal().mean()),
        ndcg=mean_ndcg,
        rounds=len(ranks),
    )
