"""Trie-constrained batched beam search: the one generation routine for evaluation, the
recommend command and GRPO groups.

The encoder runs once per user. Decoding step 0 also runs once per user (all beams are the
same there); its self-attention cache is then repeated for the beams, while the cross-attention
keys/values stay one copy per user that all its beams read (``etegrl.attention``). Later steps
feed one token per beam with the KV cache; reordering beams only permutes beams of the same
user, so only the self-attention cache is reordered. Invalid continuations (not a prefix of any
item's code) are masked with the vectorised trie of ``CodeTable``.

Scores are sums of per-position log-probabilities: ``logprob="full"`` normalises each step over
all ``code_num`` codes (the model's own distribution); ``"trie"`` renormalises over the valid
codes only. Beams are exact for the chosen convention whenever every level has at most
``beam`` valid prefixes, and a best-first approximation otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from .codes import CodeTable
from .model import ETEGRecModel, history_tokens, shared_mask


class _KeepFirstLayer(DynamicLayer):
    """``DynamicLayer`` whose first update keeps the given keys/values: the stock one
    concatenates them to an empty tensor, a copy of all the encoder's cross-attention keys and
    values (and of the first step's), about 7% of a beam search's decoding on CPU."""

    def update(self, key_states, value_states, *args, **kwargs):
        if self.is_initialized:
            return super().update(key_states, value_states, *args, **kwargs)
        self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return self.keys, self.values


def _decoding_cache() -> EncoderDecoderCache:
    self_attention, cross_attention = DynamicCache(), DynamicCache()
    for cache in (self_attention, cross_attention):
        cache.layer_class_to_replicate = _KeepFirstLayer  # layers are made on first use
    return EncoderDecoderCache(self_attention, cross_attention)


def _step_logprobs(logits: torch.Tensor, allowed: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "trie":
        out = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        return torch.nan_to_num(out, nan=float("-inf"))  # a dead beam has no valid code
    return F.log_softmax(logits, -1).masked_fill(~allowed, float("-inf"))


def _without(allowed: torch.Tensor, prefixes: torch.Tensor, excluded: torch.Tensor,
             present: torch.Tensor) -> torch.Tensor:
    """``allowed [n*k, C]`` last codes of beams ``prefixes [n, k, code_len-1]`` with the codes
    that complete an excluded item (``excluded [n, E, code_len]``, ``present [n, E]``) off."""
    n, k, _ = prefixes.shape
    same = (prefixes[:, :, None, :] == excluded[:, None, :, :-1]).all(-1) & present[:, None, :]
    rows = torch.arange(n * k, device=allowed.device).reshape(n, k, 1).expand_as(same)
    last = excluded[:, None, :, -1].expand_as(same)
    allowed = allowed.clone()
    allowed[rows[same], last[same]] = False
    return allowed


@torch.no_grad()
def beam_search(model: ETEGRecModel, table: CodeTable, histories: torch.Tensor, *,
                beam: int = 20, logprob: str = "full",
                encoded: torch.Tensor | None = None,
                exclude: torch.Tensor | None = None,
                first_codes: int = 0) -> dict[str, torch.Tensor]:
    """Top-``beam`` items for each history ``[B, L]`` → items ``[B, beam]`` (0 = no item, when
    fewer valid items exist), their codes ``[B, beam, code_len]`` and scores ``[B, beam]``,
    best first.
    ``encoded``: the model's encoder output for these histories, when the caller has it (GRPO
    computes it once for the groups and the update); the model must then be in eval mode.
    ``exclude [B, E]``: item ids (0 = none) never to return for each history, e.g. the items
    already in it; masked at the last code, so the beam holds ``beam`` other items.
    ``first_codes`` = m > 0: the beam is split evenly over the m most likely first codes, each
    ``beam // m`` beams searched on within its first code only, so that the result spans m first
    codes (the top ``beam // m`` items under each, merged best first); 0 = one beam over all."""
    if logprob not in ("full", "trie"):
        raise ValueError("logprob must be 'full' or 'trie'")
    m = first_codes or 1
    if first_codes < 0 or beam % m:
        raise ValueError(f"first_codes must divide the beam ({beam}), got {first_codes}")
    was_training = model.training
    model.eval()
    device = histories.device
    tokens, mask = history_tokens(histories, table.codes)
    if encoded is None:
        encoded = model.encode(tokens, mask)
    n, code_len = histories.shape[0], table.code_len
    cache = _decoding_cache()
    hidden, cache = model.decode(encoded, mask, tokens.new_zeros(n, 0), cache=cache)
    logits = model.code_logits(hidden[:, -1:], start=0)[:, 0]
    logp = _step_logprobs(logits, table.allowed(tokens.new_zeros(n, 0)), logprob)
    k, q = beam, beam // m  # q beams per sub-beam; m sub-beams (one unless first_codes)
    top = k if m == 1 else m
    scores, first = logp.topk(min(top, logp.shape[1]), dim=1)   # [n, ≤top]
    if scores.shape[1] < top:  # fewer codes than beams: the rest start dead and fill at step 1
        pad = top - scores.shape[1]
        scores = torch.cat([scores, scores.new_full((n, pad), float("-inf"))], 1)
        first = torch.cat([first, first.new_zeros(n, pad)], 1)
    if m > 1:  # sub-beam j: its first code on beam 0, dead copies that fill at step 1
        scores = torch.cat([scores.unsqueeze(-1),
                            scores.new_full((n, m, q - 1), float("-inf"))], -1).reshape(n, k)
        first = first.repeat_interleave(q, dim=1)
    seqs = first.unsqueeze(-1)                                # [n, k, 1]
    # beams of a user share its cross-attention keys/values: only the self-attention cache
    # is per beam (etegrl.attention reads the shared ones)
    cache.self_attention_cache.batch_repeat_interleave(k)
    mask_b = shared_mask(mask)
    # beams are ordered (history, sub-beam, beam): sub-beam u's beams start at row u·q
    offsets = (torch.arange(n * m, device=device) * q).unsqueeze(1)
    for t in range(1, code_len):
        step_in = model.code_embeddings[t - 1](seqs[:, :, -1].reshape(-1)).unsqueeze(1)
        out = model.decoder(inputs_embeds=step_in, encoder_hidden_states=encoded,
                               encoder_attention_mask=mask_b, cache=cache, use_cache=True)
        logits = model.code_logits(out.last_hidden_state, start=t)[:, 0]
        allowed = table.allowed(seqs.reshape(n * k, t))
        if exclude is not None and t == code_len - 1:
            allowed = _without(allowed, seqs, table.codes[exclude], exclude > 0)
        logp = _step_logprobs(logits, allowed, logprob)
        total = (scores.reshape(-1, 1) + logp).reshape(n * m, -1)  # [n·m, q * code_num]
        scores, flat = total.topk(q, dim=1)
        parent, code = flat // logp.shape[1], flat % logp.shape[1]
        seqs = seqs.reshape(n * m, q, t)
        seqs = torch.cat([seqs.gather(1, parent.unsqueeze(-1).expand(-1, -1, t)),
                          code.unsqueeze(-1)], dim=-1).reshape(n, k, t + 1)
        if t < code_len - 1:  # the last step's cache is not read again
            cache.self_attention_cache.reorder_cache((offsets + parent).reshape(-1))
        scores = scores.reshape(n, k)
    if m > 1:  # the sub-beams merged, best first (dead beams last)
        scores, order = scores.sort(dim=1, descending=True, stable=True)
        seqs = seqs.gather(1, order.unsqueeze(-1).expand_as(seqs))
    items = table.items_of(seqs)
    items = torch.where(torch.isfinite(scores), items, 0)
    model.train(was_training)
    return {"items": items, "codes": seqs, "scores": scores}


@torch.no_grad()
def score_items(model: ETEGRecModel, table: CodeTable, histories: torch.Tensor,
                items: torch.Tensor, logprob: str = "full") -> torch.Tensor:
    """Teacher-forced log-probability of each candidate item ``[B, M]`` for each history: the
    brute-force reference for beam search (and a scorer for small candidate sets)."""
    model.eval()
    n, m = items.shape
    tokens, mask = history_tokens(histories, table.codes)
    encoded = model.encode(tokens, mask).repeat_interleave(m, 0)
    mask = mask.repeat_interleave(m, 0)
    codes = table.codes[items.reshape(-1)]
    hidden, _ = model.decode(encoded, mask, codes[:, :-1])
    logits = model.code_logits(hidden)
    total = torch.zeros(n * m, device=items.device)
    for t in range(table.code_len):
        allowed = table.allowed(codes[:, :t])
        lp = _step_logprobs(logits[:, t], allowed, logprob)
        total = total + lp.gather(1, codes[:, t:t + 1]).squeeze(1)
    return total.reshape(n, m)


@torch.no_grad()
def sample_items(model: ETEGRecModel, table: CodeTable, histories: torch.Tensor, *, n: int,
                 temperature: float = 1.0, generator: torch.Generator | None = None,
                 encoded: torch.Tensor | None = None):
    """``n`` items per history by ancestral sampling over valid codes → items ``[B, n]`` and
    codes ``[B, n, code_len]`` (items may repeat; the caller keeps the distinct ones);
    ``encoded`` as for ``beam_search``."""
    was_training = model.training
    model.eval()
    tokens, mask = history_tokens(histories, table.codes)
    if encoded is None:  # one copy per history, shared by its n samples
        encoded = model.encode(tokens, mask)
    mask = shared_mask(mask)
    codes = tokens.new_zeros(encoded.shape[0] * n, 0)
    for t in range(table.code_len):  # 4 short steps: re-running the prefix costs little
        hidden, _ = model.decode(encoded, mask, codes)
        logits = model.code_logits(hidden[:, -1:], start=t)[:, 0] / temperature
        probs = torch.softmax(logits.masked_fill(~table.allowed(codes), float("-inf")), -1)
        codes = torch.cat([codes, torch.multinomial(probs, 1, generator=generator)], 1)
    model.train(was_training)
    b = histories.shape[0]
    return {"items": table.items_of(codes).reshape(b, n), "codes": codes.reshape(b, n, -1)}
