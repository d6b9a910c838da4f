"""How much a teacher has seen the answers it would teach: Recall@10 and NDCG@10 of each scorer
on training rows (each user's last training row, the target a distilling stage or an rl prompt
asks for) against validation rows (held out from every scorer). A scorer far better on its own
training rows than on held-out ones hands the policy the training answers rather than
knowledge that generalises.

    python bench/teacher_leakage.py runs/scientific/data [--users 4000]

Rows: the transitions scorer on its counts as they are (``transition_leave_out=false``) and
with each training row's own pairs left out (the default), and the prepare step's SASRec when
the data folder has it. History items stay rankable; ranking is over every item.
"""

from __future__ import annotations

import argparse

import torch
import common  # noqa: F401  (puts the project on the import path)

from etegrl.data.batching import pad_histories
from etegrl.data.split import future_items, load_processed
from etegrl.embeddings import EmbeddingError
from etegrl.metrics import ranking_metrics, ranks_from_lists
from etegrl.teacher import Teacher, TransitionTeacher


def padded(rows: list[list[int]], max_len: int) -> torch.Tensor:
    return pad_histories([list(r)[-max_len:] for r in rows])


def metrics(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    m = ranking_metrics(ranks_from_lists(scores.topk(10, 1).indices, targets), ks=[10])
    return m["recall@10"], m["ndcg@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir")
    parser.add_argument("--users", type=int, default=4000, help="users scored (the first N)")
    parser.add_argument("--max_len", type=int, default=20, help="history items read")
    args = parser.parse_args()
    data = load_processed(args.data_dir)
    splits, n = data.splits, data.n_items
    train = splits["train"]
    last = {}
    for i, user in enumerate(train["user"]):
        last[user] = i  # rows run through each user's prefixes in order
    picked = sorted(last.values())[:args.users]
    ahead = future_items(splits, 2)
    rows = {
        "training rows": (padded([train["history"][i] for i in picked], args.max_len),
                          torch.tensor([train["target"][i] for i in picked]),
                          padded([[train["target"][i]] + ahead[i] for i in picked], 3)),
        "validation rows": (padded(splits["valid"]["history"][:args.users], args.max_len),
                            torch.tensor(splits["valid"]["target"][:args.users]), None),
    }
    scorers = {"transitions, counts as they are":
               TransitionTeacher(splits["train_seq"]["items"], n, leave_out=False),
               "transitions, own pairs left out": TransitionTeacher(splits["train_seq"]["items"], n)}
    try:
        scorers["SASRec (prepare step)"] = Teacher(args.data_dir, n)
    except EmbeddingError as err:
        print(f"no SASRec row: {err}")
    print(f"{len(picked)} users; Recall@10 / NDCG@10 over all {n} items, history rankable")
    print("| scorer | training rows | validation rows | training ÷ validation (R@10) |")
    print("|---|---|---|---|")
    for name, scorer in scorers.items():
        out = {}
        for split, (hist, targets, future) in rows.items():
            scores = (scorer.scores(hist) if future is None or isinstance(scorer, Teacher)
                      else scorer.scores(hist, future=future))
            out[split] = metrics(scores, targets)
        tr, va = out["training rows"], out["validation rows"]
        print(f"| {name} | {tr[0]:.4f} / {tr[1]:.4f} | {va[0]:.4f} / {va[1]:.4f} | "
              f"{tr[0] / max(va[0], 1e-9):.1f}× |")


if __name__ == "__main__":
    main()
