"""GRPO for item codes: group advantages, per-code log-probabilities, KL, clipped surrogate.

trl's ``GRPOTrainer`` drives causal language models only (prompt and completion in one token
stream, its own generation); our policy is an encoder-decoder over item codes with
trie-constrained groups, so the loop is ours. The formulas follow trl's ``_compute_loss``
exactly for the loss types whose meaning carries over (grpo, bnpo, dr_grpo, dapo); trl's
``nanstd`` is used as it is. Every completion here has the same
length (code_len codes) and no padding, so the four aggregations give the same number; they are
kept so that ``loss_type`` means what trl's documentation says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl.trainer.utils import nanstd

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4):
    """``rewards [U, G]`` → advantages ``[U, G]`` and the share of groups whose rewards are all
    equal (no learning signal; trl's ``frac_reward_zero_std``)."""
    mean = rewards.nanmean(1, keepdim=True)
    std = nanstd(rewards, dim=1).unsqueeze(1) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    advantages = rewards - mean
    if scale in ("group", "true", True):
        advantages = advantages / (std + eps)
    elif scale == "batch":
        advantages = advantages / (nanstd(rewards.reshape(-1), dim=0) + eps)
    elif scale not in ("none", "false", False):
        raise ValueError(f"scale_rewards must be group, batch or none, not {scale!r}")
    zero_std = torch.isclose(std, torch.zeros_like(std)).float().mean().item()
    return torch.nan_to_num(advantages, nan=0.0), zero_std


class ItemBaseline:
    """A per-item control variate for group advantages (our addition; trl has no counterpart,
    as its completions are never the same item for different prompts).

    Beam groups of different users share items (the popular ones above all). Where a reward
    ranks such an item above its group-mates for most users, its advantage is positive in most
    groups and GRPO raises it for everyone — a global shift, learned before any user's own
    preference. This keeps a running mean of the advantages each item received (all items
    start at 0; after every optimiser step ``mean ← decay · mean + (1 − decay) · the step's
    mean advantage of the item``, for the items the step's groups held) and subtracts it from
    each member's advantage: what all groups say about an item alike stops moving the policy,
    what a user's group says beyond that still does.

    ``centre`` is called for each micro-batch of a step (all see the mean as it stood before
    the step); ``update`` once per step, with ``all_sum`` adding the step's tensors over
    processes, so that every process keeps the same means.
    """

    def __init__(self, n_items: int, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the item baseline's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.mean = torch.zeros(n_items + 1)
        self._sums = torch.zeros(n_items + 1)
        self._counts = torch.zeros(n_items + 1)

    def centre(self, advantages: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``advantages [U, G]`` of the members ``items [U, G]`` (0 = no member, left as it is)
        → the advantages less their items' means; the raw advantages are kept for ``update``."""
        real = items > 0
        ids, raw = items[real].cpu(), advantages[real].detach().float().cpu()
        self._sums.index_add_(0, ids, raw)
        self._counts.index_add_(0, ids, torch.ones_like(raw))
        base = self.mean.to(advantages.device)[items]
        return torch.where(real, advantages - base, advantages)

    def update(self, all_sum=lambda t: t) -> float:
        """Fold the step's advantages into the means; → the mean |mean| of the items seen."""
        sums, counts = all_sum(self._sums), all_sum(self._counts)
        seen = counts > 0
        self.mean[seen] = (self.decay * self.mean[seen]
                           + (1.0 - self.decay) * sums[seen] / counts[seen])
        self._sums.zero_()
        self._counts.zero_()
        return float(self.mean[seen].abs().mean()) if seen.any() else 0.0

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.mean.copy_(state["mean"])


def code_logprobs(logits: torch.Tensor, codes: torch.Tensor, allowed: torch.Tensor | None = None):
    """Per-code log-probabilities ``[N, T]`` of ``codes`` under ``logits [N, T, C]``: a softmax
    over all codes, or, with ``allowed [N, T, C]``, renormalised over the trie's valid codes."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    # trl's selective_log_softmax computes the same numbers one row at a time, to bound memory
    # over LLM vocabularies; over 256 codes one vectorised log-softmax is cheap, and the row loop
    # cost ~30 ms of a ~330 ms GRPO step here (512 completions)
    return F.log_softmax(logits.float(), -1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor, allowed: torch.Tensor | None = None):
    """KL(π‖π_ref) at every code position ``[N, T]``, summed over all codes (cheap: T = 4)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
        ref_logits = ref_logits.masked_fill(~allowed, float("-inf"))
    lp, lq = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    return torch.where(lp.isfinite(), lp.exp() * (lp - lq), torch.zeros_like(lp)).sum(-1)


def grpo_loss(logps, old_logps, advantages, *, ref_logps=None, kl=None, beta: float = 0.0,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2, loss_type: str = "dapo",
              max_completion_length: int | None = None):
    """trl's clipped surrogate with a KL penalty. ``logps``/``old_logps``/``ref_logps``:
    ``[N, T]``; ``advantages``: ``[N]``; ``kl``: an exact per-token KL ``[N, T]`` to use instead
    of trl's k3 estimator. Returns (loss, metrics)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not supported here; use one of {LOSS_TYPES}")
    adv = advantages.unsqueeze(1)
    coef_1 = torch.exp(logps - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    metrics = {}
    if beta != 0.0:
        if kl is None:
            kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1  # k3
        per_token = per_token + beta * kl
        metrics["kl"] = kl.mean().item()
    mask = torch.ones_like(per_token)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * (max_completion_length or per_token.size(1)))
    else:  # dapo: normalised by the number of completion tokens in the batch
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    low = (coef_1 < 1 - epsilon_low) & (adv < 0)
    high = (coef_1 > 1 + epsilon_high) & (adv > 0)
    metrics["clip_ratio"] = (low | high).float().mean().item()
    return loss, metrics
