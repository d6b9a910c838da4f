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
from .metrics import DEFAULT_KS, coverage, ranking_metrics, ranks_from_lists
from .model import ETEGRecModel

PROTOCOL = ("leave-one-out, full ranking over all items by trie-constrained beam search "
            "(beam {beam}), a hit needs all {code_len} codes")


@torch.no_grad()
def evaluate_generative(model: ETEGRecModel, table: CodeTable, split, *, max_len: int,
                        beam: int = 20, batch_size: int = 128, logprob: str = "full",
                        device="cpu", max_users: int = 0, progress: bool = False,
                        procs=None) -> dict:
    """Metrics of ``split``; with ``procs`` (``etegrl.distributed.Processes``) each process
    searches its share of the users and the metrics are those of all of them."""
    histories, targets = split["history"], split["target"]
    lengths = np.array([len(h) for h in histories])
    rows = np.arange(len(lengths))
    if 0 < max_users < len(rows):  # a fixed random subset, the same at every evaluation
        rows = np.random.default_rng(0).choice(rows, max_users, replace=False)
    order = rows[np.argsort(lengths[rows], kind="stable")]  # little padding per batch
    if procs is not None and procs.world > 1:
        order = order[procs.rank::procs.world]
    ranks, tops = [], []
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="beam search", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        hist = pad_histories([histories[i][-max_len:] for i in rows]).to(device)
        out = beam_search(model, table, hist, beam=beam, logprob=logprob)
        tgt = torch.as_tensor([targets[i] for i in rows], device=device)
        ranks.append(ranks_from_lists(out["items"], tgt).cpu())
        tops.append(out["items"][:, :10].cpu())
    ranks = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    top = torch.cat(tops) if tops else torch.zeros(0, min(10, beam), dtype=torch.long)
    if procs is not None and procs.world > 1:
        gathered = procs.gather(list(zip(order.tolist(), ranks.tolist(), top.tolist())))
        order = np.asarray([row for row, _, _ in gathered])
        ranks = torch.as_tensor([rank for _, rank, _ in gathered])
        top = torch.as_tensor([items for _, _, items in gathered])
    by_row = torch.as_tensor(np.argsort(order, kind="stable"))  # one order however it was split
    ranks, top = ranks[by_row], top[by_row]
    metrics = ranking_metrics(ranks, DEFAULT_KS)
    metrics["coverage@10"] = coverage(top, table.n_items)
    metrics["distinct_top1"] = int(torch.unique(top[:, 0][top[:, 0] > 0]).numel())
    return metrics
