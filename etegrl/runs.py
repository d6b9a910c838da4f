"""Output folders: one run per folder, owned by one process at a time, reused when finished
with the same config and the same inputs.

A run's identity is its config (less the keys that only change how it goes) and a fingerprint
of its inputs: the source files for the prepare step, the input folders and files a stage's
config names (``INPUT_FIELDS``) for the others. A finished run is reused only when both match;
changed inputs start the run again from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from .config import ConfigError, config_values, save_config
from .errors import EtegrlError

DONE = "DONE"
LOCK = ".lock"
INPUTS = "inputs.json"
# options that change how a run goes, not what it computes: not part of a run's identity
NEUTRAL_KEYS = ("overwrite", "progress", "threads", "save_state_every")
# what a fingerprint leaves out of a folder: another run's lock and resumable state
SKIP_NAMES = (LOCK, "resume", "resume.tmp")
# files this large are fingerprinted by size and modification time instead of their bytes
HASH_LIMIT = 1 << 30


def _file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return f"size {stat.st_size} mtime {stat.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | Path) -> str:
    """The identity of an input: a file's SHA-256, or for a folder the SHA-256 over its files'
    relative paths and digests (locks and resumable states left out); "missing" if absent."""
    path = Path(path)
    if path.is_file():
        return _file_digest(path)
    if not path.is_dir():
        return "missing"
    h = hashlib.sha256()
    for sub in sorted(path.rglob("*")):
        rel = sub.relative_to(path)
        if sub.is_file() and not any(part in SKIP_NAMES for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{_file_digest(sub)}\n".encode())
    return h.hexdigest()


def config_inputs(cfg) -> list[str]:
    """The input paths a stage's config names: its class's ``INPUT_FIELDS`` (each a path, a
    list of paths, or ``path/to/file.py:function`` entries whose file exists)."""
    paths = []
    for name in getattr(cfg, "INPUT_FIELDS", ()):
        values = getattr(cfg, name, None)
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if not isinstance(value, str) or not value:
                continue
            if not Path(value).exists() and ":" in value:
                value = value.rsplit(":", 1)[0]  # a reward script: path/to/file.py:function
            if Path(value).exists():
                paths.append(value)
    return paths


def input_fingerprints(paths) -> dict[str, str]:
    return {str(p): fingerprint(p) for p in paths}


class OutputLock:
    """Exclusive ownership of an output folder for one run: an ``flock`` on ``<out>/.lock``
    holding the owner's pid. The kernel drops the lock when its process ends, however it ends,
    so a killed run leaves nothing that blocks the next one."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.fh = None

    def acquire(self) -> "OutputLock":
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        fh = open(self.out / LOCK, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(f"output_dir {self.out} is in use by another run (pid {owner}); "
                              f"wait for it to end or choose another output_dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh
        return self

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()  # closing the descriptor releases the flock
            self.fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def clear_output(out: Path) -> None:
    """Empty ``out`` for a new run, keeping the lock file the current run holds."""
    for sub in out.iterdir():
        if sub.name == LOCK:
            continue
        if sub.is_dir() and not sub.is_symlink():
            shutil.rmtree(sub)
        else:
            sub.unlink()


def _contents(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []


def claim_output(cfg, out: str | Path, what: str, inputs: dict[str, str] | None = None,
                 log=print) -> bool:
    """Prepare ``out`` (whose lock the caller holds) for a run of ``cfg`` reading ``inputs``
    (path → fingerprint); True when it already holds this finished run with these inputs.

    - another config's finished run, or an unfinished one with a resumable state: an error
      unless ``cfg.overwrite`` (then it is cleared) — nothing completed is lost silently;
    - another config's run that failed before saving any progress: cleared, with a log line;
    - this config's run with other inputs: cleared and started again, with a log line;
    - this config's unfinished run with the same inputs: kept, for the stage to resume.
    """
    out = Path(out)
    saved = out / f"{what}_config.yaml"
    current = config_values(cfg)
    inputs = dict(inputs or {})
    clear = bool(cfg.overwrite)
    if saved.is_file() and not cfg.overwrite:
        previous = yaml.safe_load(saved.read_text()) or {}
        for key in NEUTRAL_KEYS:
            current.pop(key, None)
            previous.pop(key, None)
        finished = (out / DONE).is_file()
        if previous != current:
            changed = sorted(k for k in current.keys() | previous.keys()
                             if current.get(k) != previous.get(k))
            progress = (out / "resume").is_dir()
            if finished or progress:
                state = ("that finished; " if finished else
                         "that has not finished but saved progress; run it again with its "
                         "settings to resume it, ")
                raise ConfigError(f"output_dir {out} holds another {what} run (keys that differ: "
                                  f"{', '.join(changed)}) {state}choose another output_dir or "
                                  f"set overwrite=true")
            log(f"{out}: replacing a {what} run that ended before saving anything (keys that "
                f"differ: {', '.join(changed)})")
            clear = True
        else:
            try:
                before = json.loads((out / INPUTS).read_text())
            except (OSError, ValueError):
                before = None
            if before != inputs:
                stale = sorted(k for k in inputs.keys() | (before or {}).keys()
                               if inputs.get(k) != (before or {}).get(k))
                log(f"{out}: inputs changed since this {what} run "
                    f"({', '.join(stale) if before is not None else 'no record of them'}); "
                    f"running it again from the start")
                clear = True
            elif finished:
                return True
    elif not saved.is_file() and _contents(out) and not cfg.overwrite:
        raise ConfigError(f"output_dir {out} is not empty and holds no {what} run; choose "
                          f"another output_dir or set overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    if clear:
        clear_output(out)
    save_config(cfg, saved)
    (out / INPUTS).write_text(json.dumps(inputs, indent=2) + "\n")
    return False


def mark_done(out: str | Path) -> None:
    (Path(out) / DONE).write_text("ok\n")


def run_stage(config_cls, stage_cls, argv=None, *, prog: str, errors: tuple = ()) -> int:
    """The ``__main__`` of a training stage: parse the config, claim the output folder (main
    process), run setup/train/cleanup in every process; bad input of any kind (an
    ``EtegrlError``; ``errors`` may add other types) ends as one ``error:`` line and exit 2."""
    from .config import parse_args
    from .distributed import process_state

    procs = process_state()
    errors = (EtegrlError, *errors)

    def fail(err, everywhere: bool = True) -> int:
        if everywhere or procs.is_main_process:
            where = f"[process {procs.process_index}] " if procs.num_processes > 1 else ""
            print(f"{where}error: {err}", file=sys.stderr)
        return 2

    try:
        cfg = parse_args(config_cls, argv, prog=prog)
    except errors as err:
        return fail(err)
    lock = OutputLock(cfg.output_dir)
    try:
        return _run_claimed(cfg, stage_cls, procs, lock, errors, fail)
    finally:
        lock.release()


def _run_claimed(cfg, stage_cls, procs, lock, errors, fail) -> int:
    from accelerate.utils import broadcast_object_list

    from .resume import STATE_DIR

    outcome = [None]
    if procs.is_main_process:  # one process owns the folder and decides; the others hear it
        try:
            lock.acquire()
            inputs = input_fingerprints(config_inputs(cfg))
            finished = claim_output(cfg, cfg.output_dir, stage_cls.name, inputs)
            outcome = ["finished" if finished else "run"]
        except errors as err:
            outcome = [f"error: {err}"]
    if procs.num_processes > 1:
        broadcast_object_list(outcome, from_process=0)
    if outcome[0].startswith("error: "):
        return fail(outcome[0][len("error: "):], everywhere=False)
    if outcome[0] == "finished":
        if procs.is_main_process:
            try:
                test = json.loads((Path(cfg.output_dir) / "results.json").read_text())["test"]
                shown = f"test { {k: round(v, 4) for k, v in test.items()} }"
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shown = "its results.json is missing or damaged"
            print(f"{cfg.output_dir}: finished with this config and these inputs; {shown} "
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
