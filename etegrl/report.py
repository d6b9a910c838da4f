"""A run's results as one markdown table: python -m etegrl.report runs/<dataset>

Reads ``data/summary.json`` (SASRec) and ``<stage>/results.json`` of every stage that finished,
prints the table and writes it to ``results.md`` in the run folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ["recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10"]


def rows(root: Path):
    summary = root / "data" / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        if "sasrec" in s:
            yield "SASRec (full-softmax CE)", s["sasrec"]["test"], s["sasrec"]["train_seconds"]
    for stage in ("pretrain-tiger", "pretrain", "finetune", "rl"):
        path = root / stage / "results.json"
        if path.is_file():
            r = json.loads(path.read_text())
            name = {"pretrain-tiger": "TIGER mode (pretrain)", "pretrain": "ETEGRec pretrain",
                    "finetune": "ETEGRec finetune", "rl": "ETEGRec + GRPO"}[stage]
            yield name, r["test"], r["train_seconds"]


def table(root: str | Path) -> str:
    root = Path(root)
    lines = ["| model | " + " | ".join(COLUMNS) + " | train time |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for name, test, seconds in rows(root):
        lines.append(f"| {name} | " + " | ".join(f"{test[c]:.4f}" for c in COLUMNS)
                     + f" | {seconds:.0f} s |")
    protocol = ("Test split; leave-one-out, full ranking over all items; generative models rank "
                "by trie-constrained beam search (beam 20) and a hit needs all 4 codes.")
    return "\n".join(lines) + "\n\n" + protocol + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m etegrl.report runs/<dataset>", file=sys.stderr)
        return 2
    text = table(argv[0])
    (Path(argv[0]) / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
