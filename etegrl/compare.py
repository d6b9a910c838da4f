"""Paired comparison of two models on the same users: python -m etegrl.compare A B [A2 B2 ...]

Each argument is a ``test_topk.jsonl`` (or a stage folder holding one), as every evaluation
writes. Pairs (A, B) are given in order, one pair per seed; for each user the difference
B − A in NDCG@10 and Recall@10 is averaged over the pairs, then the mean over users gets a 95%
bootstrap interval (users resampled). An interval above zero says B beats A on these users.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .data import DataError, read_topk
from .metrics import paired_bootstrap, per_user_gains


def topk_path(arg: str) -> Path:
    path = Path(arg)
    return path / "test_topk.jsonl" if path.is_dir() else path


def per_user(path: Path, users: list[int] | None = None):
    lists = read_topk(path)
    if users is None:
        users = sorted(lists)
    missing = [u for u in users if u not in lists]
    if missing or len(lists) != len(users):
        raise DataError(f"{path}: not the same users as the first file "
                        f"({len(lists)} users, {len(missing)} of the first file's missing)")
    targets = [lists[u][0] for u in users]
    return users, targets, per_user_gains([lists[u][1] for u in users], targets)


def compare(pairs: list[tuple[Path, Path]], *, samples: int = 10000, seed: int = 0) -> dict:
    users, diffs, means = None, {}, {"a": {}, "b": {}}
    for a, b in pairs:
        users, targets_a, gains_a = per_user(a, users)
        _, targets_b, gains_b = per_user(b, users)
        if targets_a != targets_b:
            raise DataError(f"{a} and {b} have different targets for the same users")
        for name in gains_a:
            diffs.setdefault(name, []).append(gains_b[name] - gains_a[name])
            means["a"].setdefault(name, []).append(float(gains_a[name].mean()))
            means["b"].setdefault(name, []).append(float(gains_b[name].mean()))
    out = {}
    for name, values in diffs.items():
        out[name] = {"a": sum(means["a"][name]) / len(pairs), "b": sum(means["b"][name]) / len(pairs),
                     **paired_bootstrap(torch.stack(values).mean(0), samples=samples, seed=seed)}
    return out


def with_start(checkpoint: str, topk: Path, log=print) -> dict | None:
    """For a stage that started from ``checkpoint`` whose stage wrote its test lists: the
    per-user test difference (``topk`` − start) in NDCG@10 and Recall@10 with a 95% bootstrap
    interval (users resampled), logged; None when there is nothing to pair."""
    start = Path(checkpoint).parent / "test_topk.jsonl"
    if not checkpoint or not start.is_file():
        return None
    try:
        paired = compare([(start, topk)])
    except ValueError as err:  # another split or other users: nothing to pair
        log(f"no paired comparison with the start ({err})")
        return None
    for name, r in paired.items():
        log(f"{name} vs the start ({start.parent.name}): {r['a']:.4f} → {r['b']:.4f}, "
            f"per-user difference {r['mean']:+.4f} [95% interval {r['low']:+.4f}, "
            f"{r['high']:+.4f}] over {r['users']} users")
    return paired


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etegrl.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="A B [A2 B2 ...]: test_topk.jsonl files or stage folders")
    parser.add_argument("--samples", type=int, default=10000, help="Bootstrap resamples.")
    args = parser.parse_args(argv)
    if len(args.files) % 2:
        print("error: give the files in pairs: A B [A2 B2 ...]", file=sys.stderr)
        return 2
    paths = [topk_path(f) for f in args.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        result = compare(list(zip(paths[::2], paths[1::2])), samples=args.samples)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("| metric | A | B | B − A (per user) | 95% bootstrap interval | users | pairs |")
    print("|---|---|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['a']:.4f} | {r['b']:.4f} | {r['mean']:+.4f} | "
              f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['users']} | {len(paths) // 2} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
