"""The recommender's attention: transformers' SDPA attention with two additions, registered with
transformers' ``AttentionInterface`` as ``ATTENTION`` (masks built as for "sdpa"; the T5 stacks
select it through ``attn_implementation``).

1. Shared keys. When the queries come in ``R`` times as many rows as the keys and values, row
   ``i`` of the queries attends to row ``i // R`` of the keys. Beam search and GRPO groups use
   this for cross-attention: the ``R`` beams (or group members) of a history read one copy of
   its encoder keys/values, folded into one attention call with ``R`` queries instead of ``R``
   calls over ``R`` copies, which costs both the copies and most of a short decoder's step.
   The encoder mask must then be passed per history, as a 4-D bool ``[B, 1, 1, L]``
   (transformers passes 4-D masks through unchanged).
2. Cheap dropout on CPU. With attention dropout drawn on a CPU, SDPA falls back to its math
   path and PyTorch's slow ``bernoulli_`` masks; there the probabilities are computed here and
   dropped with ``etegrl.fast_dropout``. Everywhere else it is SDPA itself.
3. One additive mask per stack pass. T5 hands every layer of a stack the same position-bias and
   mask tensors, and SDPA needs them merged into one float mask ``[B, H, Q, K]``; transformers
   merges them again in every layer, here the first layer's merge is reused while both tensors
   are the same objects (8% of a 2+2-layer beam search was spent on these merges).
"""

from __future__ import annotations

import weakref

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import (create_position_bias_mask,
                                                      sdpa_attention_forward)
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .fast_dropout import drop

ATTENTION = "etegrl_sdpa"


class _MergedMask:
    """``create_position_bias_mask`` of the last (position bias, mask) pair, kept while both
    are alive and the same objects (weak references: a freed tensor's id may be reused)."""

    def __init__(self):
        self.refs, self.spec, self.merged = None, None, None

    def __call__(self, position_bias, attention_mask, causal, query, key, repeat=1):
        """``repeat``: the query rows are ``repeat`` folded copies (see ``attention``)."""
        spec = (causal, query.shape[2], key.shape[2], key.dtype, torch.is_grad_enabled(), repeat)
        if (self.refs is not None and self.spec == spec and self.refs[0]() is position_bias
                and (self.refs[1]() if self.refs[1] is not None else None) is attention_mask):
            return self.merged
        merged = create_position_bias_mask(position_bias, attention_mask, causal, query, key)
        if repeat > 1 and query.shape[2] > 1:  # one query a row broadcasts over the copies
            merged = merged.repeat(1, 1, repeat, 1)
        self.merged = merged
        self.refs = (weakref.ref(position_bias),
                     weakref.ref(attention_mask) if attention_mask is not None else None)
        self.spec = spec
        return self.merged


_merged_mask = _MergedMask()


def _attend(module, query, key, value, attention_mask, dropout, scaling, is_causal,
            position_bias, bias=None, **kwargs):
    if position_bias is None and bias is None:  # not T5's way: SDPA as transformers calls it
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if bias is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = query.shape[2] > 1 and attention_mask is None and causal
        bias = _merged_mask(position_bias, attention_mask, causal, query, key)
    if dropout == 0.0 or query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, bias, dropout=dropout,
                                      scaling=scaling, is_causal=False, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3))
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    probs = drop(torch.softmax(scores + bias, dim=-1), dropout)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


def attention(module, query, key, value, attention_mask, dropout: float = 0.0,
              scaling: float | None = None, is_causal: bool | None = None,
              position_bias: torch.Tensor | None = None, **kwargs):
    """``query [B·R, H, Q, D]`` against ``key``/``value`` ``[B, H, K, D]`` → ``[B·R, Q, H, D]``
    (R = 1: plain attention)."""
    rows, keys = query.shape[0], key.shape[0]
    if rows == keys:
        return _attend(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                       position_bias, **kwargs)
    if rows % keys:
        raise ValueError(f"{rows} query rows cannot share the keys of {keys} rows")
    r, (_, heads, q_len, dim) = rows // keys, query.shape
    if is_causal or getattr(module, "is_causal", False):
        raise ValueError("shared keys are for cross-attention, which is not causal")
    if attention_mask is not None and attention_mask.shape[0] not in (1, keys):
        raise ValueError("shared keys need the mask per key row ([B, 1, 1, L])")

    def fold(x):  # [B·R, H, Q, ·] → [B, H, R·Q, ·]: the R rows of a key row become queries
        return x.reshape(-1, r, heads, q_len, x.shape[-1]).transpose(1, 2).reshape(
            x.shape[0] // r, heads, r * q_len, x.shape[-1])

    folded, bias = fold(query), None
    if position_bias is not None and position_bias.shape[0] != 1:
        bias = create_position_bias_mask(fold(position_bias), attention_mask, False, folded, key)
    elif position_bias is not None:  # merged per history, repeated for its R query rows
        bias = _merged_mask(position_bias, attention_mask, False, query, key, repeat=r)
    out, _ = _attend(module, folded, key, value, attention_mask, dropout, scaling, False,
                     position_bias, bias=bias, **kwargs)  # out [B, R·Q, H, D]
    return out.reshape(keys, r, q_len, heads, dim).reshape(rows, q_len, heads, dim), None


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
