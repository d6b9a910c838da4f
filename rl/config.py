"""Options of the rl stage: trl's ``GRPOConfig`` (so num_generations, beta, epsilon,
epsilon_high, loss_type, scale_rewards, num_iterations, learning_rate, reward_weights,
temperature, weight_decay, lr_scheduler_type, warmup_steps, max_steps, num_train_epochs,
logging_steps, eval_steps, save_steps, gradient_accumulation_steps, max_grad_norm, report_to,
run_name, seed mean what trl's documentation says) plus what an encoder-decoder over item codes
needs. The other fields of TrainingArguments steer trl's own Trainer loop (strategies, hub,
DeepSpeed …) and are not used here: setting one is a config error naming it."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from trl import GRPOConfig

from etegrl.config import option, require
from etegrl.options import (TEACHER_EXCLUDE_HISTORY, TEACHERS, EvalOptions, LoraOptions,
                            RunOptions, StepOptions, TransitionOptions)


# GRPOConfig / TrainingArguments fields that the loop reads, beside those RLConfig declares
TRL_FIELDS_USED = frozenset({
    "epsilon", "epsilon_high", "scale_rewards", "num_iterations", "reward_weights",
    "temperature", "weight_decay", "lr_scheduler_type", "warmup_steps", "seed", "max_grad_norm",
    "max_steps", "gradient_accumulation_steps"})
# where a trl user finds what a refused field would have done
TRL_FIELD_HINTS = {
    "eval_strategy": "set eval_steps (steps) or eval_every (epochs)",
    "save_strategy": "best/ is saved at each better validation; save_steps saves the resumable state",
    "logging_strategy": "set logging_steps", "warmup_ratio": "warmup_steps < 1 is a share of the steps",
    "load_best_model_at_end": "the test split is always evaluated with best/",
}


@dataclass
class RLConfig(TransitionOptions, LoraOptions, EvalOptions, StepOptions, RunOptions, GRPOConfig):
    # config fields naming inputs: a finished run is reused only while these are unchanged
    INPUT_FIELDS = ("data_dir", "checkpoint", "reward_funcs")

    checkpoint: str = option("runs/ml-100k/finetune/best", "The finetuned checkpoint: the initial policy and the frozen KL reference.")
    output_dir: str = option("runs/ml-100k/rl", "Where best/, log.jsonl and results.json go.")
    epochs: int = option(1, "Passes over the training rows (each capped by rows_per_user); or set num_train_epochs (trl's name), not both.")
    num_train_epochs: float | None = option(None, "trl's name for epochs (a whole number here; max_steps stops within an epoch).")
    rows_per_user: int = option(1, "Prompts (training rows) per user per epoch, redrawn each epoch (0 = all).")
    prompt_rows: Literal["random", "recent"] = option("random", "Which rows_per_user rows: drawn at random each epoch, or each user's most recent training rows (the histories closest to validation and test).")
    group_source: Literal["beam", "sampling"] = option("beam", "Group of num_generations distinct valid items: trie beam search, or sampling at `temperature` (topped up from the beam when too few are distinct).")
    group_first_codes: int = option(0, "With group_source=beam: split each group's beam evenly over the N first codes the policy finds most likely (num_generations / N members under each, the best within their first code), so that a group spans N first codes and the rewards can move the policy between them, not only within its favourite first code (bench/prefix_reach.py shows where lists miss); 0 = one beam over all codes. N must divide num_generations.")
    inject_target: bool = option(False, "Put the true item into every group that lacks it (replacing the last member).")
    kl_estimator: Literal["k3", "exact"] = option("k3", "KL to the reference: trl's k3 estimator on the sampled codes, or the exact KL over all codes at each position.")
    reward_funcs: list[str] = option(["hit", "ranking_penalty"], "Built-ins (hit, rank_aware, ranking_penalty, prefix_match, novelty, teacher, teacher_first_code, teacher_logratio, future_hit) or path/to/file.py:function; weights in reward_weights.")
    teacher: Literal["none", "sasrec", "transitions"] = option("none", "A scorer of every item for a history: " + TEACHERS + ". Gives reward functions teacher_rank (each member's 0-based rank among the teacher's items) and teacher_logprob, and teacher_items their members.")
    teacher_exclude_history: Literal["auto", "always", "never"] = option("auto", TEACHER_EXCLUDE_HISTORY)
    reward_teacher: Literal["teacher", "none", "sasrec", "transitions"] = option("teacher", "The scorer behind the rewards' teacher_rank and teacher_logprob and behind teacher_items: teacher = the one the teacher option names; sasrec or transitions = that scorer for them alone, while the sft anchor (sft_teacher_weight) keeps teacher's — so the RL term can bring what the anchor's distillation does not.")
    teacher_items: int = option(0, "Replace the last N members of every group by the teacher's best items the group lacks (history items excluded where teacher_exclude_history says so), so that rewards can pull the policy toward items outside its beam. Needs teacher.")
    future_items: int = option(0, "Give reward functions `future`: each prompt's next N training items after its target (the built-in future_hit reward credits them); 0 = off.")
    future_discount: float = option(0.5, "future_hit's credit for the j-th next item: future_discount ** j.")
    sft_weight: float = option(0.0, "Add this weight × the code cross-entropy of each prompt's true item (teacher-forced, the finetune loss) to the GRPO loss: a supervised anchor, so that a run can be compared with a continue-finetuning control of the same steps and the RL term's own effect read off; 0 = GRPO alone.")
    sft_teacher_weight: float = option(0.0, "With sft_weight and a teacher: the sft term's targets are (1 − w) · the true codes + w · the teacher's code distributions along them (the distillation loss of pretrain and finetune's teacher_weight, temperature 1), so that the anchor keeps what a distilled start learned from the teacher.")
    sft_rows: Literal["prompts", "sequences"] = option("prompts", "What the sft term trains on: each prompt's true item (prompts), or, as finetune's train_on=sequences does, the next batch of windows of the users' training sequences at every optimiser step (sequences: needs a recommender with causal_encoder=true; windows of max_len items, rows_per_user of them per user per pass, sft_batch_size per step). With sequences, a run at learning_rate with the same schedule is a finetune control of the same steps (batch_size = sft_batch_size, the same rows_per_user and seed, the same windows) plus the RL term.")
    sft_batch_size: int = option(0, "With sft_rows=sequences: windows per optimiser step (0 = the users of a step: per_device_train_batch_size / num_generations × processes × gradient_accumulation_steps).")
    control: bool = option(False, "Train this run's continue-finetuning control instead: the same prompts, optimiser steps, schedule, sft anchor (sft_weight, sft_teacher_weight, sft_rows) and validations, without groups, rewards, KL or the RL term (needs sft_weight > 0). GRPO's own effect is then its paired difference from this run (python -m etegrl.compare CONTROL_DIR RL_DIR).")
    item_baseline: float = option(0.0, "Decay d of a per-item baseline subtracted from the advantages (0 = off): each item's running mean advantage over the steps (updated after every step, mean ← d · mean + (1 − d) · the step's mean advantage of the item). Groups of different users share items; a reward that ranks such an item high in most groups otherwise moves the policy toward it for everyone (a global shift, e.g. toward popular items) rather than toward each user's own preferences.")
    dynamic_sampling: bool = option(False, "DAPO's dynamic sampling: draw dynamic_sampling_draws times the step's prompts, build and score all their groups, and train on the first groups (as many as a step holds) whose rewards are not all equal; groups with no reward spread carry no signal.")
    dynamic_sampling_draws: int = option(4, "With dynamic_sampling: prompts drawn per group a step trains on (an epoch then takes fewer steps).")
    reward_timeout: float = option(0.0, "Seconds a reward function may take per call before the run stops with an error naming it (0 = no limit; Unix only).")
    patience: int = option(0, "Stop after this many validations without a better NDCG@10 (0 = never).")
    # trl defaults that do not suit this CPU-first setting
    bf16: bool = option(False, "Mixed precision: the policy's and reference's forward passes in the update under bf16 autocast; weights, optimiser, losses and group generation stay fp32 (trl's default is True; ours is off, as it pays only on GPUs and CPUs with native bf16).")
    # TrainingArguments rebuilds accelerate's process state from this; without it, processes
    # started on a machine with no GPU would not join (each would believe it is alone)
    use_cpu: bool = option(not torch.accelerator.is_available(), "Train on the CPU (the default where no GPU or other accelerator is present).")
    report_to: list[str] = option(["none"], "Trackers that also get every logged scalar, the config and the test metrics: tensorboard, trackio, wandb, mlflow (offline unless your environment says otherwise; files under output_dir/trackers), or none. log.jsonl is always written.")
    num_generations: int = option(16, "Group size G: distinct items per user (MiniOneRec uses 16).")
    per_device_train_batch_size: int = option(256, "Completions per step = users per step × num_generations.")
    learning_rate: float = option(1e-5, "AdamW learning rate.")
    beta: float = option(0.04, "KL coefficient (0 = no reference model).")
    loss_type: str = option("grpo", "grpo, bnpo, dr_grpo or dapo (identical here: every completion has code_len tokens).")

    def __post_init__(self):
        # ours first: trl's own checks divide by num_generations and name no key
        self.refuse_unused_trl_fields()
        self.check_eval()
        require(self, 2, "num_generations")  # a group of one has no advantage
        require(self, 1, "epochs", "max_len", "per_device_train_batch_size")
        self.check_lora()
        require(self, 0, "rows_per_user", "beta", "max_grad_norm", "weight_decay", "reward_timeout")
        require(self, 1, "gradient_accumulation_steps", "dynamic_sampling_draws")
        require(self, 0, "sft_weight")
        if not 0.0 <= self.item_baseline < 1.0:
            raise ValueError(f"key 'item_baseline' must be in [0, 1) (0 = off), got {self.item_baseline!r}")
        require(self, 0, "sft_teacher_weight", high=1)
        require(self, 0, "sft_batch_size")
        if self.sft_rows == "sequences" and not self.sft_weight:
            raise ValueError("sft_rows=sequences needs sft_weight > 0")
        if self.control and not self.sft_weight:
            raise ValueError("control=true trains the sft anchor alone: it needs sft_weight > 0")
        if self.control and self.dynamic_sampling:
            raise ValueError("control=true cannot be combined with dynamic_sampling (its steps "
                             "depend on the rewards the control does not compute)")
        if self.sft_teacher_weight and (self.teacher == "none" or not self.sft_weight):
            raise ValueError("sft_teacher_weight needs a teacher (sasrec or transitions) and "
                             "sft_weight > 0")
        self.check_steps()
        self.resolve_steps()
        require(self, 0, "learning_rate", "temperature", above=True)
        require(self, 0, "teacher_items", high=self.num_generations)
        require(self, 0, "group_first_codes", high=self.num_generations)
        if self.group_first_codes and self.num_generations % self.group_first_codes:
            raise ValueError(f"key 'group_first_codes' ({self.group_first_codes}) must divide "
                             f"num_generations ({self.num_generations})")
        if self.group_first_codes and self.group_source != "beam":
            raise ValueError("key 'group_first_codes' shapes beam groups: it needs "
                             "group_source=beam")
        self.check_transitions()
        require(self, 0, "future_items")
        require(self, 0, "future_discount", high=1)
        needs = [f for f in ("teacher", "teacher_first_code", "teacher_logratio")
                 if f in self.reward_funcs]
        if self.rewards_scorer == "none" and (self.teacher_items or needs):
            raise ValueError(f"{'the ' + repr(needs[0]) + ' reward' if needs else 'teacher_items'} "
                             f"needs a teacher (teacher or reward_teacher: sasrec or transitions)")
        if "future_hit" in self.reward_funcs and not self.future_items:
            raise ValueError("the 'future_hit' reward needs future_items ≥ 1")
        with warnings.catch_warnings():  # transformers warns about a field trl sets, not the user
            warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            super().__post_init__()  # trl checks that a batch holds whole groups
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for "
                             f"{len(self.reward_funcs)} reward_funcs")

    @property
    def rewards_scorer(self) -> str:
        """The scorer the rewards and teacher_items use: reward_teacher, resolved."""
        return self.teacher if self.reward_teacher == "teacher" else self.reward_teacher

    def resolve_steps(self) -> None:
        """num_train_epochs, trl's name, is epochs' other name: one of them."""
        if self.num_train_epochs is not None:
            n = self.num_train_epochs
            if n < 1 or n != int(n):
                raise ValueError(f"key 'num_train_epochs' must be a whole number ≥ 1 here (use "
                                 f"max_steps to stop within an epoch), got {n!r}")
            if self.epochs not in (1, int(n)):
                raise ValueError(f"key 'num_train_epochs' ({n:g}) and epochs ({self.epochs}) "
                                 f"are the same option: set one of them")
            self.epochs = int(n)

    @classmethod
    def unused_field_error(cls, name: str) -> str | None:
        """Why ``name`` may not be set: a trl or TrainingArguments field this loop does not
        read (a trl user trusts those names; a value accepted and silently ignored is worse
        than no field). None for a field the loop uses."""
        if name in _ours() or name in TRL_FIELDS_USED or name not in _trl_fields():
            return None
        hint = TRL_FIELD_HINTS.get(name, "")
        return (f"key '{name}' (a trl/TrainingArguments option) is not used by this GRPO loop"
                f"{'; ' + hint if hint else ''}; remove it (the trl options it reads: "
                f"{', '.join(sorted(TRL_FIELDS_USED))})")

    def refuse_unused_trl_fields(self) -> None:
        """Unused trl fields given values other than their defaults (the config files and
        key=value overrides are checked by name, before this, by ``unused_field_error``)."""
        for f in dataclasses.fields(GRPOConfig):
            if f.init and self.unused_field_error(f.name):
                default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                           else f.default)
                if getattr(self, f.name) != default:
                    raise ValueError(self.unused_field_error(f.name))

    @property
    def users_per_step(self) -> int:
        return self.per_device_train_batch_size // self.num_generations


def _ours() -> set[str]:
    return (set(RLConfig.__annotations__) | {f.name for f in dataclasses.fields(EvalOptions)}
            | {f.name for f in dataclasses.fields(StepOptions)}
            | {f.name for f in dataclasses.fields(LoraOptions)})


def _trl_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
