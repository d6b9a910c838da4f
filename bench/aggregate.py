"""Mean ± std over seeds of every model's test metrics and train time, as one markdown table.

    python bench/aggregate.py runs/ml-100k/seed42 runs/ml-100k/seed1 runs/ml-100k/seed2 [--out FILE]

Each folder has the layout ``run_grpo.sh`` writes (``data/``, ``pretrain-tiger/``,
``pretrain/``, ``finetune/``, ``rl/``, and ``bench/quality.sh``'s ``rl-control/``); models missing
from some folders are averaged over the folders that have them (the n column says how many).
Below the table: paired per-user comparisons (GRPO against its start and its control, TIGER
mode against ETEGRec) over the folders holding both test lists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import common  # noqa: F401  (puts the project on the import path)

from etegrl.compare import compare
from etegrl.data import DataError
from etegrl.report import protocol_note, rows

COLUMNS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10", "distinct_top1"]
# paired per-user comparisons (A, B): B − A over the folders that hold both models' test lists
PAIRS = [("finetune", "rl", "GRPO against its finetuned start"),
         ("rl-control", "rl", "GRPO against its control (the same steps without the RL term)"),
         ("finetune", "rl-control", "the control against the finetuned start"),
         ("pretrain-tiger", "pretrain", "ETEGRec pretrain against TIGER mode")]


def paired(roots: list[Path]) -> str:
    """The per-user NDCG@10 / Recall@10 difference B − A with its 95% bootstrap interval, one
    seed pair per folder (``python -m etegrl.compare``), for each of PAIRS found."""
    lines = []
    for a, b, what in PAIRS:
        pairs = [(r / a / "test_topk.jsonl", r / b / "test_topk.jsonl") for r in roots]
        pairs = [(x, y) for x, y in pairs if x.is_file() and y.is_file()]
        if not pairs:
            continue
        try:
            result = compare(pairs)
        except DataError as err:  # other users or targets: say so, keep the table
            lines.append(f"| {what} | {len(pairs)} | not comparable: {err} | |")
            continue
        cells = [f"{result[m]['mean']:+.4f} [{result[m]['low']:+.4f}, {result[m]['high']:+.4f}]"
                 for m in ("ndcg@10", "recall@10")]
        lines.append(f"| {what} | {len(pairs)} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return ("\n| paired, per user (B − A) | pairs | NDCG@10 [95% interval] | Recall@10 [95% interval] |\n"
            "|---|---|---|---|\n" + "\n".join(lines) + "\n\nPer-user differences averaged over "
            "the seed pairs, users resampled (10,000 bootstrap draws).\n")


def aggregate(roots: list[Path]) -> str:
    by_model: dict[str, list[tuple[dict, float]]] = {}
    for root in roots:
        for name, test, seconds in rows(root):
            by_model.setdefault(name, []).append((test, seconds))
    lines = ["| model | n | " + " | ".join(COLUMNS) + " | train time (s) |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for name, runs in by_model.items():
        cells = []
        for col in COLUMNS + ["seconds"]:
            values = np.array([s if col == "seconds" else t.get(col, np.nan) for t, s in runs])
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.0f} ± {std:.0f}" if col in ("seconds", "distinct_top1")
                         else f"{values.mean():.4f} ± {std:.4f}")
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n\nMean ± sample std over runs. " + protocol_note(roots) + "\n"
            + paired(roots))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="Also write the table to this file.")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    text = aggregate(args.roots)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
