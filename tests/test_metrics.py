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
