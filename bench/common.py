"""What the benchmark scripts share: the project on the import path, the stages' malloc setting,
a parser with the checkpoint and data options, median timing and the machine's matmul peak."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etegrl.malloc import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as every stage does, so the benchmarks time what the stages run


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


def matmul_peak(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> float:
    """FLOP/s of the best of ``repeats`` ``n×n`` matmuls in ``dtype``: the machine's peak."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best
