"""Teachers: scorers of every item for a history — the prepare step's SASRec, or the
training sequences' item-to-item transition counts (``TransitionTeacher``).

The prepare step trains SASRec on the training rows only (full-softmax cross-entropy over all
items) and keeps it in ``<data_dir>/sasrec_model.safetensors``; its sizes are in the data
folder's ``prepare_config.yaml``. Here it scores group members (their rank among all items the
teacher would recommend) and proposes items the policy's beam does not hold; in the supervised
stages its item distribution becomes soft targets of the code loss (``code_targets``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .embeddings import EmbeddingError
from .errors import EtegrlError
from .embeddings.sasrec import SASRec
from .files import read_tensors


class Teacher:
    """Frozen SASRec over a prepared data folder's items."""

    def __init__(self, data_dir: str | Path, n_items: int, device="cpu"):
        data_dir = Path(data_dir)
        weights, config = data_dir / "sasrec_model.safetensors", data_dir / "prepare_config.yaml"
        if not weights.is_file() or not config.is_file():
            raise EmbeddingError(f"{data_dir}: no SASRec to teach with (sasrec_model.safetensors "
                                 f"and prepare_config.yaml come from a prepare run with "
                                 f"sasrec_epochs > 0)")
        cfg = yaml.safe_load(config.read_text()) or {}
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten: a
            # teacher leaves the run's random stream (dropout masks, row draws) as it was
            self.model = SASRec(n_items, hidden=cfg["sasrec_hidden"],
                                layers=cfg["sasrec_layers"], heads=cfg["sasrec_heads"],
                                dropout=0.0, max_len=cfg["max_len"])
        try:
            self.model.load_state_dict(read_tensors(weights, EmbeddingError), strict=True)
        except RuntimeError as err:
            raise EmbeddingError(f"{weights}: does not match {config} and {n_items} items "
                                 f"({err})") from None
        self.model.to(device).requires_grad_(False).eval()
        self.n_items = n_items

    @classmethod
    def for_config(cls, cfg, data, device="cpu",
                   kind: str | None = None) -> "Teacher | TransitionTeacher | None":
        """The teacher a stage's config names (``teacher``: none, sasrec or transitions; None
        for none) over ``data`` (the stage's ``etegrl.data.Processed``), checked against the
        config: sequence windows may be no longer than it reads. ``kind`` names another
        scorer than ``teacher`` (the rl stage's ``reward_teacher``)."""
        kind = kind or getattr(cfg, "teacher", "none")
        if kind == "transitions":
            return TransitionTeacher(data.splits["train_seq"]["items"], data.n_items,
                                     window=cfg.transition_window,
                                     history=cfg.transition_history,
                                     backward=cfg.transition_backward,
                                     leave_out=cfg.transition_leave_out, device=device)
        if kind != "sasrec":
            return None
        teacher = cls(cfg.data_dir, data.n_items, device=device)
        if getattr(cfg, "train_on", "rows") == "sequences" and cfg.max_len > teacher.max_len:
            raise EtegrlError(f"max_len={cfg.max_len}: sequence windows with a teacher may be "
                              f"at most the teacher's max_len ({teacher.max_len}, from "
                              f"{cfg.data_dir}/prepare_config.yaml)")
        return teacher

    @staticmethod
    def excludes_history(cfg, evaluation_excludes: bool) -> bool:
        """A config's ``teacher_exclude_history``: whether a teacher's scores leave out the
        user's history items (auto: as the evaluation does)."""
        mode = getattr(cfg, "teacher_exclude_history", "auto")
        return evaluation_excludes if mode == "auto" else mode == "always"

    @property
    def max_len(self) -> int:
        return self.model.max_len

    def recent(self, hist: torch.Tensor) -> torch.Tensor:
        """Right-padded histories ``[B, L]`` → each row's last ``max_len`` items, still
        right-padded (the form SASRec was trained on: a row's first item at position 0)."""
        if hist.shape[1] <= self.max_len:
            return hist
        length = (hist > 0).sum(1, keepdim=True)
        idx = (length - self.max_len).clamp(min=0) + torch.arange(self.max_len, device=hist.device)
        return torch.where(idx < length, hist.gather(1, idx.clamp(max=hist.shape[1] - 1)), 0)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[..., d]`` → scores ``[..., n_items + 1]``, column 0 −inf."""
        s = self.model.item_scores(hidden)
        return torch.cat([s.new_full((*s.shape[:-1], 1), float("-inf")), s], -1)

    @torch.no_grad()
    def scores(self, hist: torch.Tensor, exclude: bool = False,
               future: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded histories ``[B, L]`` → scores ``[B, n_items + 1]`` (column = item id;
        column 0, and the history items when ``exclude``, are −inf). A history longer than
        the teacher's ``max_len`` is read from its last ``max_len`` items. ``future`` (the
        items that follow each history in its training sequence) is for the transitions
        teacher, which leaves them out of its counts; a trained model has no counts to leave
        out, so it is unused here."""
        hist = self.recent(hist.to(next(self.model.parameters()).device))
        last = (hist > 0).sum(1).clamp(min=1) - 1
        s = self.logits(self.model(hist)[torch.arange(len(hist), device=hist.device), last])
        if exclude:
            s = s.scatter(1, hist, float("-inf"))
        s[:, 0] = float("-inf")
        return s

    @torch.no_grad()
    def window_scores(self, items: torch.Tensor, targets: torch.Tensor,
                      exclude: bool = False) -> torch.Tensor:
        """Sequence windows (``train_on=sequences``): items ``[B, W]`` right-padded and their
        next items ``targets [B, W]`` (0 = no loss there) → scores ``[N, n_items + 1]`` for the
        N scored positions in row-major order (the order of ``targets[targets > 0]``). One
        causal pass scores every position, each from the window's items up to it — what the
        causal recommender reads there; ``exclude`` removes those items."""
        if items.shape[1] > self.max_len:
            raise ValueError(f"sequence windows of {items.shape[1]} items are longer than the "
                             f"teacher's max_len ({self.max_len}, the prepare step's): set "
                             f"max_len to at most {self.max_len}")
        items = items.to(next(self.model.parameters()).device)
        keep = targets.to(items.device) > 0
        s = self.logits(self.model(items)[keep])
        if exclude:  # position w excludes the window's items 0..w (padding → column 0)
            b, w = keep.nonzero(as_tuple=True)
            upto = torch.arange(items.shape[1], device=items.device) <= w[:, None]
            s = s.scatter(1, torch.where(upto, items[b], 0), float("-inf"))
        s[:, 0] = float("-inf")
        return s

    @staticmethod
    def ranks(scores: torch.Tensor) -> torch.Tensor:
        """``[B, N+1]`` scores → each item's 0-based rank in its row (ties by lower item id)."""
        order = torch.sort(-scores, dim=1, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                       .expand_as(order).contiguous())
        return ranks


class TransitionTeacher:
    """Item-to-item transition counts of the training sequences, a scorer of every item that
    needs no training: the classic item-based next-item model, often stronger than a small
    SASRec on short, sparse sequences. ``C[i, j]`` sums, over every training sequence, the
    times ``j`` comes ``d`` ≤ ``window`` positions after ``i`` (weight 0.5^(d−1)) and, times
    ``backward``, the times it comes that far before. A history's score of item ``j`` is
    ``Σ_m 0.7^m C[h_m, j]`` over its last ``history`` items (``h_0`` the most recent),
    normalised to a distribution and mixed with the items' training popularity
    (``POPULARITY`` of the mass, the whole of it for a history with no counts); the logits are
    its log. Same interface as the SASRec teacher (``scores``, ``window_scores``, ``ranks``).

    ``leave_out``: a training row's own pairs are in these counts — the pairs from its history
    to its target (and to the items after it) — so on training rows the scorer has already
    seen every answer: on its own training prompts its top items hold the true item far more
    often than on held-out ones, and as a distillation target or reward it teaches the policy
    to repeat the training answers rather than what generalises. Given the ``future`` of a
    history (the items that follow it in the same training sequence, nearest first), the
    scores leave out exactly the pairs that cross from the history into that future, and the
    future items' own occurrences in the popularity mix: what the counts would be had the
    sequence stopped at the history, as it does for a validation or test row.
    Built with scipy/torch sparse products rather than a dense ``[n, n]`` table, which would
    not fit in memory for catalogues of 10⁵ items."""

    DISTANCE_DECAY, HISTORY_DECAY, POPULARITY = 0.5, 0.7, 0.1

    def __init__(self, sequences, n_items: int, *, window: int = 3, history: int = 5,
                 backward: float = 0.5, leave_out: bool = True, device="cpu"):
        rows, cols, vals = [], [], []
        for seq in sequences:
            seq = np.asarray(seq, dtype=np.int64)
            for d in range(1, window + 1):
                if len(seq) <= d:
                    break
                w = self.DISTANCE_DECAY ** (d - 1)
                rows.append(seq[:-d]); cols.append(seq[d:]); vals.append(np.full(len(seq) - d, w))
                if backward:
                    rows.append(seq[d:]); cols.append(seq[:-d])
                    vals.append(np.full(len(seq) - d, w * backward))
        n = n_items + 1
        if rows:
            r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        else:
            r, c, v = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        if len(r) and (r.max() >= n or c.max() >= n or min(r.min(), c.min()) < 1):
            raise EmbeddingError(f"training sequences name items outside 1..{n_items}")
        # C transposed (to score a batch as C^T @ weights^T), duplicates summed by coalesce
        self.counts_t = torch.sparse_coo_tensor(np.stack([c, r]), v, (n, n),
                                                dtype=torch.float32, check_invariants=True).coalesce().to(device)
        pop = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in sequences])
                          if len(sequences) else np.zeros(0, np.int64), minlength=n)[:n]
        pop = torch.tensor(pop, dtype=torch.float32)
        pop[0] = 0
        self.pop_counts = pop.to(device)
        self.popularity = (pop / pop.sum().clamp(min=1)).to(device)
        self.window, self.history, self.backward = window, history, backward
        self.leave_out = leave_out
        # the smallest weight one pair can add to a score: below half of it, what is left after
        # removing a row's own pairs is float residue, not a count
        self.residue = 0.5 * (self.HISTORY_DECAY ** (history - 1)
                              * self.DISTANCE_DECAY ** (window - 1) * min(1.0, backward or 1.0))
        self.n_items, self.device = n_items, torch.device(device)

    ranks = staticmethod(Teacher.ranks)

    def distribution(self, hist: torch.Tensor, future: torch.Tensor | None = None) -> torch.Tensor:
        """Right-padded histories ``[B, L]`` → item distributions ``[B, n_items + 1]``;
        ``future [B, F]`` (right-padded, nearest first) left out with ``leave_out``."""
        hist = hist.to(self.device)
        b, length = len(hist), (hist > 0).sum(1)
        back = torch.arange(min(self.history, hist.shape[1]), device=self.device)
        pos = length[:, None] - 1 - back  # the m-th most recent item's position
        items = torch.where(pos >= 0, hist.gather(1, pos.clamp(min=0)), 0)
        weights = torch.zeros(b, self.n_items + 1, device=self.device)
        weights.scatter_add_(1, items, (self.HISTORY_DECAY ** back.float()).expand(b, -1)
                             .contiguous())
        weights[:, 0] = 0
        s = torch.sparse.mm(self.counts_t, weights.T).T  # [B, n+1]
        popularity = self.popularity
        if future is not None and self.leave_out:
            s, popularity = self.without_own_pairs(hist, length, weights, s, future.to(self.device))
        total = s.sum(1, keepdim=True)
        mix = torch.where(total > 0, 1 - self.POPULARITY, 0.0)
        return mix * s / total.clamp(min=1e-30) + (1 - mix) * popularity

    def without_own_pairs(self, hist, length, weights, s, future):
        """``s`` without the pairs from each history's last ``window`` items to the ``future``
        items within ``window`` positions (item at distance ``a`` back, future item ``k``
        ahead: distance ``a + 1 + k``), each weighted as the score weighed it (the history
        weight of its first item × 0.5^(distance − 1)); and the popularity without the
        future items' occurrences. → (scores, popularity per row)."""
        for a in range(min(self.window, hist.shape[1])):
            pos = length - 1 - a
            key = torch.where(pos >= 0, hist.gather(1, pos.clamp(min=0)[:, None])[:, 0], 0)
            key_weight = weights.gather(1, key[:, None])[:, 0]  # column 0 (no item) weighs 0
            for k in range(min(self.window - a, future.shape[1])):
                col = future[:, k:k + 1]
                amount = key_weight[:, None] * self.DISTANCE_DECAY ** (a + k) * (col > 0)
                s.scatter_add_(1, col, -amount)
        s = torch.where(s > self.residue, s, 0.0)
        s[:, 0] = 0
        counts = self.pop_counts.expand(len(s), -1).clone()
        counts.scatter_add_(1, future, -(future > 0).float())
        counts[:, 0] = 0
        counts = counts.clamp(min=0)
        return s, counts / counts.sum(1, keepdim=True).clamp(min=1)

    @torch.no_grad()
    def scores(self, hist: torch.Tensor, exclude: bool = False,
               future: torch.Tensor | None = None) -> torch.Tensor:
        # an item with no count and no training popularity stays rankable, after all others
        s = self.distribution(hist, future).log().clamp(min=-1e4)
        if exclude:
            s = s.scatter(1, hist.to(self.device), float("-inf"))
        s[:, 0] = float("-inf")
        return s

    @torch.no_grad()
    def window_scores(self, items: torch.Tensor, targets: torch.Tensor,
                      exclude: bool = False) -> torch.Tensor:
        items, targets = items.to(self.device), targets.to(self.device)
        b, w = (targets > 0).nonzero(as_tuple=True)
        upto = torch.arange(items.shape[1], device=self.device) <= w[:, None]
        future = None
        if self.leave_out:  # what follows position w: the window's later items, then the item
            # after the window (its last target); items further on are not in the batch
            length = (items > 0).sum(1)
            ext = torch.cat([items, torch.zeros_like(items[:, :1])], 1)
            last = targets.gather(1, (length - 1).clamp(min=0)[:, None])
            ext.scatter_(1, length[:, None], last)
            ahead = w[:, None] + 1 + torch.arange(ext.shape[1], device=self.device)
            future = torch.where(ahead < ext.shape[1],
                                 ext[b[:, None], ahead.clamp(max=ext.shape[1] - 1)], 0)
        return self.scores(torch.where(upto, items[b], 0), exclude=exclude, future=future)


def first_code_ranks(scores: torch.Tensor, first_codes: torch.Tensor, code_num: int) -> torch.Tensor:
    """Teacher scores ``[B, N+1]`` (−inf: items it never recommends, column 0 included) and each
    item's first code ``[N+1]`` → ``[B, code_num]``: every first code's 0-based rank by the
    teacher's probability mass on its items (a softmax over the items; ties by lower code)."""
    probs = torch.softmax(scores.float(), 1)
    mass = probs.new_zeros(scores.shape[0], code_num)
    mass.scatter_add_(1, first_codes.expand_as(probs), probs)
    return Teacher.ranks(mass)


def member_facts(scores: torch.Tensor, items: torch.Tensor, first_codes: torch.Tensor,
                 code_num: int) -> dict[str, list]:
    """What reward functions read from a teacher about the members ``items [B, G]`` (0 = no
    item) of groups scored ``scores [B, N+1]``, flattened to B·G values: ``teacher_rank`` (the
    member's 0-based rank among all items) and ``teacher_logprob`` (None where the teacher gives
    it no score: no item, or a history item it never recommends), and ``teacher_first_code_rank``
    (``first_code_ranks`` at the member's first code; None where there is no item)."""
    usable = torch.isfinite(scores.gather(1, items)).reshape(-1).tolist()
    ranks = Teacher.ranks(scores).gather(1, items).reshape(-1).tolist()
    logp = torch.log_softmax(scores.float(), 1).gather(1, items).reshape(-1).tolist()
    prefix = first_code_ranks(scores, first_codes, code_num).gather(1, first_codes[items])
    return {"teacher_rank": [r if ok else None for r, ok in zip(ranks, usable)],
            "teacher_logprob": [float(v) if ok else None for v, ok in zip(logp, usable)],
            "teacher_first_code_rank": [r if i > 0 else None for r, i
                                        in zip(prefix.reshape(-1).tolist(),
                                               items.reshape(-1).tolist())]}


def add_teacher_items(items: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Replace the last ``k`` members of each group ``[B, G]`` by the teacher's best items that
    the rest of the group does not hold (items scored −inf, e.g. history items, are never
    added); where the teacher has fewer such items, the replaced members stay."""
    if k <= 0:
        return items
    g = items.shape[1]
    k = min(k, g)
    top = scores.topk(min(scores.shape[1], g + k), dim=1)
    rows = []
    for group, ids, vals in zip(items.tolist(), top.indices.tolist(), top.values.tolist()):
        kept = group[:g - k]
        extra = [i for i, v in zip(ids, vals) if v > float("-inf") and i not in kept][:k]
        rest = [i for i in group[g - k:] if i not in extra][:k - len(extra)]
        rows.append(kept + extra + rest)
    return torch.tensor(rows, dtype=items.dtype, device=items.device)


def code_targets(item_probs: torch.Tensor, item_codes: torch.Tensor, target_codes: torch.Tensor,
                 code_num: int) -> torch.Tensor:
    """The teacher's item distribution as per-position code targets along each target's path.

    ``item_probs [B, N+1]`` (column = item id, rows sum to 1), ``item_codes [N+1, T]`` (row 0
    padding), ``target_codes [B, T]`` → ``[B, T, code_num]``: position t holds the teacher's
    distribution of the next code among the items that share the target's first t codes (the
    conditional a teacher-forced decoder predicts there). Where the teacher gives that prefix no
    mass at all (e.g. every such item is excluded), the target's own code gets it all.
    """
    b, t = target_codes.shape
    codes = item_codes.to(target_codes.device)
    out = item_probs.new_zeros(b, t, code_num)
    match = torch.ones(b, codes.shape[0], dtype=torch.bool, device=target_codes.device)
    for pos in range(t):
        if pos:  # items whose first pos codes are the target's
            match &= codes[None, :, pos - 1] == target_codes[:, pos - 1, None]
        mass = item_probs * match
        out[:, pos].scatter_add_(1, codes[:, pos].expand(b, -1), mass)
    total = out.sum(-1, keepdim=True)
    hard = F.one_hot(target_codes, code_num).to(out.dtype)
    return torch.where(total > 0, out / total.clamp(min=1e-30), hard)
