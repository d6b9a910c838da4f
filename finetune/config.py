"""Options of the finetune stage (defaults follow the official ETEGRec finetune)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def opt(default, text):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class FinetuneConfig:
    data_dir: str = opt("runs/ml-100k/data", "Output folder of the prepare step.")
    checkpoint: str = opt("runs/ml-100k/pretrain/best", "The pretrain stage's best checkpoint, loaded strictly.")
    output_dir: str = opt("runs/ml-100k/finetune", "Where best/, log.jsonl and results.json go.")
    seed: int = opt(42, "Random seed.")
    overwrite: bool = opt(False, "Replace an output_dir that holds another run.")
    max_len: int = opt(50, "History items the recommender reads (the last ones).")
    epochs: int = opt(100, "Maximum epochs.")
    batch_size: int = opt(256, "Training rows per step.")
    rows_per_user: int = opt(0, "At most this many prefix rows per user per epoch, redrawn each epoch (0 = all).")
    lr: float = opt(5e-4, "AdamW learning rate (fresh optimiser).")
    weight_decay: float = opt(0.05, "AdamW weight decay.")
    warmup_ratio: float = opt(0.0, "Share of steps in linear warm-up before the cosine decay (official: none).")
    dropout_rate: float = opt(-1.0, "Override the checkpoint's T5 dropout (< 0 keeps it).")
    use_lora: bool = opt(False, "Train LoRA adapters on the attention projections instead of all weights; merged on save.")
    lora_r: int = opt(8, "LoRA rank.")
    lora_alpha: int = opt(16, "LoRA alpha.")
    lora_dropout: float = opt(0.0, "LoRA dropout.")
    lora_targets: list[str] = opt(["q", "k", "v", "o"], "Module names that get adapters (T5 attention: q, k, v, o).")
    eval_every: int = opt(1, "Validate every N epochs (and after the last).")
    patience: int = opt(10, "Stop after this many validations without a better NDCG@10 (0 = never).")
    beam: int = opt(20, "Beam size of evaluation.")
    eval_batch_size: int = opt(128, "Users per beam-search batch.")
    valid_users: int = opt(0, "Validate on a fixed random subset of this many users (0 = all).")
    logprob: Literal["full", "trie"] = opt("full", "Beam scores: log-softmax over all codes (full) or over valid codes (trie).")
    progress: bool = opt(True, "Show progress bars.")
