"""The benchmark helpers that compute what the notes report: the seed aggregate, the
transformers-generate copy of a checkpoint (its lists must be ours for the speed ratio to mean
anything), the prefix reach and the first-code beam tables."""

import json
import sys

import pytest
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


def test_prefix_reach_counts_leading_codes_by_hand(tmp_path, capsys):
    """Four users, codes of 3 levels. User 1's list holds the target (reach 1, 1, 1); user 2's
    best member shares the first code only (1, 0, 0); user 3's nothing; user 4's member shares
    the last two codes but not the first, which is no reach at all. So reach per level is 2/4,
    1/4, 1/4; distinct first codes in each list: 2, 1, 1, 1."""
    from prefix_reach import main, prefix_reach
    from safetensors.torch import save_file

    from etegrl.data import DataError

    codes = torch.tensor([[0, 0, 0],   # padding item 0
                          [1, 1, 1],   # item 1
                          [1, 1, 2],   # item 2: shares two codes with item 1
                          [1, 2, 1],   # item 3: shares the first code with items 1, 2
                          [2, 1, 1],   # item 4: another first code, same later codes as item 1
                          [3, 3, 3]])  # item 5
    lists = {1: (1, [4, 1]), 2: (2, [3]), 3: (5, [4]), 4: (1, [4])}
    out = prefix_reach(lists, codes, k=10)
    assert out["users"] == 4
    assert out["reach"] == [2 / 4, 1 / 4, 1 / 4]
    assert out["first_codes"] == (2 + 1 + 1 + 1) / 4
    # k cuts the list before the hit: user 1 then reaches nothing
    assert prefix_reach(lists, codes, k=1)["reach"] == [1 / 4, 0.0, 0.0]
    with pytest.raises(DataError, match="item 9 has no codes"):
        prefix_reach({1: (9, [1])}, codes, source="x.jsonl")

    # the command: a stage folder's test_topk.jsonl read with a checkpoint folder's codes
    save_file({"codes": codes}, str(tmp_path / "codes.safetensors"))
    write(tmp_path / "run" / "test_topk.jsonl", "".join(
        json.dumps({"user": u, "target": t, "ranked": r}) + "\n" for u, (t, r) in lists.items()))
    main(["--codes", str(tmp_path), str(tmp_path / "run")])
    assert "| 4 | 0.5000 | 0.2500 | 0.2500 | 1.25 |" in capsys.readouterr().out


def test_first_code_beam_rows_match_the_evaluation(trained_run, tiny_data, capsys, monkeypatch):
    """Its rows are the test evaluation's with and without the split beam, and the split row's
    paired difference is that of the two rows' per-user NDCG@10."""
    from first_code_beam import main

    from etegrl.checkpoint import load_checkpoint
    from etegrl.data import exclude_history, load_processed
    from etegrl.evaluation import evaluate_generative

    monkeypatch.setattr(sys, "argv", ["first_code_beam.py", "--checkpoint",
                                      str(trained_run / "best"), "--data-dir",
                                      str(tiny_data / "data"), "--max-len", "8",
                                      "--first-codes", "2"])
    main()
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| one beam") or line.startswith("| 2 ")]
    ckpt = load_checkpoint(trained_run / "best")
    splits = load_processed(tiny_data / "data").splits
    ndcg = []
    for row, n in zip(rows, (0, 2)):
        m = evaluate_generative(ckpt["model"].eval(), ckpt["table"], splits["test"], max_len=8,
                                first_codes=n, exclude_history=exclude_history("auto", splits))
        assert row[1:3] == [f"{m['recall@10']:.4f}", f"{m['ndcg@10']:.4f}"]
        ndcg.append(m["ndcg@10"])
    assert float(rows[1][5].split()[0]) == pytest.approx(ndcg[1] - ndcg[0], abs=1e-4)
