"""Resumable training state: what a stage needs to go on after a kill as if it never stopped.

One file, ``<output_dir>/resume/state.pt``, written through ``atomic_dir`` (temporary folder,
then rename), holding the state dicts of the trained modules, optimisers and schedulers, every
random generator the run draws from (python, numpy, torch, CUDA, the stage's own), the
position (epoch, batches done in it, optimiser step), early-stopping facts and the length of
the JSONL log at that moment. It is read back with ``torch.load(weights_only=True)``: tensors,
numbers, strings and containers only, so a state file cannot run code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, atomic_dir, recover_dir

STATE_DIR = "resume"
KEYS = {"position", "step", "stopper", "best_epoch", "elapsed", "log_offset", "epoch_sums",
        "epoch_n", "rng", "rows", "objects", "extra"}


def rng_state() -> dict:
    """The global generators: python, numpy (legacy global), torch CPU and CUDA."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    # random.setstate wants the tuples it gave; keep them tuples whatever the round trip did
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_state(out_dir: str | Path, state: dict) -> None:
    with atomic_dir(Path(out_dir) / STATE_DIR) as tmp:
        torch.save(state, tmp / "state.pt")


def load_state(out_dir: str | Path) -> dict | None:
    """The saved state of the run in ``out_dir``, or None when it has none."""
    path = recover_dir(Path(out_dir) / STATE_DIR) / "state.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a state written by atomic_dir is whole; say which file is not
        raise CheckpointError(f"{path}: unreadable resume state ({err}); delete it or set "
                              f"overwrite=true to start the run again") from None
    missing = KEYS - set(state) if isinstance(state, dict) else KEYS
    if missing:
        raise CheckpointError(f"{path}: not a resume state of this version (missing "
                              f"{', '.join(sorted(missing))}); delete it or set overwrite=true")
    return state
