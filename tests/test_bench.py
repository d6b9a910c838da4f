"""The benchmark helpers that compute what the notes report: the seed aggregate and the
transformers-generate copy of a checkpoint (its lists must be ours for the speed ratio to mean
anything)."""

import json
import sys

import torch

from tests.conftest import ROOT, write

sys.path.insert(0, str(ROOT / "bench"))


def test_aggregate_mean_and_std(tmp_path):
    from aggregate import aggregate

    for seed, ndcg in (("a", 0.02), ("b", 0.04)):
        write(tmp_path / seed / "finetune" / "results.json", json.dumps({
            "test": {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.01, "ndcg@10": ndcg,
                     "coverage@10": 0.3}, "train_seconds": 10.0,
            "protocol": "full ranking by beam search (beam 7), a hit needs all 4 codes"}))
    table = aggregate([tmp_path / "a", tmp_path / "b"])
    row = next(line for line in table.splitlines() if line.startswith("| ETEGRec finetune |"))
    assert "| 2 |" in row and "0.0300 ± 0.0141" in row and "10 ± 0" in row
    assert "(beam 7)" in table  # the settings the runs recorded, not assumed ones


def test_aggregate_pairs_grpo_with_its_start_and_control(tmp_path):
    """Below the table: per-user differences over the seed folders holding both test lists
    (here user 2's target moves from outside the top 10 to first: +1 of 2 users = +0.5)."""
    from aggregate import aggregate

    def lists(path, ranked):
        write(path / "test_topk.jsonl", "".join(
            json.dumps({"user": u, "target": 10 + u, "ranked": r}) + "\n"
            for u, r in ranked.items()))
        write(path / "results.json", json.dumps({
            "test": {"recall@5": 0.5, "recall@10": 0.5, "ndcg@5": 0.5, "ndcg@10": 0.5,
                     "coverage@10": 0.1}, "train_seconds": 1.0}))

    for seed in ("a", "b"):
        lists(tmp_path / seed / "finetune", {1: [11, 3], 2: [4, 5]})
        lists(tmp_path / seed / "rl", {1: [11, 3], 2: [12, 5]})
        lists(tmp_path / seed / "rl-control", {1: [11, 3], 2: [4, 5]})
    table = aggregate([tmp_path / "a", tmp_path / "b"])
    start = next(line for line in table.splitlines() if line.startswith("| GRPO against its finetuned"))
    control = next(line for line in table.splitlines() if line.startswith("| GRPO against its control"))
    assert "| 2 | +0.5000 [+0.0000, +1.0000] | +0.5000 [+0.0000, +1.0000] |" in start
    assert "+0.5000" in control
    assert "| the control against the finetuned start | 2 | +0.0000" in table
    assert "TIGER" not in table  # no pretrain folders: no such pair


def test_generate_copy_gives_our_lists(trained_run, tiny_data):
    from beam_search import as_t5, hf_topk

    from etegrl.checkpoint import load_checkpoint
    from etegrl.data import load_processed, pad_histories
    from etegrl.generation import beam_search

    ckpt = load_checkpoint(trained_run / "best")
    model, table = ckpt["model"].eval(), ckpt["table"]
    test = load_processed(tiny_data / "data").splits["test"]
    hist = pad_histories([h[-8:] for h in test["history"][:12]])
    with torch.no_grad():
        ours = beam_search(model, table, hist, beam=6)["items"]
        theirs = hf_topk(as_t5(model), table, hist, 6)
    # same lists up to ties in score (random tiny model: equal scores can swap neighbours)
    assert (ours == theirs).float().mean() > 0.9
    assert all(set(a) == set(b) for a, b in zip(ours.tolist(), theirs.tolist()))
