"""Output folders: one run per folder, reused when finished with the same config."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml

from .config import ConfigError, config_values, save_config

DONE = "DONE"
# options that change how a run goes, not what it computes: not part of a run's identity
NEUTRAL_KEYS = ("overwrite", "progress", "threads", "save_state_every")


def claim_output(cfg, out: str | Path, what: str) -> bool:
    """Prepare ``out`` for a run of ``cfg``; True when it already holds this finished run.

    A folder holding a run with another config is an error unless ``cfg.overwrite`` (then it
    is cleared): nothing of another run is overwritten silently.
    """
    out = Path(out)
    saved = out / f"{what}_config.yaml"
    current = config_values(cfg)
    if saved.is_file() and not cfg.overwrite:
        previous = yaml.safe_load(saved.read_text()) or {}
        for key in NEUTRAL_KEYS:
            current.pop(key, None)
            previous.pop(key, None)
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


def run_stage(config_cls, stage_cls, argv=None, *, prog: str, errors: tuple = ()) -> int:
    """The ``__main__`` of a training stage: parse the config, claim the output folder (main
    process), run setup/train/cleanup in every process; bad input of any kind (``errors`` adds
    a stage's own error types) ends as one ``error:`` line and exit code 2."""
    from accelerate.utils import broadcast_object_list

    from .checkpoint import CheckpointError
    from .codes import CodeTableError
    from .config import ConfigError, parse_args
    from .data import DataError
    from .distributed import process_state
    from .embeddings import EmbeddingError
    from .resume import STATE_DIR

    procs = process_state()
    errors = (ConfigError, DataError, EmbeddingError, CodeTableError, CheckpointError, *errors)

    def fail(err, everywhere: bool = True) -> int:
        if everywhere or procs.is_main_process:
            where = f"[process {procs.process_index}] " if procs.num_processes > 1 else ""
            print(f"{where}error: {err}", file=sys.stderr)
        return 2

    try:
        cfg = parse_args(config_cls, argv, prog=prog)
    except errors as err:
        return fail(err)
    outcome = [None]
    if procs.is_main_process:  # one process decides about the folder; the others hear it
        try:
            outcome = ["finished" if claim_output(cfg, cfg.output_dir, stage_cls.name) else "run"]
        except errors as err:
            outcome = [f"error: {err}"]
    if procs.num_processes > 1:
        broadcast_object_list(outcome, from_process=0)
    if outcome[0].startswith("error: "):
        return fail(outcome[0][len("error: "):], everywhere=False)
    if outcome[0] == "finished":
        if procs.is_main_process:
            results = json.loads((Path(cfg.output_dir) / "results.json").read_text())
            print(f"{cfg.output_dir}: finished with this config; test "
                  f"{ {k: round(v, 4) for k, v in results['test'].items()} } "
                  f"(overwrite=true redoes it)")
        return 0
    try:
        stage = stage_cls(cfg)
        try:
            stage.setup()
            stage.train()
        finally:
            stage.cleanup()
    except errors as err:
        return fail(err)
    if procs.is_main_process:
        mark_done(cfg.output_dir)
        shutil.rmtree(Path(cfg.output_dir) / STATE_DIR, ignore_errors=True)  # finished for good
    return 0
