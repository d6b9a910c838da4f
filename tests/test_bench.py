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
