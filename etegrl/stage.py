"""What every training stage shares: the step loop of an epoch, validation by beam search,
best checkpoint by validation NDCG@10, early stopping, the test evaluation (the JSONL log
and trackers: ``etegrl.steplog``).

A stage subclasses ``Stage`` (torchtune-style ``setup`` / ``train`` / ``cleanup``) and fills
in ``setup`` and ``run_epoch``; its config needs the fields used here (epochs, eval_every,
patience, beam, eval_batch_size, logprob, max_len, valid_users, progress: ``etegrl.options``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import set_seed

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .compare import with_start
from .data import exclude_history, item_counts, load_processed, write_topk
from .distributed import Processes, native_bf16, set_threads, use_bf16
from .evaluation import evaluate_generative, protocol
from .malloc import keep_freed_memory
from .metrics import most_popular
from .options import step_count
from .resume import load_state, rng_state, save_state, set_rng_state
from .steplog import StepLog, crossed
from .teacher import Teacher
from .training import EarlyStopping, clip_gradients


@dataclass
class Batch:
    """One training batch as ``Stage.epoch_batches`` hands it to a stage."""

    tensors: tuple  # this process's rows: histories, targets (and row ids where asked for)
    share: float  # this process's part of the global batch (1.0 in a single process)
    all_targets: torch.Tensor  # the whole global batch's targets (losses over its items)


class Stage:
    name = "stage"
    validate_first = False  # validate (and checkpoint) the starting model before training

    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.out = Path(cfg.output_dir)
        # filled by setup(): begin() the process, device and data; the stage's build() the
        # model, tokenizer and code table; its build_training() the training rows and optimiser
        self.procs: Processes | None = None
        self.device: torch.device | None = None
        self.data = None  # etegrl.data.Processed
        self.popular: torch.Tensor | None = None  # the 10 most popular training items
        self.exclude = False  # history items left out of the rankings
        self.teacher_exclude = False  # ... and out of a teacher's scores
        self.model = None  # ETEGRecModel (the trained one)
        self.tokenizer = None  # RQVAE
        self.table = None  # CodeTable: item ↔ codes, the trie
        self.tokenizer_args: dict = {}
        self.source_info: dict = {}  # the start checkpoint's info.json
        self.rows = None  # RowEpochs or SequenceEpochs
        self.teacher = None  # the config's Teacher (load_teacher), a scorer of every item
        self.opt = self.sched = None
        self.last_epoch_losses: dict[str, float] = {}
        self.step = 0
        self.steplog = StepLog()  # log.jsonl, trackers, epoch means, the logging window
        self.resume_state = None
        self.skip = 0  # batches of the current epoch already done before a resume
        self.stopper = EarlyStopping(cfg.patience)
        self.best_epoch = -1
        self.best_step = -1
        self.t_start = self.epoch_t0 = time.perf_counter()
        # counted in optimiser steps; a stage whose config has trl's names sets them in setup
        self.max_steps = 0  # stop after this many steps (0 = when the epochs end)
        self.eval_steps = 0  # validate every N steps instead of every eval_every epochs
        self.save_steps = 0  # also save the resumable state every N steps
        self.valid_step = -1  # step of the last validation

    # ---- hooks ------------------------------------------------------------------------
    def setup(self) -> None:
        """Seeds, device and data (``begin``), then the stage's models (``build``), then the
        log (a resumed run's is cut back to its saved state), then what training needs and may
        log (``build_training``): the hooks in this order for every stage."""
        self.begin()
        self.build()
        self.open_log()
        self.build_training()

    def build(self) -> None:
        """What the stage starts from: its checkpoint (``load_start``) or new modules, a
        teacher; nothing logged."""
        raise NotImplementedError

    def build_training(self) -> None:
        """Training rows, optimisers and schedules; anything that writes to the log."""
        raise NotImplementedError

    def run_epoch(self, epoch: int) -> str:
        """Train one epoch; return its kind (shown in logs)."""
        raise NotImplementedError

    def checkpoint_info(self) -> dict:
        """Facts saved with each best checkpoint and copied into results.json."""
        return {}

    def may_stop_after(self, epoch: int) -> bool:
        """Whether a time budget may end the run after this epoch (pretraining: not right
        after a tokenizer epoch, whose new codes the recommender has not trained on)."""
        return True

    def state_objects(self) -> dict:
        """What the resumable state holds by ``state_dict``: trained modules, optimisers,
        schedulers (the frozen tokenizer and reference come back from their checkpoints)."""
        return {"model": self.model, "opt": self.opt, "sched": self.sched}

    def extra_state(self) -> dict:
        """Further facts of the resumable state (a stage's own generators, rebuilt codes)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ---- shared pieces -------------------------------------------------------------------
    def begin(self) -> None:
        """Seeds, device, processed data: the first step of ``setup``."""
        set_seed(self.cfg.seed)  # python, numpy and torch (and CUDA) generators
        set_threads(self.cfg.threads)
        keep_freed_memory()
        self.procs = Processes()
        self.device = self.procs.device
        if not self.procs.is_main:
            self.log = lambda *args, **kwargs: None
        self.data = load_processed(self.cfg.data_dir)
        self.popular = most_popular(item_counts(self.data.splits, self.data.n_items), 10)
        self.exclude = exclude_history(self.cfg.exclude_history, self.data.splits)
        self.teacher_exclude = Teacher.excludes_history(self.cfg, self.exclude)
        self.resume_state = load_state(self.out)  # an interrupted run of this config
        if getattr(self.cfg, "bf16", False) is True and self.device.type == "cpu" and not native_bf16():
            self.log("warning: bf16=true on a CPU without native bf16 (AVX512-BF16 or AMX): "
                     "its matmuls are emulated and slower than fp32; set bf16=false or auto")

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
        """The JSONL log (main process only); a resumed run cuts it back to where its state
        was saved."""
        if self.procs.is_main:
            self.steplog.open(self.out, self.cfg, None if self.resume_state is None
                              else self.resume_state["log_offset"])

    def write_log(self, record: dict) -> None:
        self.steplog.write(record, self.step)

    def training_done(self) -> bool:
        """Early stopping has fired, or ``max_steps`` optimiser steps are done."""
        return self.stopper.stop or bool(self.max_steps and self.step >= self.max_steps)

    def epoch_batches(self, epoch: int, kind: str = "train"):
        """This epoch's training batches from ``self.rows``; a resumed epoch starts after the
        batches done before the kill. After each batch: a validation when ``eval_steps`` is due,
        the resumable state every ``save_state_every`` batches or ``save_steps`` steps; no
        batch once ``training_done``."""
        skip, self.skip = self.skip, 0
        if not skip:
            self.steplog.new_epoch()
        total, every = self.rows.batches_per_epoch(), self.cfg.save_state_every
        for i, batch in enumerate(self.rows.epoch(self.device, skip=skip), start=skip):
            if self.training_done():
                return
            n = len(batch[0])
            part = self.procs.share(n)  # all of it in one process
            before = self.step
            # the caller trains on it before the next
            yield Batch(tensors=tuple(x[part] for x in batch),
                        share=(part.stop - part.start) / n, all_targets=batch[1])
            if crossed(before, self.step, self.eval_steps):
                self.validate(epoch, kind)
            due = (every and (i + 1) % every == 0) or crossed(before, self.step, self.save_steps)
            if due and i + 1 < total:
                self.save_state(epoch, i + 1)

    def record(self, epoch: int, kind: str, values: dict) -> None:
        """One training batch's values into the epoch's means and the log (one record per
        ``logging_steps`` steps, and one at the end of each epoch: ``epoch_means``)."""
        self.steplog.add(epoch, kind, values, self.step)

    def load_teacher(self) -> None:
        """The config's teacher (``teacher``: none, sasrec or transitions), after ``begin``."""
        self.teacher = Teacher.for_config(self.cfg, self.data, device=self.device)

    @property
    def bf16_on(self) -> bool:
        """Whether the training passes run under bf16 autocast: the config's ``bf16`` (true,
        false or ``auto`` = where the device has native bf16) on this stage's device."""
        return use_bf16(getattr(self.cfg, "bf16", False), self.device)

    def autocast(self):
        """Context of the recommender's training forward passes: bf16 autocast when
        ``bf16_on``, else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_on)

    def progress_bar(self, batches, epoch: int, kind: str):
        return tqdm(batches, total=self.rows.batches_per_epoch(), initial=self.skip,
                    desc=f"epoch {epoch} ({kind})", leave=False,
                    disable=not self.cfg.progress or not self.procs.is_main)

    def fit_epoch(self, epoch: int, kind: str, loss_fn, opt, sched) -> dict:
        """One epoch of ``self.rows``: ``loss_fn(*rows, batch=batch)`` → dict of losses with
        "total" (``rows``: this process's tensors, or a micro-batch of them)."""
        bar = self.progress_bar(self.epoch_batches(epoch, kind), epoch, kind)
        micro = getattr(self.cfg, "gradient_accumulation_steps", 1)
        for batch in bar:
            opt.zero_grad(set_to_none=True)
            values = {}
            rows = batch.tensors
            n = len(rows[-1])  # a process can get no rows of a tiny last batch
            parts = [rows] if micro == 1 else [tuple(x[p] for x in rows) for p in
                                               torch.arange(n).tensor_split(micro) if len(p)]
            for part in parts if n else []:
                # micro-batches weighted by their rows: the gradient of the whole batch's mean
                weight = len(part[-1]) / n
                losses = loss_fn(*part, batch=batch)
                (losses["total"] * batch.share * weight).backward()
                for k, v in losses.items():
                    values[k] = values.get(k, 0.0) + weight * (v.item() if torch.is_tensor(v)
                                                               else v)
            norm = self.optimizer_step(opt, sched)
            if norm is not None:
                values["grad_norm"] = norm
            values = self.procs.weighted_sum(batch.share, values)
            self.record(epoch, kind, values)
            bar.set_postfix(loss=f"{values['total']:.4f}")
        return self.epoch_means()

    def optimizer_step(self, opt, sched) -> float | None:
        """The one optimiser step of every stage: gradients summed over processes, clipped at
        ``max_grad_norm`` (→ the norm before clipping, None when off), step, schedule, count."""
        params = [p for group in opt.param_groups for p in group["params"]]
        self.procs.sync_gradients(params)
        norm = clip_gradients(params, getattr(self.cfg, "max_grad_norm", 0.0))
        opt.step()
        sched.step()
        self.step += 1
        return norm

    def epoch_means(self, keep=None) -> dict:
        self.steplog.flush(self.step)
        self.last_epoch_losses = self.steplog.epoch_means(keep)
        return self.last_epoch_losses

    # ---- resumable state ------------------------------------------------------------------
    def save_state(self, epoch: int, batches_done: int) -> None:
        """Everything needed to go on from (epoch, batches_done) as if never interrupted.
        Processes hold the same weights, optimiser states and generators: the main one's do."""
        if not self.procs.is_main:
            self.procs.barrier()
            return
        save_state(self.out, {
            "position": [epoch, batches_done], "step": self.step,
            "stopper": [self.stopper.best, self.stopper.bad], "best_epoch": self.best_epoch,
            "best_step": self.best_step, "valid_step": self.valid_step,
            "elapsed": time.perf_counter() - self.t_start, **self.steplog.state_dict(),
            "rng": rng_state(), "rows": self.rows.state_dict(),
            "objects": {k: v.state_dict() for k, v in self.state_objects().items()},
            "extra": self.extra_state()})
        self.procs.barrier()

    def restore(self, state: dict) -> tuple[int, int]:
        """Load a saved state (strictly); → (epoch, batches done in it)."""
        epoch, done = state["position"]
        try:
            for name, obj in self.state_objects().items():
                obj.load_state_dict(state["objects"][name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{self.out / 'resume'}: does not match this run's model or "
                                  f"optimiser ({err}); set overwrite=true to start again") from None
        self.load_extra_state(state["extra"])
        self.rows.load_state_dict(state["rows"], mid_epoch=done > 0)
        self.step, self.best_epoch = state["step"], state["best_epoch"]
        self.best_step = state.get("best_step", -1)  # states saved before step-based options
        self.valid_step = state.get("valid_step", -1)
        self.steplog.load_state_dict(state, self.step)
        self.stopper.best, self.stopper.bad = state["stopper"]
        self.t_start -= state["elapsed"]
        set_rng_state(state["rng"])
        return epoch, done

    def evaluate(self, split: str, max_users: int = 0, topk_file: Path | None = None) -> dict:
        """Metrics of a split; ``topk_file``: also write its ranked lists there (main process)."""
        metrics, rows, lists = evaluate_generative(
            self.model, self.table, self.data.splits[split], max_len=self.cfg.max_len,
            beam=self.cfg.beam, batch_size=self.cfg.eval_batch_size, logprob=self.cfg.logprob,
            device=self.device, max_users=max_users, progress=self.cfg.progress and self.procs.is_main,
            procs=self.procs, popular=self.popular, return_lists=True,
            exclude_history=self.exclude)
        if topk_file is not None and self.procs.is_main:
            users, targets = self.data.splits[split]["user"], self.data.splits[split]["target"]
            write_topk(topk_file, [users[i] for i in rows], [targets[i] for i in rows],
                       lists.tolist())
        return metrics

    def export_model(self):
        """The model to checkpoint (a LoRA stage returns a merged copy)."""
        return self.model

    def save(self, name: str, info: dict) -> None:
        if self.procs.is_main:
            save_checkpoint(self.out / name, model=self.export_model(), tokenizer=self.tokenizer,
                            table=self.table, tokenizer_args=self.tokenizer_args, info=info)
        self.procs.barrier()

    def train(self) -> dict:
        cfg = self.cfg
        self.t_start = self.epoch_t0 = time.perf_counter()
        self.stopper = EarlyStopping(cfg.patience)
        self.best_epoch = self.best_step = -1
        first_epoch = 0
        if self.resume_state is not None:
            first_epoch, self.skip = self.restore(self.resume_state)
            self.log(f"resuming {self.out}: epoch {first_epoch}, {self.skip} batches done, "
                     f"step {self.step}")
        for obj in self.state_objects().values():  # every process starts from the same weights
            if isinstance(obj, torch.nn.Module):
                self.procs.broadcast_module(obj)
        if self.resume_state is None and self.validate_first:
            valid = self.evaluate("valid", cfg.valid_users)
            self.log(f"start (epoch -1): valid recall@10 {valid['recall@10']:.4f} "
                     f"ndcg@10 {valid['ndcg@10']:.4f}")
            self.write_log({"epoch": -1, "after_step": self.step, "kind": "start", "valid": valid})
            self.valid_step = self.step
            self.stopper.update(valid["ndcg@10"])
            self.save("best", {"epoch": -1, "valid": valid, **self.checkpoint_info()})
        epochs = self.planned_epochs()
        for epoch in range(first_epoch, epochs):
            if self.training_done():
                break
            self.epoch_t0 = time.perf_counter()
            kind = self.run_epoch(epoch)
            spent = (cfg.time_budget > 0 and time.perf_counter() - self.t_start >= cfg.time_budget
                     and self.may_stop_after(epoch))
            last = epoch == epochs - 1 or spent or self.training_done()
            if self.eval_steps:  # validations came with the steps; one more after the last
                due = last and self.valid_step != self.step
            else:
                due = (epoch + 1) % cfg.eval_every == 0 or last
            if due:
                self.validate(epoch, kind)
            self.save_state(epoch + 1, 0)
            if spent and epoch < epochs - 1:
                self.log(f"time budget of {cfg.time_budget:g} s spent after epoch {epoch}: "
                         f"training stops")
                self.write_log({"epoch": epoch, "kind": "budget_spent",
                                "seconds": time.perf_counter() - self.t_start})
                break
        train_seconds = time.perf_counter() - self.t_start
        best = load_checkpoint(self.out / "best", device=self.device)
        self.model, self.tokenizer, self.table = best["model"], best["tokenizer"], best["table"]
        test = self.evaluate("test", topk_file=self.out / "test_topk.jsonl")
        results = {"stage": self.name, "best_epoch": self.best_epoch, "best_step": self.best_step,
                   "steps": self.step, "device": str(self.device),
                   "bf16": self.bf16_on, "valid": best["info"]["valid"],
                   "test": test, "train_seconds": train_seconds,
                   "protocol": protocol(beam=cfg.beam, code_len=self.table.code_len,
                                        exclude=self.exclude),
                   **{k: v for k, v in best["info"].items() if k not in ("valid", "epoch", "step")}}
        if self.procs.is_main:
            self.steplog.trackers.log({"test": test}, step=self.step)
            paired = with_start(getattr(cfg, "checkpoint", ""), self.out / "test_topk.jsonl",
                                self.log)
            if paired:
                results["paired_vs_start"] = paired
            (self.out / "results.json").write_text(json.dumps(results, indent=2))
        self.log(f"{self.name} test ({results['protocol']}): " + " ".join(
            f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
            + f" | distinct top-1 {test['distinct_top1']} | {train_seconds:.0f}s")
        return results

    def plan_steps(self, total: int) -> int:
        """trl's step options of the config (``StepOptions``; absent = off) for a run of
        ``total`` optimiser steps by its epochs → the steps it will run (``max_steps`` wins)."""
        cfg = self.cfg
        if getattr(cfg, "max_steps", -1) > 0:
            total = self.max_steps = cfg.max_steps
        self.steplog.logging_steps = step_count(getattr(cfg, "logging_steps", 1), total) or 1
        self.eval_steps = step_count(getattr(cfg, "eval_steps", 0), total)
        self.save_steps = step_count(getattr(cfg, "save_steps", 0), total)
        return total

    def planned_epochs(self) -> int:
        """Epochs the loop may run: the config's, or with ``max_steps`` as many as it needs
        (the run then ends mid-epoch)."""
        if not self.max_steps:
            return self.cfg.epochs
        per_epoch = max(1, self.rows.batches_per_epoch() * self.steps_per_batch())
        return -(-self.max_steps // per_epoch)

    def steps_per_batch(self) -> int:
        """Optimiser steps per training batch (GRPO: ``num_iterations``)."""
        return 1

    def validate(self, epoch: int, kind: str) -> None:
        """Validation NDCG@10 → log, early stopping, the best checkpoint."""
        cfg = self.cfg
        valid = self.evaluate("valid", cfg.valid_users)
        self.valid_step = self.step
        at = f"step {self.step:5d}" if self.eval_steps else f"epoch {epoch:3d} {kind:11s}"
        losses = ("" if self.eval_steps else
                  " ".join(f"{k} {v:.4f}" for k, v in self.last_epoch_losses.items()) + " | ")
        self.log(f"{at} {losses}valid recall@10 {valid['recall@10']:.4f} ndcg@10 "
                 f"{valid['ndcg@10']:.4f} ({time.perf_counter() - self.epoch_t0:.1f}s)")
        info = self.checkpoint_info()
        # "after_step", not "step": a record with "step" is a training step's
        self.write_log({"epoch": epoch, "after_step": self.step, "kind": kind, "valid": valid,
                        **info})
        better = self.stopper.update(valid["ndcg@10"])
        if better or cfg.select == "last":  # last: every validation replaces best/
            self.best_epoch, self.best_step = epoch, self.step
            self.save("best", {"epoch": epoch, "step": self.step, "valid": valid, **info})
        if self.stopper.stop:
            self.log(f"early stop: no better validation NDCG@10 in {cfg.patience} evaluations")
        self.epoch_t0 = time.perf_counter()

    def cleanup(self) -> None:
        self.steplog.close()
