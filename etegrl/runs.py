"""Output folders: one run per folder, reused when finished with the same config."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import yaml

from .config import ConfigError, save_config

DONE = "DONE"


def claim_output(cfg, out: str | Path, what: str) -> bool:
    """Prepare ``out`` for a run of ``cfg``; True when it already holds this finished run.

    A folder holding a run with another config is an error unless ``cfg.overwrite`` (then it
    is cleared): nothing of another run is overwritten silently.
    """
    out = Path(out)
    saved = out / f"{what}_config.yaml"
    current = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if f.init and f.name != "overwrite"}
    if saved.is_file() and not cfg.overwrite:
        previous = yaml.safe_load(saved.read_text()) or {}
        previous.pop("overwrite", None)
        if previous != current:
            changed = sorted(k for k in current.keys() | previous.keys()
                             if current.get(k) != previous.get(k))
            raise ConfigError(
                f"output_dir {out} holds another {what} run (keys that differ: "
                f"{', '.join(changed)}); choose another output_dir or set overwrite=true")
        if (out / DONE).is_file():
            return True
    elif not saved.is_file() and out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"output_dir {out} is not empty and holds no {what} run; choose "
                          f"another output_dir or set overwrite=true")
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return False


def mark_done(out: str | Path) -> None:
    (Path(out) / DONE).write_text("ok\n")
