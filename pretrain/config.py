"""Options of the pretrain stage (one flat dataclass; see ``configs/*/pretrain.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def opt(default, text, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text}, **kw)
    return field(default=default, metadata={"help": text}, **kw)


@dataclass
class PretrainConfig:
    data_dir: str = opt("runs/ml-100k/data", "Output folder of the prepare step (splits + embeddings/semantic.safetensors).")
    output_dir: str = opt("runs/ml-100k/pretrain", "Where checkpoints (best/), log.jsonl and results.json go.")
    mode: Literal["etegrec", "tiger"] = opt("etegrec", "etegrec: alternating loop with SIA/PSA; tiger: tokenizer pretrained then frozen, code loss only.")
    seed: int = opt(42, "Random seed.")
    overwrite: bool = opt(False, "Replace an output_dir that holds another run.")
    # recommender (T5)
    d_model: int = opt(128, "T5 model width.")
    d_ff: int = opt(512, "T5 feed-forward width.")
    num_layers: int = opt(6, "Encoder layers.")
    num_decoder_layers: int = opt(6, "Decoder layers.")
    num_heads: int = opt(4, "Attention heads.")
    d_kv: int = opt(64, "Size of each head's keys and values.")
    dropout_rate: float = opt(0.1, "T5 dropout.")
    max_len: int = opt(50, "History items the recommender reads (the last ones).")
    # tokenizer (RQ-VAE)
    code_num: int = opt(256, "Codes per level (and collision suffixes).")
    levels: int = opt(3, "Residual quantisation levels; an item's code has levels + 1 codes.")
    e_dim: int = opt(128, "Tokenizer latent size.")
    tok_hidden: list[int] = opt([512, 256], "Tokenizer MLP hidden sizes (encoder; decoder mirrored).")
    tok_dropout: float = opt(0.0, "Tokenizer MLP dropout.")
    beta: float = opt(0.25, "Commitment weight β.")
    quantize_mode: Literal["argmin", "gumbel"] = opt("argmin", "Nearest code (argmin) or Gumbel-softmax sampling while training.")
    gumbel_tau: float = opt(1.0, "Gumbel-softmax temperature.")
    logit_sign: Literal["negative", "positive"] = opt("negative", "SIA code logits: −distance (paper) or +distance (official code).")
    collision: Literal["append_index", "hash_offset"] = opt("append_index", "Collision suffix: index among items on the prefix, or FORGE's hash-offset round robin.")
    overflow: Literal["error", "reassign"] = opt("reassign", "More than code_num items on one prefix: stop with an error, or move the farthest items to their nearest last-level code with room.")
    tokenizer_pretrain_epochs: int = opt(500, "Epochs of RQ-VAE training alone on the item embeddings before the joint loop (0 = none).")
    tokenizer_pretrain_lr: float = opt(1e-3, "Learning rate of tokenizer pretraining.")
    tokenizer_pretrain_batch_size: int = opt(1024, "Items per tokenizer-pretraining step.")
    # joint loop
    epochs: int = opt(100, "Epochs of the joint loop.")
    warmup_epochs: int = opt(10, "First epochs train the recommender on the code loss only (no SIA/PSA).")
    cycle: int = opt(2, "After warm-up, epochs with epoch % cycle == 0 train the tokenizer; the others the recommender.")
    batch_size: int = opt(256, "Training rows per step.")
    rows_per_user: int = opt(0, "At most this many prefix rows per user per epoch, redrawn each epoch (0 = all).")
    lr_rec: float = opt(5e-3, "Recommender AdamW learning rate.")
    lr_id: float = opt(1e-4, "Tokenizer AdamW learning rate in the joint loop.")
    weight_decay: float = opt(0.05, "AdamW weight decay (both optimisers).")
    warmup_ratio: float = opt(0.02, "Share of each optimiser's steps spent in linear warm-up before the cosine decay.")
    w_code: float = opt(1.0, "Weight of the code cross-entropy.")
    w_vq: float = opt(1.0, "Weight of the VQ loss (tokenizer epochs).")
    w_sia: float = opt(1e-4, "Weight of SIA (official code 1e-4; the paper's best 3e-4).")
    w_psa: float = opt(3e-4, "Weight of PSA (official code 3e-4; the paper's best 1e-4).")
    psa_tau: float = opt(0.07, "InfoNCE temperature of PSA.")
    # evaluation
    eval_every: int = opt(1, "Validate every N epochs (and after the last).")
    patience: int = opt(10, "Stop after this many validations without a better NDCG@10 (0 = never).")
    beam: int = opt(20, "Beam size of evaluation.")
    eval_batch_size: int = opt(128, "Users per beam-search batch.")
    valid_users: int = opt(0, "Validate on a fixed random subset of this many users (0 = all); test always uses all.")
    logprob: Literal["full", "trie"] = opt("full", "Beam scores: log-softmax over all codes (full) or renormalised over valid codes (trie).")
    progress: bool = opt(True, "Show progress bars.")

    def __post_init__(self):
        if self.cycle < 1:
            raise ValueError("cycle must be ≥ 1")
        if self.beam < 10:
            raise ValueError("beam must be ≥ 10 (Recall@10 needs 10 items)")
