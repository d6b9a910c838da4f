"""What every training stage shares: the step loop of an epoch, validation by beam search,
best checkpoint by validation NDCG@10, early stopping, the test evaluation, the JSONL log.

A stage subclasses ``Stage`` (torchtune-style ``setup`` / ``train`` / ``cleanup``) and fills
in ``setup`` and ``run_epoch``; its config needs the fields used here (epochs, eval_every,
patience, beam, eval_batch_size, logprob, max_len, valid_users, progress).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import option
from .data import load_processed
from .evaluation import PROTOCOL, evaluate_generative
from .training import EarlyStopping


@dataclass
class EvalOptions:
    """Validation and selection options shared by the training stages' configs."""

    eval_every: int = option(1, "Validate every N epochs (and after the last).")
    patience: int = option(10, "Stop after this many validations without a better NDCG@10 (0 = never).")
    beam: int = option(20, "Beam size of evaluation.")
    eval_batch_size: int = option(128, "Users per beam-search batch.")
    valid_users: int = option(0, "Validate on a fixed random subset of this many users (0 = all); test always uses all.")
    logprob: Literal["full", "trie"] = option("full", "Beam scores (and GRPO log-probabilities): log-softmax over all codes (full) or renormalised over the trie's valid codes (trie).")
    progress: bool = option(True, "Show progress bars.")


class Stage:
    name = "stage"
    validate_first = False  # validate (and checkpoint) the starting model before training

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.output_dir)
        self.step = 0
        self.log_file = None

    # ---- hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def run_epoch(self, epoch: int) -> str:
        """Train one epoch; return its kind (shown in logs)."""
        raise NotImplementedError

    def checkpoint_info(self) -> dict:
        """Facts saved with each best checkpoint and copied into results.json."""
        return {}

    # ---- shared pieces -------------------------------------------------------------------
    def begin(self) -> None:
        """Seeds, device, processed data: the first lines of every ``setup``."""
        from accelerate import PartialState

        set_seed(self.cfg.seed)  # python, numpy and torch (and CUDA) generators
        self.device = PartialState().device
        self.data = load_processed(self.cfg.data_dir)

    def load_start(self, path) -> None:
        """Start from a checkpoint (strictly loaded) whose codes cover this dataset's items."""
        ckpt = load_checkpoint(path, device=self.device)
        self.model, self.tokenizer, self.table = ckpt["model"], ckpt["tokenizer"], ckpt["table"]
        self.tokenizer_args, self.source_info = ckpt["tokenizer_args"], ckpt["info"]
        if self.table.n_items != self.data.n_items:
            raise CheckpointError(f"{path} has codes for {self.table.n_items} items, "
                                  f"{self.cfg.data_dir} has {self.data.n_items}")
        self.tokenizer.requires_grad_(False).eval()

    def open_log(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.out / "log.jsonl", "a")

    def write_log(self, record: dict) -> None:
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()

    def fit_epoch(self, epoch: int, kind: str, batches, total: int, loss_fn, opt, sched) -> dict:
        """One pass over ``batches``: ``loss_fn(*batch)`` → dict of losses with "total"."""
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(batches, total=total, desc=f"epoch {epoch} ({kind})",
                   disable=not self.cfg.progress, leave=False)
        for batch in bar:
            losses = loss_fn(*batch)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            sched.step()
            self.step += 1
            values = {k: (v.item() if torch.is_tensor(v) else v) for k, v in losses.items()}
            self.write_log({"epoch": epoch, "step": self.step, "kind": kind, **values})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{values['total']:.4f}")
        self.last_epoch_losses = {k: v / max(1, n) for k, v in sums.items()}
        return self.last_epoch_losses

    def evaluate(self, split: str, max_users: int = 0) -> dict:
        return evaluate_generative(
            self.model, self.table, self.data.splits[split], max_len=self.cfg.max_len,
            beam=self.cfg.beam, batch_size=self.cfg.eval_batch_size, logprob=self.cfg.logprob,
            device=self.device, max_users=max_users, progress=self.cfg.progress)

    def export_model(self):
        """The model to checkpoint (a LoRA stage returns a merged copy)."""
        return self.model

    def save(self, name: str, info: dict) -> None:
        save_checkpoint(self.out / name, model=self.export_model(), tokenizer=self.tokenizer,
                        table=self.table, tokenizer_args=self.tokenizer_args, info=info)

    def train(self) -> dict:
        cfg = self.cfg
        start = time.perf_counter()
        stopper = EarlyStopping(cfg.patience)
        best_epoch = -1
        if self.validate_first:
            valid = self.evaluate("valid", cfg.valid_users)
            self.log(f"start (epoch -1): valid recall@10 {valid['recall@10']:.4f} "
                     f"ndcg@10 {valid['ndcg@10']:.4f}")
            self.write_log({"epoch": -1, "kind": "start", "valid": valid})
            stopper.update(valid["ndcg@10"])
            self.save("best", {"epoch": -1, "valid": valid, **self.checkpoint_info()})
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            kind = self.run_epoch(epoch)
            if (epoch + 1) % cfg.eval_every and epoch != cfg.epochs - 1:
                continue
            valid = self.evaluate("valid", cfg.valid_users)
            losses = " ".join(f"{k} {v:.4f}" for k, v in self.last_epoch_losses.items())
            self.log(f"epoch {epoch:3d} {kind:11s} {losses} | valid recall@10 "
                     f"{valid['recall@10']:.4f} ndcg@10 {valid['ndcg@10']:.4f} "
                     f"({time.perf_counter() - t0:.1f}s)")
            info = self.checkpoint_info()
            self.write_log({"epoch": epoch, "kind": kind, "valid": valid, **info})
            if stopper.update(valid["ndcg@10"]):
                best_epoch = epoch
                self.save("best", {"epoch": epoch, "valid": valid, **info})
            if stopper.stop:
                self.log(f"early stop: no better validation NDCG@10 in {cfg.patience} evaluations")
                break
        train_seconds = time.perf_counter() - start
        best = load_checkpoint(self.out / "best", device=self.device)
        self.model, self.tokenizer, self.table = best["model"], best["tokenizer"], best["table"]
        test = self.evaluate("test")
        results = {"stage": self.name, "best_epoch": best_epoch, "valid": best["info"]["valid"],
                   "test": test, "train_seconds": train_seconds,
                   "protocol": PROTOCOL.format(beam=cfg.beam, code_len=self.table.code_len),
                   **{k: v for k, v in best["info"].items() if k not in ("valid", "epoch")}}
        (self.out / "results.json").write_text(json.dumps(results, indent=2))
        self.log(f"{self.name} test ({results['protocol']}): " + " ".join(
            f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
            + f" | distinct top-1 {test['distinct_top1']} | {train_seconds:.0f}s")
        return results

    def cleanup(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
