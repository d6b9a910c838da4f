"""Finetuning: the pretrained recommender on the code cross-entropy alone, the tokenizer and
the item codes fixed, a fresh AdamW with a cosine schedule, best checkpoint by validation
NDCG@10 (the official ETEGRec finetune, with every hyper-parameter in the config); optionally
distilled from the prepare step's SASRec (``teacher``)."""

from __future__ import annotations

from etegrl.lora import apply_lora, merged_copy
from etegrl.model import set_dropout, training_outputs
from etegrl.objective import CodeObjective
from etegrl.stage import Stage
from etegrl.training import adamw_cosine, training_epochs

from .config import FinetuneConfig


class FinetuneStage(Stage):
    name = "finetune"
    cfg: FinetuneConfig

    def build(self) -> None:
        cfg = self.cfg
        self.load_start(cfg.checkpoint)
        self.load_teacher()
        self.objective = CodeObjective.from_config(cfg, self.teacher, self.teacher_exclude)
        if cfg.dropout_rate >= 0:
            set_dropout(self.model, cfg.dropout_rate)
        self.peft = None
        if cfg.use_lora:
            self.peft = apply_lora(self.model, r=cfg.lora_r, alpha=cfg.lora_alpha,
                                   dropout=cfg.lora_dropout, targets=cfg.lora_targets)

    def build_training(self) -> None:
        cfg = self.cfg
        self.rows = training_epochs(cfg, self.data.splits,
                                    causal=self.model.config.causal_encoder)
        self.opt, self.sched = adamw_cosine(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
            total_steps=self.plan_steps(self.rows.batches_per_epoch() * cfg.epochs),
            warmup_ratio=cfg.warmup_ratio, warmup_steps=cfg.warmup_steps)

    def batch_losses(self, hist, targets, batch=None):
        with self.autocast():
            out, _, target_codes = training_outputs(self.model, self.table.codes, hist, targets)
        loss = self.objective(self.table, out["logits"], target_codes, hist, windows=targets)
        return {"code": loss, "total": loss}

    def run_epoch(self, epoch: int) -> str:
        self.model.train()
        self.fit_epoch(epoch, "finetune", self.batch_losses, self.opt, self.sched)
        return "finetune"

    def export_model(self):
        return merged_copy(self.peft) if self.peft is not None else self.model

    def checkpoint_info(self) -> dict:
        return {"from": self.cfg.checkpoint, "lora": self.cfg.use_lora,
                "teacher": {"name": self.cfg.teacher, "weight": self.cfg.teacher_weight,
                            "temperature": self.cfg.teacher_temperature,
                            "exclude_history": self.teacher_exclude},
                "codes": self.source_info.get("codes", {})}
