"""Dropout that is cheap on CPU, for T5's dropout modules and its attention-probability dropout.

Why our own: on CPU, PyTorch draws a dropout mask with ``bernoulli_``, one Mersenne-Twister call
per element; in a 2+2-layer T5 training step that was a quarter of the step (a third under bf16
autocast). Here one 64-bit random word gives four 16-bit draws, each kept when it is at least
``p·65536`` (the drop probability rounded to 1/65536), which is about 3× cheaper per element
for the same distribution. The mask is a bool tensor saved for the backward pass. Every other
device keeps PyTorch's own dropout (fast Philox kernels on GPUs), and so does the attention
whenever no dropout is drawn: it goes to transformers' SDPA as before.

The attention part is registered with transformers' ``AttentionInterface`` under
``ATTENTION`` (masks as for "sdpa"); T5 configs select it with ``attn_implementation``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import (create_position_bias_mask,
                                                      sdpa_attention_forward)
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "etegrl_sdpa"
_DRAWS = 4  # 16-bit draws per 64-bit random word


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of ``shape``, each element True with probability ``1 - p`` (to 1/65536)."""
    n = shape.numel()
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + _DRAWS - 1) // _DRAWS,),
                          dtype=torch.int64, device=device)
    threshold = round(p * 65536) - 32768
    return (words.view(torch.int16)[:n] >= threshold).view(shape)


class _MaskedScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


def drop(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.functional.dropout`` with the cheap mask on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same place in a state dict: none) with the cheap CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:  # no module of ours asks for it; keep PyTorch's semantics exactly
            return super().forward(x)
        return drop(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0,
              scaling: float | None = None, is_causal: bool | None = None,
              position_bias: torch.Tensor | None = None, **kwargs):
    """transformers' SDPA attention, except that when dropout is drawn on CPU the probabilities
    are computed here (SDPA would fall back to its math path and ``bernoulli_`` anyway)."""
    if dropout == 0.0 or query.device.type != "cpu" or position_bias is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal,
                                      position_bias=position_bias, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    bias = create_position_bias_mask(position_bias, attention_mask, causal, query, key)
    scores = torch.matmul(query, key.transpose(2, 3))
    if scaling is not None and scaling != 1.0:
        scores = scores * scaling
    probs = torch.softmax(scores + bias, dim=-1)
    probs = drop(probs, dropout)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


def use_fast_dropout(model: nn.Module) -> None:
    """Swap every plain ``nn.Dropout`` inside ``model`` for ``Dropout`` (same rate)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
