"""What the benchmark scripts share: the project on the import path, a parser with the
checkpoint and data options, and median timing."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parser(doc: str, *, users: int, max_len: int = 20) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="A stage's best/ folder.")
    p.add_argument("--data-dir", required=True, help="The prepare step's output folder.")
    p.add_argument("--users", type=int, default=users, help="Users (test histories) to use.")
    p.add_argument("--max-len", type=int, default=max_len, help="History items read.")
    return p


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
