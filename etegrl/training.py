"""Pieces every training loop shares: epochs of prefix rows as padded tensors, AdamW with a
cosine schedule, and early stopping on a validation metric."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from .data import capped_row_indices, length_bucketed_batches, pad_histories


class RowEpochs:
    """Training rows (history → target) of a split, served as length-bucketed batches.

    ``rows_per_user`` > 0 draws at most that many rows per user afresh each epoch (a CPU-sized
    epoch); histories keep their last ``max_len`` items.
    """

    def __init__(self, split, *, batch_size: int, max_len: int, rows_per_user: int = 0,
                 seed: int = 0):
        self.histories = [h[-max_len:] for h in split["history"]]
        self.targets = np.asarray(split["target"])
        self.users = np.asarray(split["user"])
        self.lengths = np.array([len(h) for h in self.histories])
        self.batch_size, self.rows_per_user = batch_size, rows_per_user
        self.rng = np.random.default_rng(seed)

    def batches_per_epoch(self) -> int:
        n = len(self.targets)
        if self.rows_per_user:
            n = int(np.minimum(np.bincount(self.users), self.rows_per_user).sum())
        return -(-n // self.batch_size)

    def epoch(self, device="cpu", skip: int = 0):
        """The batches of one epoch; ``skip`` leaves out the first ones (a resumed epoch)."""
        self.epoch_start_state = copy.deepcopy(self.rng.bit_generator.state)
        keep = capped_row_indices(self.users, self.rows_per_user, self.rng)
        batches = length_bucketed_batches(self.lengths[keep], self.batch_size, self.rng)
        for batch in batches[skip:]:
            rows = keep[batch]
            yield (pad_histories([self.histories[i] for i in rows]).to(device),
                   torch.as_tensor(self.targets[rows], dtype=torch.long, device=device))

    def state_dict(self) -> dict:
        return {"now": copy.deepcopy(self.rng.bit_generator.state),
                "epoch_start": getattr(self, "epoch_start_state", None)}

    def load_state_dict(self, state: dict, *, mid_epoch: bool) -> None:
        """Restore the generator; ``mid_epoch``: as it was when the interrupted epoch began,
        so that ``epoch(skip=...)`` draws that epoch's batches again."""
        self.rng.bit_generator.state = state["epoch_start" if mid_epoch else "now"]


def adamw_cosine(params, *, lr: float, weight_decay: float, total_steps: int,
                 warmup_ratio: float = 0.0):
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(warmup_ratio * total_steps),
                                            max(1, total_steps))
    return opt, sched


@dataclass
class EarlyStopping:
    patience: int
    best: float = float("-inf")
    bad: int = 0

    def update(self, value: float) -> bool:
        """Record a validation value; True when it is the best so far."""
        if value > self.best:
            self.best, self.bad = value, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience
