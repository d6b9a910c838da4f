"""A run's results as one markdown table, and its training curves: python -m etegrl.report runs/<dataset>

Reads ``data/summary.json`` (SASRec) and ``<stage>/results.json`` of every stage that finished,
prints the table and writes it to ``results.md`` in the run folder; from each stage's
``log.jsonl`` it draws ``curves.png`` (training losses or rewards per step, validation
Recall@10 / NDCG@10 per epoch) when matplotlib is installed (the ``plot`` extra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import EtegrlError

COLUMNS = ["recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10"]
# behaviour beside the metrics, where a row recorded it
BEHAVIOUR = ["distinct_top1", "popular10_share@10", "history_share@10"]


STAGES = ("pretrain-tiger", "pretrain", "finetune", "rl", "rl-control")


def protocol_note(roots) -> str:
    """The evaluation settings, as the runs under ``roots`` recorded them in results.json."""
    stated = []
    for root in roots:
        for stage in STAGES:
            path = Path(root) / stage / "results.json"
            if path.is_file():
                text = read_json(path).get("protocol")
                if text and text not in stated:
                    stated.append(text)
    generative = "; ".join(stated) or "none found"
    excluded = set()
    for root in roots:
        summary = Path(root) / "data" / "summary.json"
        if summary.is_file():
            excluded.add(bool(read_json(summary).get("exclude_history", False)))
    rule = {frozenset({True}): ", items already in the user's history excluded",
            frozenset({False}): ""}.get(frozenset(excluded), " (history items excluded in some runs only)")
    return (f"Test split. Most popular and SASRec: leave-one-out, full ranking over all items by "
            f"their scores{rule}. Generative models: {generative}.")


def rows(root: Path):
    summary = root / "data" / "summary.json"
    if summary.is_file():
        s = read_json(summary)
        if "most_popular" in s:
            yield "Most popular (training counts)", s["most_popular"]["test"], 0.0
        if "transitions" in s:
            yield "Item transitions (training sequences)", s["transitions"]["test"], 0.0
        if "sasrec" in s:
            yield "SASRec (full-softmax CE)", s["sasrec"]["test"], s["sasrec"]["train_seconds"]
    for stage in STAGES:
        path = root / stage / "results.json"
        if path.is_file():
            r = read_json(path)
            name = {"pretrain-tiger": "TIGER mode (pretrain)", "pretrain": "ETEGRec pretrain",
                    "finetune": "ETEGRec finetune", "rl": "ETEGRec + GRPO",
                    "rl-control": "control: GRPO's steps without the RL term"}[stage]
            yield name, r["test"], r["train_seconds"]


def cell(value) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def table(root: str | Path) -> str:
    root = Path(root)
    lines = ["| model | " + " | ".join(COLUMNS + BEHAVIOUR) + " | train time |",
             "|---" * (len(COLUMNS) + len(BEHAVIOUR) + 2) + "|"]
    try:
        found = list(rows(root))
    except (KeyError, TypeError) as err:
        raise ReportError(f"{root}: a results.json or summary.json lacks the field {err}") from None
    for name, test, seconds in found:
        lines.append(f"| {name} | " + " | ".join(f"{test[c]:.4f}" for c in COLUMNS) + " | "
                     + " | ".join(cell(test.get(c)) for c in BEHAVIOUR) + f" | {seconds:.0f} s |")
    return "\n".join(lines) + "\n\n" + protocol_note([root]) + "\n"


class ReportError(EtegrlError):
    """A run file the report cannot read; the message names it."""


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object")
    return value


def read_log(path: Path) -> list[dict]:
    """A stage's ``log.jsonl``; a damaged line is a ``ReportError`` naming it."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not readable ({err})") from None
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ReportError(f"{path}:{number}: damaged line ({err.msg})") from None
    return records


def plot_stage(stage_dir: Path) -> Path | None:
    """``curves.png`` of one stage folder: per-step series on the left, validation right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(stage_dir / "log.jsonl")
    steps = [r for r in records if "step" in r]
    valid = [r for r in records if "valid" in r]
    if not steps and not valid:
        return None
    if any(r.get("kind") == "grpo" for r in steps):  # per-function reward means, KL, hits
        names = {k for r in steps for k in r if k.startswith("reward/") and k.endswith("/mean")}
        series = sorted(names) + ["kl", "group_hit_rate", "sft"]
    else:
        series = ["total", "code", "vq", "sia", "psa"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in series:
        points = [(r["step"], r[key]) for r in steps if isinstance(r.get(key), (int, float))]
        if points:
            left.plot(*zip(*points), label=key, linewidth=0.8)
    left.set_xlabel("step")
    left.set_yscale("symlog", linthresh=1e-3)
    left.legend()
    left.set_title(f"{stage_dir.name}: training")
    by_step = bool(valid) and all("after_step" in r for r in valid)  # older logs: epochs only
    for key in ("recall@10", "ndcg@10"):
        right.plot([r["after_step" if by_step else "epoch"] for r in valid],
                   [r["valid"][key] for r in valid], marker="o", label=f"valid {key}")
    right.set_xlabel("optimiser step (0: before training)" if by_step
                     else "epoch (-1: before training)")
    right.legend()
    right.set_title(f"{stage_dir.name}: validation")
    fig.tight_layout()
    out = stage_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plots(root: str | Path) -> list[Path]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no curves drawn")
        return []
    drawn = []
    for d in sorted(Path(root).iterdir()):
        if (d / "log.jsonl").is_file():
            try:
                path = plot_stage(d)
            except ReportError as err:  # the table is still worth having
                print(f"warning: no curves for {d.name}: {err}", file=sys.stderr)
                continue
            if path is not None:
                drawn.append(path)
    return drawn


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m etegrl.report runs/<dataset>", file=sys.stderr)
        return 2
    try:
        text = table(argv[0])
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (Path(argv[0]) / "results.md").write_text(text)
    print(text)
    for path in plots(argv[0]):
        print(f"curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
