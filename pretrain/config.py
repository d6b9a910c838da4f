"""Options of the pretrain stage (one flat dataclass; see ``configs/*/pretrain.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from etegrl.config import option, require
from etegrl.options import DistillOptions, EvalOptions, RunOptions, TrainOptions


@dataclass
class PretrainConfig(DistillOptions, TrainOptions, EvalOptions, RunOptions):
    # config fields naming inputs: a finished run is reused only while these are unchanged
    INPUT_FIELDS = ("data_dir",)

    output_dir: str = option("runs/ml-100k/pretrain", "Where checkpoints (best/), log.jsonl and results.json go.")
    mode: Literal["etegrec", "tiger"] = option("etegrec", "etegrec: alternating loop with SIA/PSA; tiger: tokenizer pretrained then frozen, code loss only.")
    # recommender (T5)
    d_model: int = option(128, "T5 model width.")
    d_ff: int = option(512, "T5 feed-forward width.")
    num_layers: int = option(6, "Encoder layers.")
    num_decoder_layers: int = option(6, "Decoder layers.")
    num_heads: int = option(4, "Attention heads.")
    d_kv: int = option(64, "Size of each head's keys and values.")
    dropout_rate: float = option(0.1, "T5 dropout.")
    causal_encoder: bool = option(False, "Encoder attention causal over items (each history token sees its own and earlier items); needed by train_on=sequences. The official ETEGRec encoder is bidirectional (false).")
    bf16: bool | Literal["auto"] = option(False, "Mixed precision: the recommender's training forward passes under bf16 autocast; weights, optimiser, losses, tokenizer and evaluation stay fp32. Pays on GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere its matmuls are emulated and far slower. auto: on only where the device has native bf16.")
    # tokenizer (RQ-VAE)
    code_num: int = option(256, "Codes per level (and collision suffixes).")
    levels: int = option(3, "Residual quantisation levels; an item's code has levels + 1 codes.")
    e_dim: int = option(128, "Tokenizer latent size.")
    tok_hidden: list[int] = option([512, 256], "Tokenizer MLP hidden sizes (encoder; decoder mirrored).")
    tok_dropout: float = option(0.0, "Tokenizer MLP dropout.")
    beta: float = option(0.25, "Commitment weight β.")
    quantize_mode: Literal["argmin", "gumbel"] = option("argmin", "Nearest code (argmin) or Gumbel-softmax sampling while training.")
    gumbel_tau: float = option(1.0, "Gumbel-softmax temperature.")
    logit_sign: Literal["negative", "positive"] = option("negative", "SIA code logits: −distance (paper) or +distance (official code).")
    collision: Literal["append_index", "hash_offset"] = option("append_index", "Collision suffix: index among items on the prefix, or FORGE's hash-offset round robin.")
    overflow: Literal["error", "reassign"] = option("reassign", "More than code_num items on one prefix: stop with an error, or move the farthest items to their nearest last-level code with room.")
    tokenizer_pretrain_epochs: int = option(500, "Epochs of RQ-VAE training alone on the item embeddings before the joint loop (0 = none).")
    tokenizer_pretrain_lr: float = option(1e-3, "Learning rate of tokenizer pretraining.")
    tokenizer_check_every: int = option(10, "During tokenizer pretraining, count colliding items every N epochs and keep the weights with the fewest.")
    tokenizer_pretrain_batch_size: int = option(1024, "Items per tokenizer-pretraining step.")
    # joint loop
    epochs: int = option(100, "Epochs of the joint loop.")
    warmup_epochs: int = option(10, "First epochs train the recommender on the code loss only (no SIA/PSA).")
    cycle: int = option(2, "After warm-up, epochs with epoch % cycle == 0 train the tokenizer; the others the recommender.")
    batch_size: int = option(256, "Training rows per step.")
    rows_per_user: int = option(0, "At most this many prefix rows per user per epoch, redrawn each epoch (0 = all).")
    lr_rec: float = option(5e-3, "Recommender AdamW learning rate.")
    lr_id: float = option(1e-4, "Tokenizer AdamW learning rate in the joint loop.")
    weight_decay: float = option(0.05, "AdamW weight decay (both optimisers).")
    warmup_ratio: float = option(0.02, "Share of each optimiser's steps spent in linear warm-up before the cosine decay (used when warmup_steps is 0).")
    psa_both: bool = option(True, "PSA InfoNCE over both directions, summed (sequence → item and item → sequence, as the official code); false = sequence → item only.")
    w_code: float = option(1.0, "Weight of the code cross-entropy.")
    w_vq: float = option(1.0, "Weight of the VQ loss (tokenizer epochs).")
    w_sia: float = option(1e-4, "Weight of SIA (official code 1e-4; the paper's best 3e-4).")
    w_psa: float = option(3e-4, "Weight of PSA (official code 3e-4; the paper's best 1e-4).")
    psa_tau: float = option(0.07, "InfoNCE temperature of PSA.")

    def __post_init__(self):
        self.check_training()
        self.check_distill()
        require(self, 1, "d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv",
                "levels", "e_dim", "tokenizer_pretrain_batch_size")
        require(self, 2, "code_num")
        require(self, 0, "tokenizer_pretrain_epochs", "warmup_epochs", "beta", "w_code", "w_vq",
                "w_sia", "w_psa")
        require(self, 0, "lr_rec", "lr_id", "tokenizer_pretrain_lr", "psa_tau", "gumbel_tau",
                above=True)
        require(self, 0, "dropout_rate", "tok_dropout", high=1, below_high=True)
        if any(h < 1 for h in self.tok_hidden):
            raise ValueError(f"key 'tok_hidden' must hold sizes ≥ 1, got {self.tok_hidden}")
        if self.train_on == "sequences" and not self.causal_encoder:
            raise ValueError("train_on=sequences needs causal_encoder=true")
        if self.cycle < 1:
            raise ValueError("cycle must be ≥ 1")
        if self.mode == "etegrec" and self.epochs > self.warmup_epochs:
            # validations must not land right after a code rebuild, and the run must not end
            # on codes the recommender never trained on (the official code asserts the first)
            if self.cycle % self.eval_every:
                raise ValueError(f"cycle ({self.cycle}) must be a multiple of eval_every "
                                 f"({self.eval_every}), so that validation follows recommender epochs")
            last = self.epochs - 1
            if last >= self.warmup_epochs and last % self.cycle == 0:
                raise ValueError(f"epochs={self.epochs} ends on a tokenizer epoch (epoch {last}, "
                                 f"cycle {self.cycle}) whose new codes are never trained on; use "
                                 f"epochs={self.epochs + 1} or {self.epochs - 1}")
        if self.tokenizer_check_every < 1:
            raise ValueError("tokenizer_check_every must be ≥ 1")
        if self.beam < 10:
            raise ValueError("beam must be ≥ 10 (Recall@10 needs 10 items)")
