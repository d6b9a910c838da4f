"""GRPO on the finetuned recommender.

Per step: a batch of training prompts (history → target); each history is encoded once; a
group of G distinct valid items per user (trie beam search, or sampling); rewards from the
configured functions; group-normalised advantages; per-code log-probabilities of the policy
(the encoder output of each user shared by its G members), the old policy (stored when
num_iterations > 1; otherwise the ratio is exactly 1) and the frozen reference; trl's clipped
surrogate with the KL penalty; ``num_iterations`` updates per batch. Dropout is off in policy
and reference; tokenizer and codes are frozen. A group is built, scored and updated inside one
process, so groups never straddle processes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import get_scheduler
from trl.trainer.utils import disable_dropout_in_model, nanstd

import rewards
from etegrl.data import future_items
from etegrl.generation import beam_search, sample_items
from etegrl.grpo import ItemBaseline, code_logprobs, exact_kl, group_advantages, grpo_loss
from etegrl.lora import apply_lora, merged_copy
from etegrl.model import history_tokens, training_outputs
from etegrl.objective import CodeObjective
from etegrl.stage import Stage
from etegrl.teacher import Teacher, add_teacher_items, member_facts
from etegrl.training import EndlessBatches, RowEpochs, SequenceEpochs

from .config import RLConfig


@dataclass
class Rollout:
    """One micro-batch of groups, everything its updates need (flattened to users × G rows)."""

    tokens: torch.Tensor  # history tokens and mask
    mask: torch.Tensor
    codes: torch.Tensor  # (users, G, code_len)
    flat: torch.Tensor  # (users·G, code_len)
    valid: torch.Tensor  # (users·G,) a member exists (groups may be short)
    advantages: torch.Tensor  # (users·G,)
    allowed: torch.Tensor | None  # trie masks (logprob=trie)
    encoded: torch.Tensor | None  # the policy's encoder output with its graph (first update)
    ref_logits: torch.Tensor | None  # kl_estimator=exact
    ref_logps: torch.Tensor | None
    old_logps: torch.Tensor | None  # num_iterations > 1
    target_codes: torch.Tensor | None = None  # (users, code_len) the true items (sft_weight)
    target_scores: torch.Tensor | None = None  # the teacher's scores of these users
    stats: dict = field(default_factory=dict)  # rewards, hit rate, zero-std share


class RLStage(Stage):
    name = "rl"
    cfg: RLConfig
    validate_first = True  # the finetuned policy is the bar: best stays it unless RL beats it

    def build(self) -> None:
        cfg = self.cfg
        self.load_start(cfg.checkpoint)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.ref = None
        if cfg.beta != 0.0 and not cfg.control:
            self.ref = copy.deepcopy(self.model).requires_grad_(False).eval()
            disable_dropout_in_model(self.ref)
        disable_dropout_in_model(self.model)
        self.peft = None
        if cfg.use_lora:
            self.peft = apply_lora(self.model, r=cfg.lora_r, alpha=cfg.lora_alpha,
                                   dropout=cfg.lora_dropout, targets=cfg.lora_targets)
        self.load_teacher()
        # the rewards' scorer: the teacher, or another one for the rewards alone
        self.reward_scorer = self.teacher
        if cfg.reward_teacher != "teacher":
            self.reward_scorer = Teacher.for_config(cfg, self.data, device=self.device,
                                                    kind=cfg.reward_teacher)
        # the sft term: the finetune loss, with the teacher's code targets (sft_teacher_weight)
        self.sft_objective = CodeObjective(trie=cfg.logprob == "trie", teacher=self.teacher,
                                           weight=cfg.sft_teacher_weight,
                                           exclude=self.teacher_exclude)
        self.reward_fns = [rewards.load_reward(s) for s in cfg.reward_funcs]
        self.reward_weights = cfg.reward_weights or [1.0] * len(self.reward_fns)
        self.needs_policy_logprob = any(getattr(fn, "uses_policy_logprob", False)
                                        for fn in self.reward_fns)
        counts = np.bincount(np.asarray(self.data.splits["train"]["target"]),
                             minlength=self.data.n_items + 1)
        self.popularity = torch.as_tensor(counts)
        # trl's per_device_train_batch_size: each process gets users_per_step users per
        # micro-batch, gradient_accumulation_steps micro-batches per optimiser step
        self.rows = RowEpochs(self.data.splits["train"],
                              batch_size=cfg.users_per_step * self.procs.world
                              * cfg.gradient_accumulation_steps
                              * (cfg.dynamic_sampling_draws if cfg.dynamic_sampling else 1),
                              max_len=cfg.max_len, rows_per_user=cfg.rows_per_user, seed=cfg.seed,
                              recent=cfg.prompt_rows == "recent",
                              with_rows=cfg.future_items > 0 or self.leaves_out)
        self.future = future_items(self.data.splits, cfg.future_items) if cfg.future_items else None
        # a transitions scorer leaves each prompt's own pairs out: its target and the training
        # items after it, as far as the scorer's window reaches
        self.own_future = (future_items(self.data.splits, cfg.transition_window - 1)
                           if self.leaves_out else None)
        self.item_baseline = (ItemBaseline(self.data.n_items, cfg.item_baseline)
                              if cfg.item_baseline else None)
        # sft_rows=sequences: the sft term on the windows a finetune control would train on,
        # one batch per optimiser step, passes chained across the rl epochs
        self.sft_windows = None
        if cfg.sft_rows == "sequences":
            if not self.model.config.causal_encoder:
                raise ValueError("sft_rows=sequences needs a recommender with "
                                 "causal_encoder=true (set it in pretraining)")
            self.sft_windows = EndlessBatches(SequenceEpochs(
                self.data.splits["train_seq"], window=cfg.max_len, seed=cfg.seed,
                batch_size=cfg.sft_batch_size or (cfg.users_per_step * self.procs.world
                                                  * cfg.gradient_accumulation_steps),
                rows_per_user=cfg.rows_per_user), self.device)

    def build_training(self) -> None:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        total = self.plan_steps(self.rows.batches_per_epoch() * cfg.epochs * cfg.num_iterations)
        # TrainingArguments' warmup_steps: a count of steps, or a share of them when < 1
        warmup = cfg.warmup_steps if cfg.warmup_steps >= 1 else cfg.warmup_steps * total
        self.sched = get_scheduler(cfg.lr_scheduler_type, self.opt, num_warmup_steps=int(warmup),
                                   num_training_steps=max(1, total))

    # ------------------------------------------------------------------ groups and rewards
    def make_groups(self, hist: torch.Tensor, targets: torch.Tensor, encoded=None,
                    teacher_scores: torch.Tensor | None = None):
        cfg, g = self.cfg, self.cfg.num_generations
        beams = beam_search(self.model, self.table, hist, beam=g, logprob=cfg.logprob,
                            encoded=encoded, exclude=hist if self.exclude else None,
                            first_codes=cfg.group_first_codes)
        items = beams["items"]
        if cfg.group_source == "sampling":
            drawn = sample_items(self.model, self.table, hist, n=4 * g,
                                 temperature=cfg.temperature, generator=self.generator,
                                 encoded=encoded)["items"]
            rows = []
            for sampled, beam in zip(drawn.tolist(), items.tolist()):
                distinct = list(dict.fromkeys(i for i in sampled if i > 0))[:g]
                distinct += [i for i in beam if i > 0 and i not in distinct][:g - len(distinct)]
                rows.append(distinct + [0] * (g - len(distinct)))
            items = torch.tensor(rows, device=hist.device)
        if cfg.teacher_items:  # what the policy would not find: the teacher's best items
            items = add_teacher_items(items, teacher_scores, cfg.teacher_items)
        if cfg.inject_target:
            missing = ~(items == targets.unsqueeze(1)).any(1)
            items[missing, -1] = targets[missing]
        return items, self.table.codes[items]

    @property
    def leaves_out(self) -> bool:
        """Whether a scorer in use (the teacher or the rewards') is a transitions teacher that
        leaves a prompt's own pairs out of its counts."""
        return any(getattr(t, "leave_out", False) for t in (self.teacher, self.reward_scorer))

    def prompt_future(self, targets, rows=None):
        """``[B, F]``: each prompt's target, then (with its training row) the user's next
        training items — what a transitions scorer leaves out; None for other scorers."""
        if not self.leaves_out:
            return None
        if rows is None or self.own_future is None:
            return targets[:, None]
        ahead = [self.own_future[r] for r in rows.tolist()]
        width = max(map(len, ahead), default=0)
        ahead = torch.tensor([a + [0] * (width - len(a)) for a in ahead],
                             dtype=targets.dtype).reshape(len(targets), width)
        return torch.cat([targets[:, None], ahead.to(targets.device)], 1)

    def scorer_scores(self, scorer, hist, future):
        """A scorer's scores of these histories (``teacher_exclude``), the prompts' own future
        left out where there is one to leave out."""
        if future is None:
            return scorer.scores(hist, self.teacher_exclude)
        return scorer.scores(hist, self.teacher_exclude, future=future)

    def group_rewards(self, hist, targets, items, codes, teacher_scores=None, rows=None,
                      policy_logps=None):
        g = items.shape[1]
        flat_items = items.reshape(-1).tolist()
        prompts = [[i for i in h if i] for h in hist.tolist() for _ in range(g)]
        kwargs = {
            "target": targets.repeat_interleave(g).tolist(),
            "target_codes": self.table.codes[targets].repeat_interleave(g, 0).tolist(),
            "rank": list(range(g)) * len(targets),
            "group_items": [row for row in items.tolist() for _ in range(g)],
            "history": prompts, "popularity": self.popularity, "code_len": self.table.code_len,
        }
        if rows is not None and self.future is not None:  # the next training items after each target
            kwargs["future"] = [self.future[r] for r in rows.tolist() for _ in range(g)]
            kwargs["future_discount"] = self.cfg.future_discount
        if teacher_scores is not None:  # teacher_rank, teacher_logprob, teacher_first_code_rank
            kwargs.update(member_facts(teacher_scores, items, self.table.codes[:, 0],
                                       self.table.code_num))
        if policy_logps is not None:  # each member's log-probability, summed over its codes
            kwargs["policy_logprob"] = policy_logps.sum(-1).tolist()
        totals, per_fn = rewards.score(self.reward_fns, self.reward_weights, prompts, flat_items,
                                       codes.reshape(-1, codes.shape[-1]).tolist(),
                                       timeout=self.cfg.reward_timeout, **kwargs)
        r = torch.tensor(totals, dtype=torch.float32, device=items.device).reshape(items.shape)
        r = torch.where(items > 0, r, torch.full_like(r, float("nan")))  # no item: no reward
        stats = {}
        for name, values in per_fn.items():
            v = torch.tensor([np.nan if x is None else x for x in values], dtype=torch.float32)
            stats[f"reward/{name}/mean"] = float(v.nanmean())
            stats[f"reward/{name}/std"] = float(v[~v.isnan()].std()) if (~v.isnan()).sum() > 1 else 0.0
        return r, stats

    # ------------------------------------------------------------------ log-probabilities
    def logits_for(self, model, tokens, mask, codes, encoded=None):
        """Code logits of every group member; per user once: the encoder (or ``encoded``, its
        output), the decoder's cross-attention keys/values and its first step
        (``ETEGRecModel.group_logits``)."""
        with self.autocast():
            logits = model.group_logits(tokens, mask, codes, encoded=encoded)
        return logits, codes.reshape(-1, codes.shape[-1])

    @torch.no_grad()
    def policy_logprobs(self, tokens, mask, codes, encoded, flat, allowed) -> torch.Tensor:
        """Per-code log-probabilities of the group members under the current policy."""
        logits, _ = self.logits_for(self.model, tokens, mask, codes, encoded)
        return code_logprobs(logits, flat, allowed)

    def rollout(self, hist, targets, rows=None, graph: bool = True) -> Rollout:
        """Groups, rewards and advantages of these users, with the reference's (and, for
        ``num_iterations`` > 1, the old policy's) log-probabilities. The policy's encoder output
        serves the groups and, with ``graph``, keeps its graph for the first update."""
        cfg = self.cfg
        tokens, mask = history_tokens(hist, self.table.codes)
        encoded = None
        if not cfg.bf16:  # under bf16 the groups keep an fp32 encoder pass of their own
            with torch.set_grad_enabled(graph):
                encoded = self.model.encode(tokens, mask)
        shared = None if encoded is None else encoded.detach()
        future = self.prompt_future(targets, rows)
        scores = (None if self.reward_scorer is None
                  else self.scorer_scores(self.reward_scorer, hist, future))
        # the anchor's teacher scores of these users (sft on the prompts' true items)
        anchor_scores = scores
        if self.reward_scorer is not self.teacher:
            anchor_scores = (self.scorer_scores(self.teacher, hist, future)
                             if self.teacher is not None and cfg.sft_weight
                             and self.sft_windows is None else None)
        items, codes = self.make_groups(hist, targets, shared, scores)
        flat = codes.reshape(-1, codes.shape[-1])
        allowed = None
        if cfg.logprob == "trie":
            allowed = torch.stack([self.table.allowed(flat[:, :t])
                                   for t in range(flat.shape[1])], 1)
        # the log-probabilities of the policy that built the groups, for reward functions with
        # uses_policy_logprob (and, below, as the old policy of later iterations)
        policy_logps = None
        if self.needs_policy_logprob:
            policy_logps = self.policy_logprobs(tokens, mask, codes, shared, flat, allowed)
        r, stats = self.group_rewards(hist, targets, items, codes, scores, rows, policy_logps)
        spread = nanstd(r, dim=1) > 1e-8  # groups with a signal (NaN: fewer than 2 members)
        stats["frac_reward_zero_std"] = 1.0 - spread.float().mean().item()
        stats["reward"] = float(r.nanmean())
        stats["group_hit_rate"] = (items == targets.unsqueeze(1)).any(1).float().mean().item()
        # groups holding a member on the true item's first code (where most lists miss)
        stats["group_first_code_rate"] = ((codes[..., 0] == self.table.codes[targets, :1])
                                          & (items > 0)).any(1).float().mean().item()
        if cfg.dynamic_sampling:  # the first groups with reward spread, as many as a step holds
            keep = spread.nonzero().squeeze(1)[:-(-len(targets) // cfg.dynamic_sampling_draws)]
            stats["kept_groups"] = len(keep) / len(targets)
            tokens, mask, targets = tokens[keep], mask[keep], targets[keep]
            items, codes, r = items[keep], codes[keep], r[keep]
            encoded = None if encoded is None else encoded[keep]
            shared = None if shared is None else shared[keep]
            scores = None if scores is None else scores[keep]
            anchor_scores = None if anchor_scores is None else anchor_scores[keep]

            def members(x):  # (users·G, ...) rows of the kept groups
                return None if x is None else x.unflatten(0, (-1, r.shape[1]))[keep].flatten(0, 1)
            policy_logps, allowed = members(policy_logps), members(allowed)
            flat = codes.reshape(-1, codes.shape[-1])
        adv, _ = group_advantages(r, cfg.scale_rewards)
        if self.item_baseline is not None:  # what all groups say about an item alike, removed
            adv = self.item_baseline.centre(adv, items)
        ref_logits = ref_logps = old_logps = None
        with torch.no_grad():
            if self.ref is not None:
                ref_logits, _ = self.logits_for(self.ref, tokens, mask, codes)
                ref_logps = code_logprobs(ref_logits, flat, allowed)
        if cfg.num_iterations > 1:  # of the kept groups only, unless the rewards had them
            old_logps = policy_logps if policy_logps is not None else self.policy_logprobs(
                tokens, mask, codes, shared, flat, allowed)
        return Rollout(tokens=tokens, mask=mask, codes=codes, flat=flat,
                       target_codes=(self.table.codes[targets]
                                     if cfg.sft_weight and self.sft_windows is None else None),
                       target_scores=anchor_scores,
                       valid=(items > 0).reshape(-1), advantages=adv.reshape(-1),
                       allowed=allowed, encoded=encoded if graph else None,
                       ref_logits=ref_logits if cfg.kl_estimator == "exact" else None,
                       ref_logps=ref_logps, old_logps=old_logps, stats=stats)

    def rollout_loss(self, ro: Rollout, sft_scale: float = 1.0) -> tuple[torch.Tensor, dict]:
        """trl's clipped surrogate (+ β·KL) of a rollout under the current policy, plus
        ``sft_scale`` × ``sft_weight`` × the code cross-entropy of each user's true item."""
        cfg, valid = self.cfg, ro.valid
        logits, _ = self.logits_for(self.model, ro.tokens, ro.mask, ro.codes, ro.encoded)
        sft = None
        if ro.target_codes is not None:
            sft = self.target_sft(ro.tokens, ro.mask, ro.target_codes, ro.target_scores,
                                  ro.encoded)
        ro.encoded = None  # its graph serves one backward pass
        logps = code_logprobs(logits, ro.flat, ro.allowed)
        old = logps.detach() if ro.old_logps is None else ro.old_logps
        kl = None
        if ro.ref_logits is not None:
            kl = exact_kl(logits, ro.ref_logits, ro.allowed)[valid]
        loss, metrics = grpo_loss(
            logps[valid], old[valid], ro.advantages[valid],
            ref_logps=None if ro.ref_logps is None else ro.ref_logps[valid], kl=kl,
            beta=cfg.beta, epsilon_low=cfg.epsilon, epsilon_high=cfg.epsilon_high or cfg.epsilon,
            loss_type=cfg.loss_type, max_completion_length=self.table.code_len)
        if sft is not None:
            metrics["sft"] = sft.item()
            loss = loss + sft_scale * cfg.sft_weight * sft
        return loss, metrics

    def target_sft(self, tokens, mask, target_codes, scores, encoded=None) -> torch.Tensor:
        """The sft loss of each user's true item: a one-member group, teacher-forced."""
        logits, _ = self.logits_for(self.model, tokens, mask, target_codes[:, None], encoded)
        return self.sft_objective(self.table, logits, target_codes, scores=scores)

    def window_sft(self) -> float:
        """Backward of ``sft_weight`` × the finetune loss (``training_outputs`` and the same
        objective, the teacher's targets with sft_teacher_weight) of this process's part of the
        next window batch, weighted by that part as a finetune step weighs it; → the loss."""
        items, targets = next(self.sft_windows)
        n = len(items)
        part = self.procs.share(n)
        items, targets = items[part], targets[part]
        if not len(items):  # a tiny last batch can leave a process nothing
            return 0.0
        with self.autocast():
            out, _, target_codes = training_outputs(self.model, self.table.codes, items, targets)
        loss = self.sft_objective(self.table, out["logits"], target_codes, items, windows=targets)
        (loss * self.cfg.sft_weight * len(items) / n).backward()
        return loss.item()

    def step_on(self, hist, targets, rows=None, share: float = 1.0) -> dict:
        """GRPO on this process's users of the global batch (whole groups): rollouts of
        ``gradient_accumulation_steps`` micro-batches, then ``num_iterations`` optimiser steps,
        each accumulating the micro-batches' gradients (weighted by their completions, so
        that the step equals one over the whole batch); ``share``: this process's part of the
        global batch. → the batch's logged values."""
        cfg = self.cfg
        # eval mode: T5's attention-probability dropout is a float inside T5Attention, not an
        # nn.Dropout module, so disable_dropout_in_model alone would leave it on in train mode
        self.model.eval()
        iterations = cfg.num_iterations
        if self.max_steps:  # max_steps counts optimiser steps exactly
            iterations = min(iterations, self.max_steps - self.step)
        n = cfg.gradient_accumulation_steps
        if cfg.control:
            return self.control_step(torch.tensor_split(hist, n), torch.tensor_split(targets, n),
                                     share, iterations,
                                     None if rows is None else torch.tensor_split(rows, n))
        parts = [p for p in zip(torch.tensor_split(hist, n), torch.tensor_split(targets, n),
                                [None] * n if rows is None else torch.tensor_split(rows, n))
                 if len(p[1])]
        # every micro-batch's groups come from the policy before this step; the first update
        # reuses the encoder's graph only when there is one micro-batch (memory)
        rollouts = ([self.rollout(h, t, r, graph=len(parts) == 1) for h, t, r in parts]
                    if iterations else [])
        baseline = None
        if self.item_baseline is not None and rollouts:  # every process: the same means
            baseline = self.item_baseline.update(self.procs.all_sum)
        # each micro-batch weighs by its completions: the step's loss is the mean over all
        members = sum(int(ro.valid.sum()) for ro in rollouts)
        users = sum(len(ro.tokens) for ro in rollouts)  # the sft term: a mean over users
        sums: dict[str, float] = {}
        grad_norm = None
        for iteration in range(iterations):  # later iterations see updated weights
            self.opt.zero_grad(set_to_none=True)
            sums = {}
            for ro in rollouts:
                if not ro.valid.any():  # dynamic sampling kept no group of this micro-batch
                    continue
                weight = int(ro.valid.sum()) / max(1, members)
                # groups may be short: the sft term weighs each micro-batch by its users
                loss, m = self.rollout_loss(ro, sft_scale=len(ro.tokens) / users / weight)
                (loss * weight * share).backward()  # the global batch's mean
                for key, v in {"total": loss.item(), **m, **ro.stats}.items():
                    sums[key] = sums.get(key, 0.0) + weight * v
            if self.sft_windows is not None:  # one window batch per optimiser step
                sums["sft"] = self.window_sft()
            grad_norm = self.optimizer_step(self.opt, self.sched)
        if grad_norm is not None and sums:
            sums["grad_norm"] = grad_norm
        if baseline is not None and sums:
            sums["item_baseline"] = baseline  # mean |running mean advantage| of the step's items
        return sums

    def control_step(self, hists, targets, share: float, iterations: int, rows=None) -> dict:
        """control=true: the optimiser steps of a GRPO step with the RL term left out — the sft
        anchor alone, on the next window batch (sft_rows=sequences) or on the step's prompts'
        true items, weighted as the GRPO step weighs it (each micro-batch by its users)."""
        cfg, users = self.cfg, sum(len(t) for t in targets)
        values: dict[str, float] = {}
        for _ in range(iterations):
            self.opt.zero_grad(set_to_none=True)
            if self.sft_windows is not None:
                values["sft"] = self.window_sft()
            else:
                values["sft"] = 0.0
                for i, (hist, target) in enumerate(zip(hists, targets)):
                    if not len(target):
                        continue
                    tokens, mask = history_tokens(hist, self.table.codes)
                    future = self.prompt_future(target, None if rows is None else rows[i])
                    scores = (None if self.teacher is None
                              else self.scorer_scores(self.teacher, hist, future))
                    loss = self.target_sft(tokens, mask, self.table.codes[target], scores)
                    weight = len(target) / max(1, users)
                    (loss * cfg.sft_weight * weight * share).backward()
                    values["sft"] += weight * loss.item()
            values["grad_norm"] = self.optimizer_step(self.opt, self.sched)
        return values

    def steps_per_batch(self) -> int:
        return self.cfg.num_iterations

    def run_epoch(self, epoch: int) -> str:
        bar = self.progress_bar(self.epoch_batches(epoch, "grpo"), epoch, "grpo")
        for batch in bar:
            values = self.procs.weighted_sum(batch.share,
                                             self.step_on(*batch.tensors, share=batch.share))
            self.record(epoch, "grpo", values)
            if "reward" in values:
                bar.set_postfix(reward=f"{values['reward']:.3f}")
        self.epoch_means(keep=("total", "reward", "kl", "clip_ratio", "frac_reward_zero_std",
                               "group_hit_rate", "group_first_code_rate", "item_baseline",
                               "sft"))
        return "grpo"

    def extra_state(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.item_baseline is not None:
            state["item_baseline"] = self.item_baseline.state_dict()
        if self.sft_windows is not None:  # the window pass under way
            state["sft_windows"] = self.sft_windows.state_dict()
        return state

    def load_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if self.item_baseline is not None:
            self.item_baseline.load_state_dict(state["item_baseline"])
        if self.sft_windows is not None:
            self.sft_windows.load_state_dict(state["sft_windows"])

    def export_model(self):
        return merged_copy(self.peft) if self.peft is not None else self.model

    def checkpoint_info(self) -> dict:
        cfg = self.cfg
        return {"from": cfg.checkpoint, "lora": cfg.use_lora, "group_source": cfg.group_source,
                "reward_funcs": list(cfg.reward_funcs), "reward_weights": self.reward_weights,
                "num_generations": cfg.num_generations, "beta": cfg.beta,
                "teacher": cfg.teacher, "reward_teacher": cfg.rewards_scorer,
                "teacher_items": cfg.teacher_items, "group_first_codes": cfg.group_first_codes,
                "teacher_exclude_history": self.teacher_exclude,
                "item_baseline": cfg.item_baseline, "sft_rows": cfg.sft_rows if cfg.sft_weight else None,
                "control": cfg.control,
                "codes": self.source_info.get("codes", {})}

