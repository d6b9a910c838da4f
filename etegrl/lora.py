"""LoRA (peft) for the finetune and rl stages: adapters on the T5 attention projections,
merged into a plain ``ETEGRecModel`` whenever a checkpoint is written."""

from __future__ import annotations

import copy

from peft import LoraConfig, get_peft_model


def apply_lora(model, *, r: int, alpha: int, dropout: float, targets: list[str]):
    """Wrap ``model`` in place: only the LoRA matrices train. The model object keeps working
    (peft injects its layers into the same modules), so ``model.encode`` etc. use LoRA."""
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(targets)))


def merged_copy(peft_model):
    """A plain model with the adapters merged in; the training model is left untouched."""
    return copy.deepcopy(peft_model).merge_and_unload()
