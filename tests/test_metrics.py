import math

import pytest
import torch

from etegrl.metrics import coverage, ranking_metrics, ranks_from_lists, ranks_from_scores


def test_ranks_from_scores_by_hand():
    # Items 1..4. User 0: target 3 has the highest score → rank 0. User 1: target 1 is beaten
    # by items 2 and 4 → rank 2. User 2: all scores tie; ties go to lower ids, target 4 → rank 3.
    scores = torch.tensor([[0.1, 0.2, 0.9, 0.3],
                           [0.5, 0.7, 0.1, 0.6],
                           [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([3, 1, 4])
    assert ranks_from_scores(scores, targets).tolist() == [0, 2, 3]


def test_ranks_from_lists_miss_is_k():
    topk = torch.tensor([[5, 2, 9], [1, 2, 3]])
    assert ranks_from_lists(topk, torch.tensor([9, 7])).tolist() == [2, 3]


def test_recall_and_ndcg_by_hand():
    ranks = torch.tensor([0, 2, 3, 7, 12])
    m = ranking_metrics(ranks, ks=(1, 5, 10))
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(3 / 5)
    assert m["recall@10"] == pytest.approx(4 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(5)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(5)
                                          + 1 / math.log2(9)) / 5)
    assert "ndcg@1" not in m


def test_coverage_counts_distinct_items_not_padding():
    topk = torch.tensor([[1, 2, 0], [2, 3, 0]])
    assert coverage(topk, n_items=6) == pytest.approx(3 / 6)


def test_list_metrics_behaviour_by_hand():
    from etegrl.metrics import list_metrics
    top = torch.tensor([[3, 1, 2], [3, 4, 0], [5, 3, 1]])
    out = list_metrics(top, torch.tensor([1, 9, 5]), n_items=10,
                       histories=[[2], [4, 3], []], popular=torch.tensor([3]))
    assert out["recall@1"] == pytest.approx(1 / 3) and out["recall@5"] == pytest.approx(2 / 3)
    assert out["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert out["distinct_top1"] == 2 and out["coverage@10"] == pytest.approx(0.5)
    assert out["popular10_share@10"] == pytest.approx(3 / 8)  # item 3 in 3 of 8 filled slots
    assert out["history_share@10"] == pytest.approx(3 / 8)  # 2 for user 0; 4 and 3 for user 1


def test_most_popular_ties_by_item_id():
    from etegrl.metrics import most_popular
    assert most_popular([0, 2, 5, 2, 7, 0], 4).tolist() == [4, 2, 1, 3]


def test_paired_bootstrap_by_hand():
    from etegrl.metrics import paired_bootstrap, per_user_gains
    gains = per_user_gains([[2, 1], [3], []], [1, 3, 4], k=10)
    assert gains["recall@10"].tolist() == [1.0, 1.0, 0.0]
    assert gains["ndcg@10"].tolist() == pytest.approx([1 / math.log2(3), 1.0, 0.0])
    # constant differences: every resample has the same mean, so the interval is a point
    r = paired_bootstrap(torch.full((50,), 0.25), samples=200)
    assert r["mean"] == r["low"] == r["high"] == pytest.approx(0.25)
    # two users, differences 0 and 1: resample means are k/2 with k ~ Binomial(2, 1/2)
    r = paired_bootstrap(torch.tensor([0.0, 1.0]), samples=4000, seed=1)
    assert r["mean"] == 0.5 and r["low"] == 0.0 and r["high"] == 1.0
