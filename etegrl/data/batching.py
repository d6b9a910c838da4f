"""Turning rows into tensors: per-epoch caps on rows per user, and padding to the batch's own
longest history (not to ``max_len``: on a CPU the encoder cost grows with the padded length)."""

from __future__ import annotations

import numpy as np
import torch


def capped_row_indices(users: np.ndarray, cap: int, rng: np.random.Generator,
                       recent: bool = False) -> np.ndarray:
    """Indices of at most ``cap`` rows per user, drawn afresh each call (0 = keep all rows);
    ``recent``: each user's last ``cap`` rows instead (a user's rows are in time order).

    Users with many interactions otherwise dominate an epoch of prefix rows; redrawing each
    epoch keeps every prefix reachable over a run.
    """
    users = np.asarray(users)
    if cap <= 0:
        return np.arange(len(users))
    order = np.arange(len(users))[::-1] if recent else rng.permutation(len(users))
    # Stable sort by user keeps the random order within each user; then keep the first `cap`.
    order = order[np.argsort(users[order], kind="stable")]
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[rank < cap])


def pad_histories(histories: list[list[int]], *, left: bool = False) -> torch.Tensor:
    """Pad item-id histories with 0 to the longest one in the batch → ``[B, L]`` long tensor."""
    width = max(1, max(len(h) for h in histories))
    out = torch.zeros(len(histories), width, dtype=torch.long)
    for row, h in enumerate(histories):
        if h:
            if left:
                out[row, width - len(h):] = torch.as_tensor(h)
            else:
                out[row, :len(h)] = torch.as_tensor(h)
    return out


def length_bucketed_batches(lengths, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of row indices with similar lengths, in random order.

    Rows are shuffled, sorted by length (stable, so equal lengths stay shuffled) and cut into
    batches; the batch order is then shuffled. Padding to each batch's own longest row then
    costs little: on short-history data (mean 7 items) this is several times faster than
    random batches padded to their longest member.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]
