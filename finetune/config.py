"""Options of the finetune stage (defaults follow the official ETEGRec finetune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from etegrl.config import option, require
from etegrl.options import (DistillOptions, EvalOptions, LoraOptions, RunOptions, StepOptions,
                            TrainOptions)


@dataclass
class FinetuneConfig(DistillOptions, LoraOptions, StepOptions, TrainOptions, EvalOptions,
                     RunOptions):
    # config fields naming inputs: a finished run is reused only while these are unchanged
    INPUT_FIELDS = ("data_dir", "checkpoint")

    checkpoint: str = option("runs/ml-100k/pretrain/best", "The pretrain stage's best checkpoint, loaded strictly.")
    output_dir: str = option("runs/ml-100k/finetune", "Where best/, log.jsonl and results.json go.")
    epochs: int = option(100, "Maximum epochs.")
    batch_size: int = option(256, "Training rows per forward pass (per process).")
    gradient_accumulation_steps: int = option(1, "Forward passes per optimiser step, their gradients summed as one batch's mean (trl's name): an optimiser step sees batch_size × this many rows per process.")
    rows_per_user: int = option(0, "At most this many prefix rows per user per epoch, redrawn each epoch (0 = all).")
    lr: float = option(5e-4, "AdamW learning rate (fresh optimiser).")
    weight_decay: float = option(0.05, "AdamW weight decay.")
    warmup_ratio: float = option(0.0, "Share of steps in linear warm-up before the cosine decay (official: none; used when warmup_steps is 0).")
    dropout_rate: float = option(-1.0, "Override the checkpoint's T5 dropout (< 0 keeps it).")
    bf16: bool | Literal["auto"] = option(False, "Mixed precision: the recommender's training forward passes under bf16 autocast; weights, optimiser, losses, tokenizer and evaluation stay fp32. Pays on GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere its matmuls are emulated and far slower. auto: on only where the device has native bf16.")

    def __post_init__(self):
        self.check_training()
        self.check_steps()
        require(self, 0, "lr", above=True)
        require(self, 1, "gradient_accumulation_steps")
        self.check_lora()
        self.check_distill()
        if self.dropout_rate >= 1:
            raise ValueError(f"key 'dropout_rate' must be < 1 (< 0 keeps the checkpoint's), got "
                             f"{self.dropout_rate}")
