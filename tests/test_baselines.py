"""The most-popular baseline of the prepare step and the paired comparison command."""

import json
import math

import pytest
import torch

from etegrl.compare import main as compare_main
from etegrl.data import RawData, build_splits, load_processed, read_topk, save_processed
from etegrl.metrics import list_metrics
from etegrl.prepare import most_popular_baseline, transitions_baseline


def hand_data(tmp_path):
    seqs = {"u1": ["a", "b", "c", "d", "a"], "u2": ["b", "a", "b", "c", "d"],
            "u3": ["b", "c", "a", "b"]}
    save_processed(build_splits(RawData(sequences=seqs, source="hand"), max_len=50), tmp_path)
    return load_processed(tmp_path)


def metrics_from_file(path, n_items):
    """The metrics recomputed from a written test_topk file."""
    lists = read_topk(path)
    users = sorted(lists)
    return list_metrics(torch.tensor([lists[u][1] for u in users]),
                        torch.tensor([lists[u][0] for u in users]), n_items=n_items)


def test_most_popular_baseline_by_hand(tmp_path):
    data = hand_data(tmp_path)
    # training parts: u1 a b c, u2 b a b, u3 b c → b 4, a 2, c 2, d 0 → order b, a, c, d
    report = most_popular_baseline(data, tmp_path, log=lambda *_: None)
    ids = {tok: i for i, tok in enumerate(data.item_tokens, 1)}
    lists = read_topk(tmp_path / "most_popular_test_topk.jsonl")
    assert all(r[1][:4] == [ids["b"], ids["a"], ids["c"], ids["d"]] for r in lists.values())
    # test targets: u1 a (rank 1), u2 d (rank 3), u3 b (rank 0)
    t = report["test"]
    assert t["recall@1"] == pytest.approx(1 / 3)
    assert t["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1) / 3)
    assert t["distinct_top1"] == 1
    for key, value in metrics_from_file(tmp_path / "most_popular_test_topk.jsonl",
                                        data.n_items).items():
        assert t[key] == pytest.approx(value), key


def test_transitions_baseline_by_hand(tmp_path):
    data = hand_data(tmp_path)
    report = transitions_baseline(data, tmp_path, log=lambda *_: None)
    ids = {tok: i for i, tok in enumerate(data.item_tokens, 1)}
    lists = read_topk(tmp_path / "transitions_test_topk.jsonl")
    # training parts u1 a b c, u2 b a b, u3 b c; window 3 (distance d weighs 0.5^(d-1)), the
    # reverse direction × 0.5: C[a] = {b 2.5, c 0.5}, C[b] = {a 2, b 0.75, c 2}, C[c] = {a 0.25,
    # b 1}. u1's test history a b c d (d never in training): 0.7 C[c] + 0.49 C[b] + 0.343 C[a]
    # = a 1.155, b 1.925, c 1.1515, d 0 → b, a, c, d; its target a ranks second
    u1 = data.users.index("u1")
    assert lists[u1] == (ids["a"], [ids["b"], ids["a"], ids["c"], ids["d"]])
    # u2 (b a b c → d, in no training sequence) ranks d last of the four, u3 (b c a → b) first
    t = report["test"]
    assert t["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5) + 1) / 3)
    for key, value in metrics_from_file(tmp_path / "transitions_test_topk.jsonl",
                                        data.n_items).items():
        assert t[key] == pytest.approx(value), key


def write_lists(path, rows):
    path.write_text("".join(json.dumps({"user": u, "target": t, "ranked": r}) + "\n"
                            for u, t, r in rows))
    return path


def test_compare_prints_the_paired_difference(tmp_path, capsys):
    a = write_lists(tmp_path / "a.jsonl", [(0, 1, [2, 3]), (1, 2, [1, 2]), (2, 3, [3])])
    b = write_lists(tmp_path / "b.jsonl", [(0, 1, [1, 3]), (1, 2, [2, 1]), (2, 3, [3])])
    assert compare_main([str(a), str(b), "--samples", "500"]) == 0
    out = capsys.readouterr().out
    # recall@10: 2/3 → 1 (+0.3333); ndcg@10: user 1 gains 1 − 1/log2(3)
    assert "| recall@10 | 0.6667 | 1.0000 | +0.3333 |" in out
    c = write_lists(tmp_path / "c.jsonl", [(0, 1, [1]), (5, 2, [2])])
    assert compare_main([str(a), str(c)]) == 2
    assert "not the same users" in capsys.readouterr().err


def test_exclude_history_auto_follows_repeats():
    from etegrl.data import exclude_history, repeat_rate
    once = build_splits(RawData(sequences={"u1": ["a", "b", "c", "d"], "u2": ["c", "d", "e", "f"]},
                                source="hand"), max_len=50)
    again = build_splits(RawData(sequences={"u1": ["a", "b", "a", "c", "d"],
                                            "u2": ["c", "d", "e", "f"]}, source="hand"), max_len=50)
    assert repeat_rate(once.splits) == 0.0 and repeat_rate(again.splits) > 0.0
    assert exclude_history("auto", once.splits) and not exclude_history("auto", again.splits)
    assert exclude_history("always", again.splits) and not exclude_history("never", once.splits)
    with pytest.raises(ValueError, match="auto, always or never"):
        exclude_history("sometimes", once.splits)
