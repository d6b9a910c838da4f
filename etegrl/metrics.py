"""Ranking metrics: Recall@K, NDCG@K (one relevant item per user) and catalogue coverage.

Ranks are 0-based positions of the target in the user's ranked list; a rank ≥ K is a miss at K.
From full scores, ties are broken by item id (lower id first), i.e. the order a stable
descending sort gives, so a constant scorer cannot score a hit by tie luck.
"""

from __future__ import annotations

import torch

DEFAULT_KS = (1, 5, 10)


def ranks_from_scores(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target (item ids 1..N) given ``[B, N]`` scores of items 1..N."""
    scores = scores.float()
    t = (targets.long() - 1).unsqueeze(1)
    target_score = scores.gather(1, t)
    greater = (scores > target_score).sum(1)
    ids = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    tied_before = ((scores == target_score) & (ids < t)).sum(1)
    return greater + tied_before


def ranks_from_lists(topk: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each target in a ``[B, K]`` list of item ids; K when it is absent (a miss)."""
    hit = topk == targets.long().unsqueeze(1)
    k = topk.shape[1]
    pos = torch.where(hit, torch.arange(k, device=topk.device), k)
    return pos.min(1).values


def ranking_metrics(ranks: torch.Tensor, ks=DEFAULT_KS, ndcg_ks=None) -> dict[str, float]:
    """Recall@K for ``ks`` and NDCG@K for ``ndcg_ks`` (default: every K > 1)."""
    ranks = ranks.float()
    n = max(1, ranks.numel())
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float((ranks < k).sum()) / n
    for k in ndcg_ks if ndcg_ks is not None else [k for k in ks if k > 1]:
        gain = torch.where(ranks < k, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"ndcg@{k}"] = float(gain.sum()) / n
    return out


def coverage(topk: torch.Tensor, n_items: int) -> float:
    """Share of the catalogue (items 1..n_items) that appears in at least one top-K list."""
    items = torch.unique(topk[topk > 0])
    return items.numel() / max(1, n_items)

