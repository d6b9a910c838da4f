"""Where do the lists miss? For test lists (each run's ``test_topk.jsonl``, or the prepare
step's ``sasrec_test_topk.jsonl``) and the item codes they are read with, the share of users
whose top k holds an item sharing the true item's first L codes, for every L (the last level is
a hit), and the mean number of distinct first codes in the top k.

    python bench/prefix_reach.py --codes runs/x/finetune/best runs/x/finetune runs/x/rl \\
        runs/x/data/sasrec_test_topk.jsonl

A list that never reaches the true item's first code cannot hit it, whatever the later levels
do: reach@1 bounds Recall@k, and the gap between reach@1 and the hit share says how often the
later codes go wrong once the region is right. Any list can be read with any codes (SASRec's
with the generative model's), so the reach of a model without codes is comparable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etegrl.compare import topk_path  # noqa: E402
from etegrl.data import DataError, read_topk  # noqa: E402
from etegrl.files import read_tensors  # noqa: E402


def prefix_reach(lists: dict[int, tuple[int, list[int]]], codes: torch.Tensor, *, k: int = 10,
                 source: str = "lists") -> dict:
    """``lists``: {user: (target, ranked item ids)}; ``codes``: [items + 1, code_len] (row 0 the
    padding item). Returns ``reach`` (share of users per prefix length 1..code_len whose top k
    holds an item sharing that many leading codes with the target) and ``first_codes`` (mean
    distinct first codes in the top k)."""
    n_rows, code_len = codes.shape
    reach = torch.zeros(code_len, dtype=torch.float64)
    distinct = 0.0
    for user, (target, ranked) in lists.items():
        top = ranked[:k]
        bad = [i for i in [target, *top] if not 0 < i < n_rows]
        if bad:
            raise DataError(f"{source}: user {user}: item {bad[0]} has no codes "
                            f"(the codes cover items 1..{n_rows - 1})")
        if not top:
            continue
        same = codes[top] == codes[target]  # [k, code_len]
        shared = same.long().cumprod(1).sum(1)  # leading codes each member shares
        best = int(shared.max())
        reach[:best] += 1
        distinct += len(set(codes[top, 0].tolist()))
    n = max(len(lists), 1)
    return {"users": len(lists), "reach": (reach / n).tolist(), "first_codes": distinct / n}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codes", required=True,
                   help="A checkpoint folder (its codes.safetensors) or a codes.safetensors file.")
    p.add_argument("--k", type=int, default=10, help="List length read.")
    p.add_argument("lists", nargs="+", help="test_topk.jsonl files or stage folders holding one.")
    args = p.parse_args(argv)
    path = Path(args.codes)
    path = path / "codes.safetensors" if path.is_dir() else path
    codes = read_tensors(path, DataError).get("codes")
    if codes is None or codes.ndim != 2:
        raise DataError(f"{path}: no [items + 1, code_len] 'codes'")
    levels = codes.shape[1]
    head = " | ".join(f"reach@{args.k}, {lv} code{'s' if lv > 1 else ''}" for lv in range(1, levels + 1))
    print(f"| lists | users | {head} | distinct first codes in the top {args.k} |")
    print("|---" * (levels + 3) + "|")
    for arg in args.lists:
        file = topk_path(arg)
        out = prefix_reach(read_topk(file), codes, k=args.k, source=str(file))
        cells = " | ".join(f"{r:.4f}" for r in out["reach"])
        print(f"| {arg} | {out['users']} | {cells} | {out['first_codes']:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        sys.exit(f"error: {err}")
