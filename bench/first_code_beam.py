"""Test lists from a beam split over first codes, against the protocol's one beam.

    python bench/first_code_beam.py --checkpoint D/rl/best --data-dir D/data --first-codes 2 4 5

Most lists miss the true item at its first code (bench/prefix_reach.py), and a model's top 10
often holds only 2–3 first codes where SASRec's holds about 4. This asks whether the ranking
within first codes is better than the choice between them: the beam (20) split evenly over the
N most likely first codes (``beam_search(first_codes=N)``), its top 10 merged best first. For
each N: the test metrics, the share of users whose top 10 reaches the true item's first code,
and the per-user NDCG@10 and Recall@10 difference from the one-beam lists with a 95% bootstrap
interval (users resampled). Test split, leave-one-out, full ranking, history items excluded as
the data says.
"""

from __future__ import annotations

import torch

import common

from etegrl.checkpoint import load_checkpoint
from etegrl.data import exclude_history, load_processed
from etegrl.evaluation import evaluate_generative
from etegrl.metrics import paired_bootstrap, per_user_gains
from prefix_reach import prefix_reach


def main() -> None:
    p = common.parser(__doc__, users=0)
    p.add_argument("--first-codes", type=int, nargs="+", default=[2, 4, 5])
    p.add_argument("--exclude-history", default="auto", choices=["auto", "always", "never"])
    args = p.parse_args()
    torch.set_num_threads(2)
    ckpt = load_checkpoint(args.checkpoint)
    model, table = ckpt["model"].eval(), ckpt["table"]
    data = load_processed(args.data_dir)
    test = data.splits["test"]
    exclude = exclude_history(args.exclude_history, data.splits)
    print(f"test split, leave-one-out, full ranking over {table.n_items} items, beam 20, a hit "
          f"needs all {table.code_len} codes, history items {'excluded' if exclude else 'kept'}")
    print("| first codes | recall@10 | ndcg@10 | coverage@10 | reach@10, first code | "
          "NDCG@10 − one beam | Recall@10 − one beam |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for n in [0] + args.first_codes:
        metrics, rows, lists = evaluate_generative(
            model, table, test, max_len=args.max_len, exclude_history=exclude,
            max_users=args.users, first_codes=n, return_lists=True)
        targets = torch.as_tensor([test["target"][i] for i in rows])
        scores = per_user_gains(lists.tolist(), targets)
        reach = prefix_reach({i: (t, [x for x in ranked if x > 0]) for i, (t, ranked)
                              in enumerate(zip(targets.tolist(), lists.tolist()))},
                             table.codes)["reach"][0]
        diff = ["–", "–"]
        if base is None:
            base = scores
        else:
            diff = [paired_bootstrap(scores[k] - base[k]) for k in ("ndcg@10", "recall@10")]
            diff = [f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" for d in diff]
        print(f"| {n or 'one beam'} | {metrics['recall@10']:.4f} | {metrics['ndcg@10']:.4f} | "
              f"{metrics['coverage@10']:.3f} | {reach:.4f} | {diff[0]} | {diff[1]} |")


if __name__ == "__main__":
    main()
