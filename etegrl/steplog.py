"""A stage's training log: ``log.jsonl`` and the trackers (main process only), the running
means of an epoch, and the window of steps not yet written (``logging_steps``)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import config_values
from .tracking import Trackers


def crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` (> 0) lies in (before, after]: a step-counted event is
    due after a batch that took the step count from ``before`` to ``after``."""
    return bool(every) and after // every > before // every


class StepLog:
    def __init__(self):
        self.file = None
        self.trackers = None
        self.logging_steps = 1  # one record per N steps: the means over them
        self.epoch_sums: dict[str, float] = {}
        self.epoch_n = 0
        self.window: dict = {"sums": {}, "n": 0, "logged_step": 0}  # steps not yet written

    def open(self, out: Path, cfg, resume_offset: int | None) -> None:
        """Open ``out/log.jsonl`` (a resumed run cuts it back to ``resume_offset``, where its
        state was saved) and the config's trackers."""
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.jsonl"
        if resume_offset is None:
            self.file = open(path, "w")
        else:
            with open(path, "a") as f:
                f.truncate(resume_offset)
            self.file = open(path, "a")
        self.trackers = Trackers(cfg.report_to, run_name=cfg.run_name or out.name, out_dir=out,
                                 config=config_values(cfg))

    def write(self, record: dict, step: int) -> None:
        if self.file is None:  # not the main process
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.trackers.log(record, step=record.get("step", step))

    def new_epoch(self) -> None:
        self.epoch_sums, self.epoch_n = {}, 0

    def add(self, epoch: int, kind: str, values: dict, step: int) -> None:
        """One training batch's values into the epoch's means and the window; the window is
        written once ``logging_steps`` steps have passed since the last record."""
        window = self.window
        for k, v in values.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
            window["sums"][k] = window["sums"].get(k, 0.0) + v
        self.epoch_n += 1
        window["n"] += 1
        window["epoch"], window["kind"] = epoch, kind
        if crossed(window["logged_step"], step, self.logging_steps):
            self.flush(step)

    def flush(self, step: int) -> None:
        """Write the window's means (if it holds any step) and start a new one."""
        window = self.window
        if window["n"]:
            means = {k: v / window["n"] for k, v in window["sums"].items()}
            self.write({"epoch": window["epoch"], "step": step, "kind": window["kind"], **means},
                       step)
        self.window = {"sums": {}, "n": 0, "logged_step": step}

    def epoch_means(self, keep=None) -> dict:
        return {k: v / max(1, self.epoch_n) for k, v in self.epoch_sums.items()
                if keep is None or k in keep}

    def state_dict(self) -> dict:
        return {"log_offset": self.file.tell(), "epoch_sums": dict(self.epoch_sums),
                "epoch_n": self.epoch_n, "window": self.window}

    def load_state_dict(self, state: dict, step: int) -> None:
        self.epoch_sums, self.epoch_n = dict(state["epoch_sums"]), state["epoch_n"]
        # states saved before logging_steps have no window
        self.window = state.get("window", {"sums": {}, "n": 0, "logged_step": step})

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.finish()
            self.trackers = None
        if self.file is not None:
            self.file.close()
            self.file = None
