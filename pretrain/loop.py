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

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from etegrl.checkpoint import load_checkpoint, save_checkpoint
from etegrl.codes import CodeTable, assign_suffixes, reassign_overflow
from etegrl.data import load_processed
from etegrl.embeddings import load_embedding
from etegrl.evaluation import PROTOCOL, evaluate_generative
from etegrl.losses import code_loss, psa_loss, sia_loss
from etegrl.model import ETEGRecConfig, ETEGRecModel, history_tokens
from etegrl.tokenizer import RQVAE
from etegrl.training import EarlyStopping, RowEpochs, adamw_cosine

from .config import PretrainConfig


def set_trainable(module: torch.nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class PretrainStage:
    def __init__(self, cfg: PretrainConfig, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.output_dir)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        from accelerate import PartialState

        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.device = PartialState().device
        self.data = load_processed(cfg.data_dir)
        self.semantic = load_embedding(Path(cfg.data_dir) / "embeddings" / "semantic.safetensors",
                                       n_items=self.data.n_items).to(self.device)
        self.tokenizer_args = dict(
            semantic_dim=self.semantic.shape[1], hidden=list(cfg.tok_hidden), e_dim=cfg.e_dim,
            levels=cfg.levels, code_num=cfg.code_num, beta=cfg.beta, dropout=cfg.tok_dropout,
            quantize_mode=cfg.quantize_mode, gumbel_tau=cfg.gumbel_tau, logit_sign=cfg.logit_sign)
        self.tokenizer = RQVAE(**self.tokenizer_args).to(self.device)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.out / "log.jsonl", "a")
        self.pretrain_tokenizer()
        self.rebuild_codes()
        self.model = ETEGRecModel(ETEGRecConfig(
            code_num=cfg.code_num, code_len=cfg.levels + 1, d_model=cfg.d_model, d_ff=cfg.d_ff,
            num_layers=cfg.num_layers, num_decoder_layers=cfg.num_decoder_layers,
            num_heads=cfg.num_heads, d_kv=cfg.d_kv, dropout_rate=cfg.dropout_rate,
            e_dim=cfg.e_dim, semantic_dim=self.semantic.shape[1])).to(self.device)
        self.rows = RowEpochs(self.data.splits["train"], batch_size=cfg.batch_size,
                              max_len=cfg.max_len, rows_per_user=cfg.rows_per_user, seed=cfg.seed)
        kinds = [self.epoch_kind(e) for e in range(cfg.epochs)]
        per_epoch = self.rows.batches_per_epoch()
        self.opt_rec, self.sched_rec = adamw_cosine(
            self.model.parameters(), lr=cfg.lr_rec, weight_decay=cfg.weight_decay,
            total_steps=per_epoch * sum(k != "tokenizer" for k in kinds),
            warmup_ratio=cfg.warmup_ratio)
        self.opt_id, self.sched_id = adamw_cosine(
            self.tokenizer.parameters(), lr=cfg.lr_id, weight_decay=cfg.weight_decay,
            total_steps=per_epoch * max(1, sum(k == "tokenizer" for k in kinds)),
            warmup_ratio=cfg.warmup_ratio)
        self.step = 0

    def pretrain_tokenizer(self) -> None:
        """k-means initialisation, then the RQ-VAE alone on the item embeddings (TIGER's stage 1;
        the official ETEGRec also starts from a pretrained tokenizer)."""
        cfg, items = self.cfg, self.semantic[1:]
        self.tokenizer.init_codebooks(items, seed=cfg.seed)
        if cfg.tokenizer_pretrain_epochs <= 0:
            return
        opt = torch.optim.AdamW(self.tokenizer.parameters(), lr=cfg.tokenizer_pretrain_lr)
        g = torch.Generator().manual_seed(cfg.seed)
        self.tokenizer.train()
        bar = tqdm(range(cfg.tokenizer_pretrain_epochs), desc="tokenizer pretraining",
                   disable=not cfg.progress, leave=False)
        for epoch in bar:
            order = torch.randperm(len(items), generator=g).to(self.device)
            for i in range(0, len(items), cfg.tokenizer_pretrain_batch_size):
                out = self.tokenizer(items[order[i:i + cfg.tokenizer_pretrain_batch_size]])
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
            if epoch % 50 == 0 or epoch == cfg.tokenizer_pretrain_epochs - 1:
                self.write_log({"stage": "tokenizer_pretrain", "epoch": epoch,
                                "recon": out["recon_loss"].item(), "quant": out["quant_loss"].item()})
        self.log(f"tokenizer pretrained {cfg.tokenizer_pretrain_epochs} epochs: reconstruction "
                 f"{out['recon_loss'].item():.4f}, quantisation {out['quant_loss'].item():.4f}")

    def rebuild_codes(self) -> None:
        prefix, last_dist = self.tokenizer.encode_items(self.semantic[1:])
        moved = 0
        if self.cfg.overflow == "reassign":
            prefix, moved = reassign_overflow(prefix.cpu(), last_dist.cpu(),
                                              code_num=self.cfg.code_num)
        codes = assign_suffixes(prefix.cpu(), code_num=self.cfg.code_num,
                                strategy=self.cfg.collision)
        self.table = CodeTable(codes, code_num=self.cfg.code_num).to(self.device)
        self.code_stats = {**self.table.stats(), "reassigned_items": moved}

    # ------------------------------------------------------------------ epochs
    def epoch_kind(self, epoch: int) -> str:
        if self.cfg.mode == "tiger":
            return "tiger"
        if epoch < self.cfg.warmup_epochs:
            return "warmup"
        return "tokenizer" if epoch % self.cfg.cycle == 0 else "recommender"

    def batch_losses(self, hist, targets, kind: str) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        tokens, mask = history_tokens(hist, self.table.codes)
        target_codes = self.table.codes[targets]
        losses = {}
        if kind == "tokenizer":  # recommender frozen: its outputs need no graph
            with torch.no_grad():
                out = self.model(tokens, mask, target_codes)
            uniq = torch.unique(targets)  # each target item once in the VQ loss
            losses["vq"] = self.tokenizer(self.semantic[uniq])["loss"]
        else:
            out = self.model(tokens, mask, target_codes)
            losses["code"] = code_loss(out["logits"], target_codes)
        if kind in ("tokenizer", "recommender"):
            with torch.set_grad_enabled(kind == "tokenizer"):
                item = self.tokenizer(self.semantic[targets])
                item_logits = self.tokenizer.code_logits(item["distances"])
            seq_logits = self.tokenizer.latent_logits(self.model.sia_adapter(out["pooled"]))
            losses["sia"] = sia_loss(item_logits, seq_logits)
            losses["psa"] = psa_loss(self.model.psa_adapter(out["bos_state"]), item["recon"],
                                     targets, tau=cfg.psa_tau)
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
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(self.rows.epoch(self.device), total=self.rows.batches_per_epoch(),
                   desc=f"epoch {epoch} ({kind})", disable=not self.cfg.progress, leave=False)
        for hist, targets in bar:
            losses = self.batch_losses(hist, targets, kind)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            sched.step()
            self.step += 1
            values = {k: v.item() for k, v in losses.items()}
            self.write_log({"epoch": epoch, "step": self.step, "kind": kind, **values})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{values['total']:.4f}")
        if train_tok:
            self.rebuild_codes()
        self.last_epoch_losses = {k: v / max(1, n) for k, v in sums.items()}
        return kind

    # ------------------------------------------------------------------ train / evaluate
    def evaluate(self, split: str, max_users: int = 0) -> dict:
        return evaluate_generative(
            self.model, self.table, self.data.splits[split], max_len=self.cfg.max_len,
            beam=self.cfg.beam, batch_size=self.cfg.eval_batch_size, logprob=self.cfg.logprob,
            device=self.device, max_users=max_users, progress=self.cfg.progress)

    def save(self, name: str, info: dict) -> None:
        save_checkpoint(self.out / name, model=self.model, tokenizer=self.tokenizer,
                        table=self.table, tokenizer_args=self.tokenizer_args, info=info)

    def train(self) -> dict:
        cfg = self.cfg
        start = time.perf_counter()
        stopper = EarlyStopping(cfg.patience)
        best_epoch = -1
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            kind = self.run_epoch(epoch)
            last = epoch == cfg.epochs - 1
            if (epoch + 1) % cfg.eval_every and not last:
                continue
            valid = self.evaluate("valid", cfg.valid_users)
            losses = " ".join(f"{k} {v:.4f}" for k, v in self.last_epoch_losses.items())
            self.log(f"epoch {epoch:3d} {kind:11s} {losses} | valid recall@10 "
                     f"{valid['recall@10']:.4f} ndcg@10 {valid['ndcg@10']:.4f} "
                     f"({time.perf_counter() - t0:.1f}s)")
            self.write_log({"epoch": epoch, "kind": kind, "valid": valid,
                            "codes": self.code_stats})
            if stopper.update(valid["ndcg@10"]):
                best_epoch = epoch
                self.save("best", {"epoch": epoch, "valid": valid, "codes": self.code_stats,
                                   "mode": cfg.mode})
            if stopper.stop:
                self.log(f"early stop: no better validation NDCG@10 in {cfg.patience} evaluations")
                break
        train_seconds = time.perf_counter() - start
        best = load_checkpoint(self.out / "best", device=self.device)
        self.model, self.tokenizer, self.table = best["model"], best["tokenizer"], best["table"]
        test = self.evaluate("test")
        results = {"mode": cfg.mode, "best_epoch": best_epoch, "valid": best["info"]["valid"],
                   "test": test, "codes": best["info"]["codes"], "train_seconds": train_seconds,
                   "protocol": PROTOCOL.format(beam=cfg.beam, code_len=self.table.code_len),
                   "loss_weights": {"code": cfg.w_code, "vq": cfg.w_vq, "sia": cfg.w_sia,
                                    "psa": cfg.w_psa}}
        (self.out / "results.json").write_text(json.dumps(results, indent=2))
        self.log(f"test ({results['protocol']}): " + " ".join(
            f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
            + f" | distinct top-1 {test['distinct_top1']} | {train_seconds:.0f}s")
        return results

    def write_log(self, record: dict) -> None:
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def cleanup(self) -> None:
        if getattr(self, "log_file", None):
            self.log_file.close()
