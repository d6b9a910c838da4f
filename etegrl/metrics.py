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



def list_metrics(top: torch.Tensor, targets: torch.Tensor, *, n_items: int,
                 histories=None, popular: torch.Tensor | None = None) -> dict:
    """Metrics and behaviour of ranked lists ``top [N, K]`` (item ids, best first, 0 = none)
    for ``targets [N]``: Recall@{1,5,10}, NDCG@{5,10}, coverage@10, distinct top-1 items, and —
    given each user's history (item-id lists) and the ``popular`` items (the 10 most frequent in
    training) — the share of top-10 slots holding a history item or a popular item."""
    short = max(DEFAULT_KS) - top.shape[1]
    if short > 0:  # a miss ranks at the list's length: make that no hit at any K
        top = torch.cat([top, top.new_zeros(top.shape[0], short)], 1)
    out = ranking_metrics(ranks_from_lists(top, targets), DEFAULT_KS)
    top10 = top[:, :10]
    filled = max(1, int((top10 > 0).sum()))
    out["coverage@10"] = coverage(top10, n_items)
    out["distinct_top1"] = int(torch.unique(top[:, 0][top[:, 0] > 0]).numel())
    if popular is not None:
        out["popular10_share@10"] = float(torch.isin(top10[top10 > 0], popular).sum()) / filled
    if histories is not None:
        in_history = sum(len(set(row) & set(h)) for row, h in zip(top10.tolist(), histories))
        out["history_share@10"] = in_history / filled
    return out


def most_popular(counts, k: int) -> torch.Tensor:
    """The ``k`` items with the highest training ``counts`` (indexed by item id, 0 unused),
    ties by lower item id → ``[k]`` item ids, best first."""
    counts = torch.as_tensor(counts, dtype=torch.long)
    order = torch.sort(-counts[1:], stable=True).indices + 1  # stable: ties keep id order
    return order[:k]


def per_user_gains(ranked: list[list[int]], targets, k: int = 10) -> dict[str, torch.Tensor]:
    """Per-user Recall@k and NDCG@k of ranked lists (one target each) → ``{name: [N]}``."""
    width = max([k] + [len(r) for r in ranked])
    top = torch.zeros(len(ranked), width, dtype=torch.long)
    for row, items in enumerate(ranked):
        top[row, :len(items)] = torch.as_tensor(items[:width], dtype=torch.long)
    ranks = ranks_from_lists(top[:, :k], torch.as_tensor(targets)).float()
    hit = ranks < k
    return {f"recall@{k}": hit.float(),
            f"ndcg@{k}": torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))}


def paired_bootstrap(diff: torch.Tensor, *, samples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of per-user differences ``diff [N]`` and its ``level`` bootstrap interval (users
    resampled with replacement, percentile method)."""
    diff = diff.double()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(diff), (samples, len(diff)), generator=g)
    means = diff[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2],
                                                dtype=torch.double)).tolist()
    return {"mean": float(diff.mean()), "low": lo, "high": hi, "users": len(diff)}
