"""Pieces every training loop shares: epochs of prefix rows as padded tensors, AdamW with a
cosine schedule, and early stopping on a validation metric."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers import get_cosine_schedule_with_warmup

from .data import DataError, capped_row_indices, length_bucketed_batches, pad_histories


class RowEpochs:
    """Training rows (history → target) of a split, served as length-bucketed batches.

    ``rows_per_user`` > 0 draws at most that many rows per user afresh each epoch (a CPU-sized
    epoch); histories keep their last ``max_len`` items. ``with_rows``: batches are (history,
    target, row index in the split) instead of (history, target).
    """

    def __init__(self, split, *, batch_size: int, max_len: int, rows_per_user: int = 0,
                 seed: int = 0, recent: bool = False, with_rows: bool = False):
        self.recent = recent  # with rows_per_user: each user's last rows, not a random draw
        self.with_rows = with_rows
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
        keep = capped_row_indices(self.users, self.rows_per_user, self.rng, recent=self.recent)
        batches = length_bucketed_batches(self.lengths[keep], self.batch_size, self.rng)
        for batch in batches[skip:]:
            rows = keep[batch]
            hist = pad_histories([self.histories[i] for i in rows]).to(device)
            targets = torch.as_tensor(self.targets[rows], dtype=torch.long, device=device)
            yield (hist, targets, torch.as_tensor(rows)) if self.with_rows else (hist, targets)

    def state_dict(self) -> dict:
        return {"now": copy.deepcopy(self.rng.bit_generator.state),
                "epoch_start": getattr(self, "epoch_start_state", None)}

    def load_state_dict(self, state: dict, *, mid_epoch: bool) -> None:
        """Restore the generator; ``mid_epoch``: as it was when the interrupted epoch began,
        so that ``epoch(skip=...)`` draws that epoch's batches again."""
        self.rng.bit_generator.state = state["epoch_start" if mid_epoch else "now"]


class SequenceEpochs:
    """Windows of whole training sequences for one-pass training with a causal encoder
    (``ETEGRecModel.forward_sequence``): each batch is ``(items [B, W], targets [B, W])`` where
    ``targets[b, w]`` is the item that follows ``items[b, w]``, or 0 where no loss is taken.

    Every training target is scored exactly once per epoch. Windows of at most ``window`` items
    are cut from the end of each sequence every ``stride`` items; a window scores its last
    ``stride`` targets (the first window of a sequence scores all of its own), so every scored
    target but those near a sequence's start reads at least ``window - stride + 1`` items of
    history — ``stride = window`` gives disjoint windows (cheapest; early targets of a window read
    short histories), a smaller stride buys longer histories with more passes.
    ``rows_per_user`` > 0 keeps at most that many windows per user per epoch, redrawn.
    """

    def __init__(self, split, *, batch_size: int, window: int, stride: int = 0,
                 rows_per_user: int = 0, seed: int = 0):
        stride = stride or window
        if not 0 < stride <= window:
            raise ValueError(f"stride must be in 1..window ({window}), got {stride}")
        self.sequences = [list(s) for s in split["items"]]
        users, starts, ends, first = [], [], [], []
        for u, seq in enumerate(self.sequences):
            end = len(seq) - 2  # index of the last input item (its target is the last item)
            while end >= 0:
                start = max(0, end + 1 - window)
                users.append(u), starts.append(start), ends.append(end)
                # targets seq[k + 1] for inputs k in [start, end]; scored: k > end - stride,
                # or all of them in the window that reaches the sequence's start
                first.append(start if start == 0 else end - stride + 1)
                end -= stride
                if start == 0:
                    break
        self.users, self.starts = np.asarray(users), np.asarray(starts)
        self.ends, self.first = np.asarray(ends), np.asarray(first)
        self.lengths = self.ends - self.starts + 1
        self.batch_size, self.rows_per_user = batch_size, rows_per_user
        self.rng = np.random.default_rng(seed)

    def targets_per_epoch(self) -> int:
        return int((self.ends - self.first + 1).sum())

    def batches_per_epoch(self) -> int:
        n = len(self.users)
        if self.rows_per_user:
            n = int(np.minimum(np.bincount(self.users), self.rows_per_user).sum())
        return -(-n // self.batch_size)

    def window(self, i: int) -> tuple[list[int], list[int]]:
        seq, s, e, f = self.sequences[self.users[i]], self.starts[i], self.ends[i], self.first[i]
        items = seq[s:e + 1]
        targets = [seq[k + 1] if k >= f else 0 for k in range(s, e + 1)]
        return items, targets

    def epoch(self, device="cpu", skip: int = 0):
        self.epoch_start_state = copy.deepcopy(self.rng.bit_generator.state)
        keep = capped_row_indices(self.users, self.rows_per_user, self.rng)
        batches = length_bucketed_batches(self.lengths[keep], self.batch_size, self.rng)
        for batch in batches[skip:]:
            items, targets = zip(*(self.window(i) for i in keep[batch]))
            yield pad_histories(list(items)).to(device), pad_histories(list(targets)).to(device)

    state_dict = RowEpochs.state_dict
    load_state_dict = RowEpochs.load_state_dict


class EndlessBatches:
    """The batches of a ``RowEpochs`` or ``SequenceEpochs`` one at a time, without end: a new
    pass begins where the last ended. Its position (the pass's generator state and the batches
    done in it) is resumable, so a stream that runs beside a stage's own epochs (the rl stage's
    sft windows) goes on after a kill as if never interrupted."""

    def __init__(self, epochs, device="cpu"):
        self.epochs, self.device = epochs, device
        self.current, self.done = None, 0

    def __next__(self):
        for _ in range(2):
            if self.current is None:
                self.current = self.epochs.epoch(self.device, skip=self.done)
            batch = next(self.current, None)
            if batch is not None:
                self.done += 1
                return batch
            self.current, self.done = None, 0
        raise DataError("no training batch to draw: no sequence or row to train on")

    def state_dict(self) -> dict:
        return {"epochs": self.epochs.state_dict(), "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.epochs.load_state_dict(state["epochs"], mid_epoch=state["done"] > 0)
        self.current, self.done = None, state["done"]


def training_epochs(cfg, splits, *, causal: bool):
    """The epochs a training stage's config asks for: prefix rows (``train_on=rows``) or windows
    of whole sequences (``train_on=sequences``, which needs a causal encoder)."""
    # one batch per optimiser step: with gradient accumulation, the step's micro-batches
    # together (the stage splits the batch; trl's effective batch = batch_size × steps)
    batch_size = cfg.batch_size * getattr(cfg, "gradient_accumulation_steps", 1)
    if cfg.train_on == "sequences":
        if not causal:
            raise ValueError("train_on=sequences needs a recommender with causal_encoder=true "
                             "(set it in pretraining)")
        return SequenceEpochs(splits["train_seq"], batch_size=batch_size, window=cfg.max_len,
                              stride=cfg.window_stride, rows_per_user=cfg.rows_per_user,
                              seed=cfg.seed)
    return RowEpochs(splits["train"], batch_size=batch_size, max_len=cfg.max_len,
                     rows_per_user=cfg.rows_per_user, seed=cfg.seed)


def warmup_length(total_steps: int, *, warmup_steps: int = 0, warmup_ratio: float = 0.0) -> int:
    """Warm-up steps of a run of ``total_steps``: ``warmup_steps`` when > 0 (capped at the
    run's length), else ``warmup_ratio`` of the run."""
    if warmup_steps > 0:
        return min(warmup_steps, total_steps)
    return int(warmup_ratio * total_steps)


def adamw_cosine(params, *, lr: float, weight_decay: float, total_steps: int,
                 warmup_ratio: float = 0.0, warmup_steps: int = 0):
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = warmup_length(total_steps, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)
    sched = get_cosine_schedule_with_warmup(opt, warm, max(1, total_steps))
    return opt, sched


def clip_gradients(params, max_norm: float) -> float | None:
    """Clip the gradients of ``params`` to a total L2 norm of ``max_norm`` (the official ETEGRec
    clips at 1.0); → the norm before clipping, or None when clipping is off (``max_norm`` ≤ 0)."""
    if not max_norm or max_norm <= 0:
        return None
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


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
