"""Checks of a tiny chain run by ``bench/gpu_check.sh``: every stage ran on the wanted device
(``results.json: device``, the prepare step's ``summary.json``), finished (``DONE``), with bf16
where asked, and gave finite test metrics in [0, 1]; the GRPO checkpoint loads on the device
and its top-10 lists for the test users agree with the same checkpoint's on the CPU (bf16 is
not used here; float sums in another order may swap near-ties, so agreement ≥ 95% of lists).
Prints one line per check and exits 1 if any fails."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from etegrl.checkpoint import load_checkpoint  # noqa: E402
from etegrl.data import load_processed, pad_histories  # noqa: E402
from etegrl.generation import beam_search  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--users", type=int, default=256)
    args = parser.parse_args()
    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    summary = json.loads((args.out / "data" / "summary.json").read_text())
    check(summary.get("device", "").startswith(args.device),
          f"prepare ran on {summary.get('device')} (wanted {args.device})")
    for stage in ("pretrain", "finetune", "rl"):
        folder = args.out / stage
        check((folder / "DONE").is_file(), f"{stage} finished")
        results = json.loads((folder / "results.json").read_text())
        check(results.get("device", "").startswith(args.device),
              f"{stage} trained and evaluated on {results.get('device')}")
        check(results.get("bf16") is (args.device != "cpu"), f"{stage} bf16 = {results.get('bf16')}")
        metrics = {k: v for k, v in results["test"].items() if isinstance(v, float)}
        check(all(math.isfinite(v) and 0 <= v <= 1 for v in metrics.values()),
              f"{stage} test metrics finite in [0, 1]: ndcg@10 {metrics['ndcg@10']:.4f}")
    data = load_processed(args.out / "data")
    test = data.splits["test"]
    n = min(args.users, len(test))
    lists = {}
    for device in (args.device, "cpu"):
        ckpt = load_checkpoint(args.out / "rl" / "best", device=device)
        max_len = yaml.safe_load((args.out / "rl" / "rl_config.yaml").read_text())["max_len"]
        hist = pad_histories([h[-max_len:] for h in test["history"][:n]]).to(device)
        with torch.no_grad():
            lists[device] = beam_search(ckpt["model"].eval(), ckpt["table"], hist,
                                        beam=20)["items"][:, :10].cpu()
    same = (lists[args.device] == lists["cpu"]).all(1).float().mean().item()
    check(same >= 0.95, f"top-10 lists on {args.device} equal the CPU's for {same:.1%} of "
                        f"{n} test users")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
