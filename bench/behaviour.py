"""Does the recommender read the history? Top lists for each test user's real history, the
same items shuffled, and another user's history; agreement between them.

    python bench/behaviour.py --checkpoint runs/ml-100k/finetune/best --data-dir runs/ml-100k/data

A model that has learned only popularity gives the same list whatever the history (agreement
near 1 for another user's history); a sequential recommender changes its list when the order
changes. Prints top-1 agreement and mean top-10 overlap for both perturbations, and the distinct
top-1 items of the real histories.
"""

from __future__ import annotations

import numpy as np
import torch

import common

from etegrl.checkpoint import load_checkpoint
from etegrl.data import exclude_history, load_processed, pad_histories
from etegrl.generation import beam_search


def top_lists(model, table, histories, *, max_len, exclude, batch=128):
    out = []
    for i in range(0, len(histories), batch):
        rows = histories[i:i + batch]
        hist = pad_histories([h[-max_len:] for h in rows])
        seen = pad_histories(rows) if exclude else None
        out.append(beam_search(model, table, hist, beam=20, exclude=seen)["items"][:, :10])
    return torch.cat(out)


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    top1 = float((a[:, 0] == b[:, 0]).float().mean())
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.tolist(), b.tolist())])
    return top1, float(overlap)


def main() -> None:
    p = common.parser(__doc__, users=943)
    p.add_argument("--exclude-history", default="auto", choices=["auto", "always", "never"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.checkpoint)
    model, table = ckpt["model"].eval(), ckpt["table"]
    data = load_processed(args.data_dir)
    exclude = exclude_history(args.exclude_history, data.splits)
    test = data.splits["test"]
    histories = [list(h) for h in test["history"]][:args.users]
    rng = np.random.default_rng(args.seed)
    shuffled = [list(rng.permutation(h)) for h in histories]
    other = [histories[j] for j in rng.permutation(len(histories))]
    real = top_lists(model, table, histories, max_len=args.max_len, exclude=exclude)
    rows = [("shuffled history", top_lists(model, table, shuffled, max_len=args.max_len,
                                           exclude=exclude)),
            ("another user's history", top_lists(model, table, other, max_len=args.max_len,
                                                 exclude=exclude))]
    print(f"{len(histories)} test users, last {args.max_len} items read, beam 20, history items "
          f"{'excluded' if exclude else 'not excluded'}; distinct top-1 (real histories): "
          f"{int(torch.unique(real[:, 0]).numel())}")
    print("| history given | top-1 same as real | top-10 overlap with real |")
    print("|---|---|---|")
    for name, lists in rows:
        top1, overlap = agreement(real, lists)
        print(f"| {name} | {top1:.3f} | {overlap:.3f} |")


if __name__ == "__main__":
    main()
