"""The ETEGRec pretraining loop (and the TIGER two-stage baseline).

setup: data, semantic embeddings, tokenizer (k-means init + optional pretraining alone),
item codes, recommender, two AdamW optimisers. train: per epoch one kind —
  warmup       recommender on the code loss (epoch < warmup_epochs), tokenizer frozen
  tokenizer    epoch % cycle == 0: tokenizer on VQ + SIA + PSA, recommender frozen; the item
               codes are rebuilt at the end
  recommender  the other epochs: recommender on code + SIA + PSA, tokenizer frozen
  tiger        (mode=tiger) every epoch: recommender on the code loss, tokenizer frozen
validation by beam search every ``eval_every`` epochs, best checkpoint by NDCG@10, early stop,
then the test split with the best checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from tqdm.auto import tqdm

from etegrl.codes import CodeTable, assign_suffixes, reassign_overflow
from etegrl.embeddings import load_embedding
from etegrl.losses import psa_loss, sia_loss
from etegrl.model import ETEGRecConfig, ETEGRecModel, training_outputs
from etegrl.objective import CodeObjective
from etegrl.stage import Stage
from etegrl.tokenizer import RQVAE
from etegrl.training import adamw_cosine, training_epochs

from .config import PretrainConfig


@torch.no_grad()
def collided_items(tokenizer: RQVAE, items: torch.Tensor) -> int:
    """Items whose 3-code prefix another item also has (the collision suffix tells them apart)."""
    prefix, _ = tokenizer.encode_items(items)
    _, counts = torch.unique(prefix, dim=0, return_counts=True)
    return int(counts[counts > 1].sum())


def set_trainable(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class PretrainStage(Stage):
    name = "pretrain"
    cfg: PretrainConfig

    # ------------------------------------------------------------------ setup
    def build(self) -> None:
        cfg = self.cfg
        self.load_teacher()
        self.objective = CodeObjective.from_config(cfg, self.teacher, self.teacher_exclude)
        self.semantic = load_embedding(Path(cfg.data_dir) / "embeddings" / "semantic.safetensors",
                                       n_items=self.data.n_items).to(self.device)
        self.tokenizer_args = dict(
            semantic_dim=self.semantic.shape[1], hidden=list(cfg.tok_hidden), e_dim=cfg.e_dim,
            levels=cfg.levels, code_num=cfg.code_num, beta=cfg.beta, dropout=cfg.tok_dropout,
            quantize_mode=cfg.quantize_mode, gumbel_tau=cfg.gumbel_tau, logit_sign=cfg.logit_sign)
        self.tokenizer = RQVAE(**self.tokenizer_args).to(self.device)

    def build_training(self) -> None:
        """Tokenizer pretraining (logged), the first codes, then the recommender on them (in
        this order: the random stream, and so a seed's run, depends on it), rows, optimisers."""
        cfg = self.cfg
        if self.resume_state is None:  # a resumed run loads the trained tokenizer instead
            self.pretrain_tokenizer()
        self.rebuild_codes()
        self.model = ETEGRecModel(ETEGRecConfig(
            code_num=cfg.code_num, code_len=cfg.levels + 1, d_model=cfg.d_model, d_ff=cfg.d_ff,
            num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers,
            num_heads=cfg.num_heads, d_kv=cfg.d_kv, dropout_rate=cfg.dropout_rate,
            e_dim=cfg.e_dim, semantic_dim=self.semantic.shape[1],
            causal_encoder=cfg.causal_encoder)).to(self.device)
        self.rows = training_epochs(cfg, self.data.splits, causal=cfg.causal_encoder)
        kinds = [self.epoch_kind(e) for e in range(cfg.epochs)]
        per_epoch = self.rows.batches_per_epoch()
        self.opt_rec, self.sched_rec = adamw_cosine(
            self.model.parameters(), lr=cfg.lr_rec, weight_decay=cfg.weight_decay,
            total_steps=per_epoch * sum(k != "tokenizer" for k in kinds),
            warmup_ratio=cfg.warmup_ratio, warmup_steps=cfg.warmup_steps)
        self.opt_id, self.sched_id = adamw_cosine(
            self.tokenizer.parameters(), lr=cfg.lr_id, weight_decay=cfg.weight_decay,
            total_steps=per_epoch * max(1, sum(k == "tokenizer" for k in kinds)),
            warmup_ratio=cfg.warmup_ratio, warmup_steps=cfg.warmup_steps)

    def pretrain_tokenizer(self) -> None:
        """k-means initialisation, then the RQ-VAE alone on the item embeddings (TIGER's stage 1;
        the official ETEGRec also starts from a pretrained tokenizer). Like the official code,
        the weights kept are those whose 3-code prefixes collide least (checked every
        ``tokenizer_check_every`` epochs and after the last; ties go to the later check).
        Only trained weights compete: k-means codebooks over the latents of the untrained,
        random encoder often collide less than any trained check, but their decoder reconstructs
        nothing, and the joint loop's first tokenizer epoch then moves the encoder so far that
        most items fall onto a few codes."""
        cfg, items = self.cfg, self.semantic[1:]
        self.tokenizer.init_codebooks(items, seed=cfg.seed)
        if cfg.tokenizer_pretrain_epochs <= 0:
            return
        opt = torch.optim.AdamW(self.tokenizer.parameters(), lr=cfg.tokenizer_pretrain_lr)
        g = torch.Generator().manual_seed(cfg.seed)
        init_collided = collided_items(self.tokenizer, items)
        best = None
        bar = tqdm(range(cfg.tokenizer_pretrain_epochs), desc="tokenizer pretraining",
                   disable=not cfg.progress, leave=False)
        for epoch in bar:
            self.tokenizer.train()
            order = torch.randperm(len(items), generator=g).to(self.device)
            for i in range(0, len(items), cfg.tokenizer_pretrain_batch_size):
                out = self.tokenizer(items[order[i:i + cfg.tokenizer_pretrain_batch_size]])
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
            last = epoch == cfg.tokenizer_pretrain_epochs - 1
            if (epoch + 1) % cfg.tokenizer_check_every == 0 or last:
                collided = collided_items(self.tokenizer, items)
                if best is None or collided <= best[0]:
                    best = (collided, epoch, copy.deepcopy(self.tokenizer.state_dict()))
                self.write_log({"stage": "tokenizer_pretrain", "epoch": epoch,
                                "recon": out["recon_loss"].item(),
                                "quant": out["quant_loss"].item(), "collided_items": collided})
        self.tokenizer.load_state_dict(best[2])
        self.tokenizer_pretrain_info = {"kept_epoch": best[1], "collided_items": best[0],
                                        "init_collided_items": init_collided}
        self.log(f"tokenizer pretrained {cfg.tokenizer_pretrain_epochs} epochs: reconstruction "
                 f"{out['recon_loss'].item():.4f}, quantisation {out['quant_loss'].item():.4f}; "
                 f"kept epoch {best[1]} with {best[0]} of {len(items)} items on a shared prefix "
                 f"(k-means start: {init_collided})")

    def rebuild_codes(self) -> None:
        prefix, last_dist = self.tokenizer.encode_items(self.semantic[1:])
        moved = 0
        if self.cfg.overflow == "reassign":
            prefix, moved = reassign_overflow(prefix.cpu(), last_dist.cpu(),
                                              code_num=self.cfg.code_num)
        codes = assign_suffixes(prefix.cpu(), code_num=self.cfg.code_num,
                                strategy=self.cfg.collision)
        codes = self.procs.broadcast_(codes)  # processes must agree on the codes bit for bit
        self.table = CodeTable(codes, code_num=self.cfg.code_num).to(self.device)
        self.code_stats = {**self.table.stats(), "reassigned_items": moved}

    # ------------------------------------------------------------------ epochs
    def may_stop_after(self, epoch: int) -> bool:
        return self.epoch_kind(epoch) != "tokenizer"

    def epoch_kind(self, epoch: int) -> str:
        if self.cfg.mode == "tiger":
            return "tiger"
        if epoch < self.cfg.warmup_epochs:
            return "warmup"
        return "tokenizer" if epoch % self.cfg.cycle == 0 else "recommender"

    def batch_losses(self, hist, targets, kind: str, batch=None) -> dict[str, torch.Tensor]:
        """Losses of this process's rows; ``batch`` (a ``Batch``) knows the whole global batch,
        over whose items the VQ loss runs (None: these rows are the whole batch)."""
        cfg = self.cfg
        losses = {}
        if kind == "tokenizer":  # recommender frozen: its outputs need no graph
            with torch.no_grad(), self.autocast():
                out, targets, target_codes = training_outputs(self.model, self.table.codes,
                                                              hist, targets)
            # each item of the global batch once in the VQ loss, split over the processes and
            # scaled so that summing share × loss over them gives the global batch's mean
            share, everyone = (1.0, targets) if batch is None else (batch.share, batch.all_targets)
            uniq = torch.unique(everyone)
            uniq = uniq[uniq > 0]  # sequence windows mark unscored positions with 0
            part = self.procs.share(len(uniq))
            scale = (part.stop - part.start) / len(uniq) / share
            losses["vq"] = self.tokenizer(self.semantic[uniq[part]])["loss"] * scale
        else:
            with self.autocast():
                out, scored, target_codes = training_outputs(self.model, self.table.codes,
                                                             hist, targets)
            losses["code"] = self.objective(self.table, out["logits"], target_codes, hist,
                                            windows=targets)
            targets = scored
        if kind in ("tokenizer", "recommender"):
            with torch.set_grad_enabled(kind == "tokenizer"):
                item = self.tokenizer(self.semantic[targets])
                item_logits = self.tokenizer.code_logits(item["distances"])
            seq_logits = self.tokenizer.latent_logits(self.model.sia_adapter(out["pooled"]))
            losses["sia"] = sia_loss(item_logits, seq_logits)
            losses["psa"] = psa_loss(self.model.psa_adapter(out["bos_state"]), item["recon"],
                                     targets, tau=cfg.psa_tau, both=cfg.psa_both)
        weights = {"code": cfg.w_code, "vq": cfg.w_vq, "sia": cfg.w_sia, "psa": cfg.w_psa}
        losses["total"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    def run_epoch(self, epoch: int) -> str:
        kind = self.epoch_kind(epoch)
        train_tok = kind == "tokenizer"
        set_trainable(self.model, not train_tok)
        set_trainable(self.tokenizer, train_tok)
        self.model.train(not train_tok)
        self.tokenizer.train(train_tok)
        opt, sched = (self.opt_id, self.sched_id) if train_tok else (self.opt_rec, self.sched_rec)
        self.fit_epoch(epoch, kind, lambda hist, targets, batch:
                       self.batch_losses(hist, targets, kind, batch), opt, sched)
        if train_tok:
            self.rebuild_codes()
            # a tokenizer epoch that scatters items onto a few codes shows here first
            self.write_log({"epoch": epoch, "kind": "codes_rebuilt", "codes": self.code_stats})
            self.log(f"epoch {epoch}: codes rebuilt, {self.code_stats['colliding_items']} items "
                     f"on a shared prefix, codes used per level "
                     f"{self.code_stats['usage_per_level']}")
        return kind

    def state_objects(self) -> dict:
        return {"model": self.model, "tokenizer": self.tokenizer, "opt_rec": self.opt_rec,
                "sched_rec": self.sched_rec, "opt_id": self.opt_id, "sched_id": self.sched_id}

    def extra_state(self) -> dict:
        return {"codes": self.table.codes.cpu(), "code_stats": self.code_stats,
                "tokenizer_pretrain": getattr(self, "tokenizer_pretrain_info", None)}

    def load_extra_state(self, state: dict) -> None:
        self.table = CodeTable(state["codes"][1:], code_num=self.cfg.code_num).to(self.device)
        self.code_stats = dict(state["code_stats"])
        self.tokenizer_pretrain_info = state.get("tokenizer_pretrain")

    def checkpoint_info(self) -> dict:
        cfg = self.cfg
        return {"mode": cfg.mode, "codes": self.code_stats,
                "tokenizer_pretrain": getattr(self, "tokenizer_pretrain_info", None),
                "loss_weights": {"code": cfg.w_code, "vq": cfg.w_vq, "sia": cfg.w_sia,
                                 "psa": cfg.w_psa},
                "teacher": {"name": cfg.teacher, "weight": cfg.teacher_weight,
                            "temperature": cfg.teacher_temperature,
                            "exclude_history": self.teacher_exclude}}
