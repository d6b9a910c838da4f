"""Top-K recommendations from a checkpoint for a history given on the command line.

    python -m etegrl.recommend --checkpoint runs/ml-100k/rl/best --data-dir runs/ml-100k/data \\
        --history "Toy Story" 50 "Fargo" --k 10
    python -m etegrl.recommend --checkpoint runs/ml-100k/rl/best --data-dir runs/ml-100k/data --user 196

History items are item tokens as in the source data (``items.jsonl``'s ``token``) or pieces of
their text (titles), matched case-insensitively; an ambiguous or unknown piece is an error that
lists candidates. ``--user`` takes the user's whole sequence (training, validation and test
items), i.e. recommends what comes after everything the data knows. Ranking is the evaluation's:
trie-constrained beam search over all items, scores are the beams' log-probabilities.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

import yaml

from .checkpoint import CheckpointError, load_checkpoint
from .data import DataError, load_processed, pad_histories
from .errors import EtegrlError
from .generation import beam_search


class ItemCatalogue:
    """Item ids ↔ tokens and texts from a prepared data folder's ``items.jsonl``."""

    def __init__(self, data_dir: str | Path):
        path = Path(data_dir) / "items.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: not found (is --data-dir the prepare step's output?)")
        text = path.read_text(encoding="utf-8")
        self.items = [json.loads(line) for line in text.split("\n") if line.strip()]
        self.by_token = {str(it["token"]): it["id"] for it in self.items}
        self.text = {it["id"]: it.get("text") or "" for it in self.items}
        self.token = {it["id"]: str(it["token"]) for it in self.items}

    def resolve(self, query: str) -> int:
        if query in self.by_token:
            return self.by_token[query]
        q = query.lower()
        hits = [it["id"] for it in self.items if q in (it.get("text") or "").lower()]
        exact = [i for i in hits if self.text[i].lower().split(". ")[0] == q]
        if len(exact) == 1 or len(hits) == 1:
            return (exact or hits)[0]
        if hits:
            shown = "; ".join(f"{self.token[i]}: {self.text[i]}" for i in hits[:8])
            raise DataError(f"history item {query!r} matches {len(hits)} items ({shown}"
                            f"{' …' if len(hits) > 8 else ''}); give its token or more of its title")
        titles = {self.text[i].split(". ")[0]: i for i in self.text if self.text[i]}
        close = difflib.get_close_matches(query, list(titles), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"history item {query!r} is neither an item token nor part of an "
                        f"item's text{hint}")


def default_max_len(checkpoint: Path) -> int:
    """The history length the checkpoint's stage was trained with (its saved config)."""
    for cfg in sorted(checkpoint.parent.glob("*_config.yaml")):
        value = (yaml.safe_load(cfg.read_text()) or {}).get("max_len")
        if isinstance(value, int):
            return value
    return 50


def recommend(checkpoint: str | Path, data_dir: str | Path, history: list[int], *, k: int = 10,
              max_len: int | None = None, beam: int = 20, exclude_history: bool = False) -> list[dict]:
    if k < 1 or beam < 1 or (max_len is not None and max_len < 1):
        raise DataError(f"k, beam and max_len must be ≥ 1 (got k={k}, beam={beam}, "
                        f"max_len={max_len})")
    checkpoint = Path(checkpoint)
    catalogue = ItemCatalogue(data_dir)
    ckpt = load_checkpoint(checkpoint)
    model, table = ckpt["model"].eval(), ckpt["table"]
    if table.n_items != len(catalogue.items):
        raise CheckpointError(f"{checkpoint} has codes for {table.n_items} items but "
                              f"{data_dir} has {len(catalogue.items)}: a checkpoint of another "
                              f"dataset? Give the --data-dir it was trained on")
    unknown = [i for i in history if not 1 <= i <= table.n_items]
    if unknown:
        raise DataError(f"history item ids {unknown[:5]} are not items of {data_dir}")
    max_len = max_len or default_max_len(checkpoint)
    width = max(beam, k + (len(set(history)) if exclude_history else 0))
    out = beam_search(model, table, pad_histories([history[-max_len:]]), beam=width)
    rows = []
    for item, score in zip(out["items"][0].tolist(), out["scores"][0].tolist()):
        if item <= 0 or (exclude_history and item in history):
            continue
        rows.append({"rank": len(rows) + 1, "item": item, "token": catalogue.token.get(item, "?"),
                     "score": score, "text": catalogue.text.get(item, "")})
        if len(rows) == k:
            break
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etegrl.recommend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="A stage's best/ folder.")
    parser.add_argument("--data-dir", required=True, help="The prepare step's output folder.")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", nargs="+", help="Item tokens or title pieces, oldest first.")
    who.add_argument("--user", help="A user id of the data: recommend after their whole sequence.")
    parser.add_argument("--k", type=int, default=10, help="How many items to print.")
    parser.add_argument("--beam", type=int, default=20, help="Beam size (at least k).")
    parser.add_argument("--max-len", type=int, default=None,
                        help="History items read (default: the stage's max_len).")
    parser.add_argument("--exclude-history", action="store_true",
                        help="Leave out items already in the history.")
    parser.add_argument("--json", action="store_true", help="Print JSON lines instead of a table.")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in a command's output
    try:
        catalogue = ItemCatalogue(args.data_dir)
        if args.user is not None:
            data = load_processed(args.data_dir)
            if args.user not in data.users:
                raise DataError(f"user {args.user!r} is not in {args.data_dir}/users.txt")
            test = data.splits["test"]
            row = list(test["user"]).index(data.users.index(args.user))
            history = list(test["history"][row]) + [int(test["target"][row])]
        else:
            history = [catalogue.resolve(q) for q in args.history]
        rows = recommend(args.checkpoint, args.data_dir, history, k=args.k, beam=args.beam,
                         max_len=args.max_len, exclude_history=args.exclude_history)
    except EtegrlError as err:  # bad input of any kind: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("history: " + " → ".join(catalogue.text.get(i) or catalogue.token.get(i, str(i))
                                  for i in history[-5:]) + (" (last 5)" if len(history) > 5 else ""))
    print(f"{'rank':>4}  {'score':>8}  {'item':>8}  text")
    for r in rows:
        print(f"{r['rank']:>4}  {r['score']:>8.3f}  {r['token']:>8}  {r['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
