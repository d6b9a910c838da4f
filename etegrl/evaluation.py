"""Evaluation of the generative recommender: exact-protocol beam search over a split.

Leave-one-out, full ranking over all items through trie-constrained beam search (beam 20 by
default), a hit is an item whose 4 codes all match the target's (i.e. the same item),
Recall@{1,5,10}, NDCG@{5,10}, coverage@10 and the number of distinct top-1 items.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .codes import CodeTable
from .data import pad_histories
from .generation import beam_search
from .metrics import list_metrics
from .model import ETEGRecModel

PROTOCOL = ("leave-one-out, full ranking over all items by trie-constrained beam search "
            "(beam {beam}), a hit needs all {code_len} codes")
EXCLUDED = ", items already in the user's history excluded"


def protocol(*, beam: int, code_len: int, exclude: bool) -> str:
    return PROTOCOL.format(beam=beam, code_len=code_len) + (EXCLUDED if exclude else "")


@torch.no_grad()
def evaluate_generative(model: ETEGRecModel, table: CodeTable, split, *, max_len: int,
                        beam: int = 20, batch_size: int = 128, logprob: str = "full",
                        device="cpu", max_users: int = 0, progress: bool = False,
                        procs=None, popular: torch.Tensor | None = None,
                        return_lists: bool = False, exclude_history: bool = False,
                        first_codes: int = 0):
    """Metrics of ``split`` (``etegrl.metrics.list_metrics``; ``popular``: the 10 most frequent
    training items); with ``procs`` (``etegrl.distributed.Processes``) each process searches
    its share of the users and the metrics are those of all of them. ``exclude_history``: never
    recommend an item of the user's history (its whole history in the split, not only the
    ``max_len`` items the model reads). ``first_codes``: the beam split over that many first
    codes (``beam_search``; 0 = the protocol's one beam). ``return_lists``: also the
    evaluated rows of the split and their ranked items ``[N, beam]`` → (metrics, rows, lists)."""
    histories, targets = split["history"], split["target"]
    lengths = np.array([len(h) for h in histories])
    rows = np.arange(len(lengths))
    if 0 < max_users < len(rows):  # a fixed random subset, the same at every evaluation
        rows = np.random.default_rng(0).choice(rows, max_users, replace=False)
    order = rows[np.argsort(lengths[rows], kind="stable")]  # little padding per batch
    if procs is not None and procs.world > 1:
        order = order[procs.rank::procs.world]
    tops = []
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="beam search", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        hist = pad_histories([histories[i][-max_len:] for i in rows]).to(device)
        seen = pad_histories([histories[i] for i in rows]).to(device) if exclude_history else None
        out = beam_search(model, table, hist, beam=beam, logprob=logprob, exclude=seen,
                          first_codes=first_codes)
        tops.append(out["items"].cpu())
    top = torch.cat(tops) if tops else torch.zeros(0, beam, dtype=torch.long)
    if procs is not None and procs.world > 1:
        gathered = procs.gather(list(zip(order.tolist(), top.tolist())))
        order = np.asarray([row for row, _ in gathered])
        top = torch.as_tensor([items for _, items in gathered])
    by_row = np.argsort(order, kind="stable")  # one order however it was split
    order, top = order[by_row], top[torch.as_tensor(by_row)]
    metrics = list_metrics(top, torch.as_tensor([targets[i] for i in order]),
                           n_items=table.n_items, histories=[histories[i] for i in order],
                           popular=popular)
    return (metrics, order, top) if return_lists else metrics
