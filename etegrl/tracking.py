"""Experiment trackers (``report_to``) through accelerate's tracker classes.

Every stage writes ``log.jsonl``; with ``report_to: [tensorboard]`` (or ``trackio``, ``wandb``,
``mlflow``) the same scalars also go to those trackers, at the same optimiser step, with the
resolved config as hyper-parameters and the test metrics at the end. Trackers that talk to a
service are started offline (``WANDB_MODE=offline``, an MLflow file store, trackio's local
database) unless the user's environment says otherwise. Files go under
``<output_dir>/trackers/``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .config import ConfigError

TRACKERS = ("tensorboard", "trackio", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb",
            "mlflow": "mlflow"}


def check_report_to(names: list[str]) -> None:
    """A config check: known names, and 'none' alone."""
    unknown = [n for n in names if n not in TRACKERS + ("none",)]
    if unknown:
        raise ValueError(f"key 'report_to': {unknown} not supported; choose from "
                         f"{', '.join(TRACKERS)} or none")
    if "none" in names and len(names) > 1:
        raise ValueError("key 'report_to': 'none' cannot be combined with trackers")


def flat_scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """Numbers of a (nested) log record, keys joined by '/' (booleans and text left out)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class Trackers:
    """The trackers of one run, opened on the main process only."""

    def __init__(self, names: list[str], *, run_name: str, out_dir: str | Path, config: dict):
        from accelerate import tracking

        self.trackers = []
        names = [n for n in names if n != "none"]
        if not names:
            return
        missing = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]
        if missing:
            raise ConfigError(f"report_to: {', '.join(missing)} needs its package: pip install "
                              f"{' '.join(PACKAGES[n] for n in missing)}")
        root = Path(out_dir) / "trackers"
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name == "tensorboard":
                tracker = tracking.TensorBoardTracker(run_name, root)
            elif name == "wandb":
                os.environ.setdefault("WANDB_MODE", "offline")
                os.environ.setdefault("WANDB_DIR", str(root))
                tracker = tracking.WandBTracker(run_name)
            elif name == "mlflow":
                os.environ.setdefault("MLFLOW_TRACKING_URI", (root / "mlruns").resolve().as_uri())
                tracker = tracking.MLflowTracker(run_name, logging_dir=str(root))
            else:
                tracker = tracking.TrackioTracker(run_name)
            tracker.start()
            tracker.store_init_configuration(
                {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
                 for k, v in config.items()})
            self.trackers.append(tracker)

    def log(self, record: dict, step: int) -> None:
        values = flat_scalars(record)
        values.pop("step", None)
        if values:
            for tracker in self.trackers:
                tracker.log(values, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
