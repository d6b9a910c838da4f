"""ETEGRec's losses, each a small pure function (the VQ loss lives with the tokenizer).

code_loss  cross-entropy of the target's codes under the recommender, mean over positions,
           optionally mixed with soft targets (a teacher's code distributions)
sia_loss   symmetric KL, per level, between the tokenizer's code distribution for the target
           item and for the SIA-projected sequence state (Sequence-Item Alignment)
psa_loss   InfoNCE with cosine similarity / τ between the PSA-projected decoder BOS state and
           the tokenizer's reconstruction of the target embedding, in-batch negatives
           (Preference-Semantic Alignment); other rows with the same target are not negatives
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def code_loss(logits: torch.Tensor, codes: torch.Tensor,
              allowed: torch.Tensor | None = None, soft: torch.Tensor | None = None,
              soft_weight: float = 0.0) -> torch.Tensor:
    """``logits [B, T, C]``, ``codes [B, T]`` → mean cross-entropy over all B·T codes;
    ``allowed [B, T, C]``: the softmax of each position runs over these codes only (the trie's
    valid continuations), so the loss is the item's negative log-likelihood among valid items.
    ``soft [B, T, C]`` (distributions, zero wherever ``allowed`` is False): the target of each
    position is ``(1 − soft_weight) · one-hot(code) + soft_weight · soft`` (distillation)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
    if soft is None or soft_weight == 0:
        return hard
    logp = F.log_softmax(logits.float(), -1)
    # 0 · log 0 terms (codes the target distribution never names, masked to −inf) count 0
    soft_ce = -torch.where(soft > 0, soft * logp, logp.new_zeros(())).sum(-1).mean()
    return (1 - soft_weight) * hard + soft_weight * soft_ce


def sia_loss(item_logits: torch.Tensor, seq_logits: torch.Tensor) -> torch.Tensor:
    """``[B, levels, C]`` logits each → mean over batch and levels of KL(p‖q) + KL(q‖p)."""
    lp, lq = F.log_softmax(item_logits, -1), F.log_softmax(seq_logits, -1)
    kl_pq = (lp.exp() * (lp - lq)).sum(-1)
    kl_qp = (lq.exp() * (lq - lp)).sum(-1)
    return (kl_pq + kl_qp).mean()


def psa_loss(query: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor | None = None,
             tau: float = 0.07, both: bool = True) -> torch.Tensor:
    """InfoNCE: row i of ``query`` should match row i of ``keys`` among all rows of ``keys``;
    ``both`` adds the other direction (row i of ``keys`` among all rows of ``query``), the sum
    the official ETEGRec code uses."""
    sim = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T / tau
    if targets is not None:  # the same item twice in a batch is no negative of itself
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        same.fill_diagonal_(False)
        sim = sim.masked_fill(same, float("-inf"))
    labels = torch.arange(len(sim), device=sim.device)
    loss = F.cross_entropy(sim, labels)
    return loss + F.cross_entropy(sim.T, labels) if both else loss
