"""Options every training stage shares (data, seed, validation, selection, logging) and those
of the supervised stages (pretrain, finetune): dataclass mixins of the stage configs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .config import option, require
from .tracking import check_report_to


@dataclass
class RunOptions:
    """What every stage's config names: its input data, the seed, the history length, and
    whether an output folder of another run may be replaced (each stage declares its own
    ``output_dir``, whose default names the stage)."""

    data_dir: str = option("runs/ml-100k/data", "Output folder of the prepare step (splits, embeddings, its SASRec).")
    seed: int = option(42, "Random seed.")
    overwrite: bool = option(False, "Replace an output_dir that holds another run.")
    max_len: int = option(50, "History items the model reads (the last ones).")


@dataclass
class EvalOptions:
    """Validation and selection options shared by the training stages' configs."""

    eval_every: int = option(1, "Validate every N epochs (and after the last).")
    patience: int = option(10, "Stop after this many validations without a better NDCG@10 (0 = never).")
    time_budget: float = option(0.0, "Stop training after the first epoch that ends past this many seconds (validating it), whatever epochs says; 0 = no budget. With patience, a budget instead of an epoch count fitted to one dataset.")
    beam: int = option(20, "Beam size of evaluation.")
    eval_batch_size: int = option(128, "Users per beam-search batch.")
    select: Literal["best", "last"] = option("best", "The checkpoint kept in best/ and tested: the one with the best validation NDCG@10, or the last validated (the final weights; no selection on the validation set, e.g. to measure what training itself did, paired against its start).")
    valid_users: int = option(0, "Validate on a fixed random subset of this many users (0 = all); test always uses all.")
    exclude_history: Literal["auto", "always", "never"] = option("auto", "Never recommend an item already in the user's history: always, never, or auto = when no training target repeats an item of its own history (ratings data such as MovieLens). Applies to validation, test and generated groups; the prepare step's baselines follow the same rule.")
    logprob: Literal["full", "trie"] = option("full", "Code distribution of the training loss, beam scores and GRPO log-probabilities: softmax over all codes (full), or over the trie's valid codes only (trie: the loss is then the item's likelihood among valid items, and the model need not learn which codes exist).")
    progress: bool = option(True, "Show progress bars.")
    threads: int = option(0, "CPU threads per process (0 = the machine's cores divided among the processes on it).")
    save_state_every: int = option(50, "Also save the resumable state every N training batches within an epoch (it is always saved at each epoch's end); 0 = epoch ends only.")
    report_to: list[str] = option(["none"], "Trackers that also get every logged scalar, the config and the test metrics: tensorboard, trackio, wandb, mlflow (offline unless your environment says otherwise; files under output_dir/trackers), or none. log.jsonl is always written.")
    run_name: str = option("", "The run's name in the trackers (empty = the output folder's name).")

    def check_eval(self) -> None:
        check_report_to(self.report_to)
        require(self, 1, "eval_every", "beam", "eval_batch_size")
        require(self, 0, "patience", "valid_users", "threads", "save_state_every", "time_budget")


@dataclass
class LoraOptions:
    """peft LoRA adapters instead of training all weights (finetune and rl)."""

    use_lora: bool = option(False, "Train LoRA adapters on the attention projections instead of all weights; merged into a plain model on save.")
    lora_r: int = option(8, "LoRA rank.")
    lora_alpha: int = option(16, "LoRA alpha.")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_targets: list[str] = option(["q", "k", "v", "o"], "Module names that get adapters (T5 attention: q, k, v, o).")

    def check_lora(self) -> None:
        require(self, 1, "lora_r", "lora_alpha")
        require(self, 0, "lora_dropout", high=1, below_high=True)


@dataclass
class StepOptions:
    """trl's (TrainingArguments') step options, for a loop counted in optimiser steps (finetune
    and rl; pretraining alternates whole tokenizer and recommender epochs and keeps epochs)."""

    max_steps: int = option(-1, "Stop after this many optimiser steps, within an epoch if need be; it overrides the epochs and the learning-rate schedule spans these steps (≤ 0 = the epochs decide).")
    logging_steps: float = option(1, "One record in log.jsonl and the trackers per this many optimiser steps, the means over them (and one at each epoch's end); < 1: a share of the run's steps.")
    eval_steps: float | None = option(None, "Validate every this many optimiser steps (and after the last) instead of every eval_every epochs; < 1: a share of the run's steps; unset = by epochs. Early stopping (patience) counts these validations.")
    save_steps: float = option(0, "Also save the resumable state every this many optimiser steps (0 = off; save_state_every counts batches); < 1: a share of the run's steps.")

    def check_steps(self) -> None:
        require(self, 0, "eval_steps", "save_steps")
        require(self, 0, "logging_steps", above=True)
        for key in ("logging_steps", "eval_steps", "save_steps"):
            value = getattr(self, key)
            if value and value > 1 and value != int(value):
                raise ValueError(f"key '{key}' must be a whole number of steps or a share "
                                 f"below 1, got {value!r}")
        if self.eval_steps and self.eval_every != 1:
            raise ValueError(f"key 'eval_steps' ({self.eval_steps:g}) and eval_every "
                             f"({self.eval_every}) both set when to validate: set one of them")


def step_count(value: float | None, total: int) -> int:
    """A TrainingArguments *_steps value in steps: a count, or a share of the run's ``total``
    steps when below 1; 0 when unset."""
    if not value:
        return 0
    return max(1, math.ceil(round(value * total, 6))) if value < 1 else int(value)


TEACHER_EXCLUDE_HISTORY = ("Whether the teacher may name an item of the user's own history: auto = as exclude_history (the evaluation's rule), always = never (its scores of history items are −inf), never = it may. always suits data where a few targets repeat a history item (so exclude_history stays off) but a sequential teacher still puts much of its mass on the history.")


TEACHERS = ("none = no teacher; sasrec = the prepare step's SASRec in data_dir (trained on the "
            "training rows only); transitions = item-to-item transition counts of the training "
            "sequences (an item's next transition_window items, and with transition_backward its "
            "previous ones), read from the user's last transition_history items")


@dataclass
class TransitionOptions:
    """The ``transitions`` teacher: a scorer built from the training sequences, no training."""

    transition_window: int = option(3, "teacher=transitions: an item counts the items up to this many positions after it in every training sequence, weighted 0.5^(distance − 1).")
    transition_history: int = option(5, "teacher=transitions: a history is read from its last this many items, the most recent weighted 1, the one before 0.7, then 0.7², ...")
    transition_backward: float = option(0.5, "teacher=transitions: weight of the reverse direction (an item also counts the items before it, × this); 0 = forward only.")
    transition_leave_out: bool = option(True, "teacher=transitions: on a training row, leave the row's own pairs into its target and the items after it out of the counts (else the scorer has seen every training answer and teaches the policy to repeat them). The items after a prediction point that the batch holds are left out: the window's later items with train_on=sequences, the target with train_on=rows, the target and its next training items in the rl stage.")

    def check_transitions(self) -> None:
        require(self, 1, "transition_window", "transition_history")
        require(self, 0, "transition_backward")


@dataclass
class DistillOptions(TransitionOptions):
    """A teacher's item distribution as soft targets of the supervised stages' code loss."""

    teacher: Literal["none", "sasrec", "transitions"] = option("none", "Distil from a scorer of every item: " + TEACHERS + ". Its item distribution for each training history, history items excluded where teacher_exclude_history says so, becomes per-code soft targets along the target's codes; with train_on=sequences one causal teacher pass scores every position of a window from the window's items up to it (max_len at most the prepare step's).")
    teacher_weight: float = option(0.5, "With a teacher: each code's target is (1 − w) · the true code + w · the teacher's distribution of that code given the target's earlier codes.")
    teacher_temperature: float = option(1.0, "With a teacher: its scores are divided by this before the softmax (> 1 flattens the distribution).")
    teacher_exclude_history: Literal["auto", "always", "never"] = option("auto", TEACHER_EXCLUDE_HISTORY)

    def check_distill(self) -> None:
        self.check_transitions()
        require(self, 0, "teacher_weight", high=1)
        require(self, 0, "teacher_temperature", above=True)


@dataclass
class TrainOptions:
    """Options of the supervised training stages (pretrain, finetune)."""

    train_on: Literal["rows", "sequences"] = option("rows", "rows: one prefix row (history → next item) per example, as the official ETEGRec; sequences: windows of whole training sequences, one causal-encoder pass predicting the next item after every position (needs a recommender with causal_encoder=true).")
    window_stride: int = option(0, "train_on=sequences: windows of max_len items start every window_stride items (0 = max_len, disjoint windows); each scored target reads at least max_len - window_stride + 1 items of history.")
    max_grad_norm: float = option(1.0, "Clip gradients to this total L2 norm (the official code: 1.0); 0 = no clipping.")
    warmup_steps: int = option(0, "Linear warm-up steps before the cosine decay (capped at the run's steps); 0 = use warmup_ratio.")

    def check_training(self) -> None:
        """Ranges of the options every supervised stage has (called by ``__post_init__``)."""
        self.check_eval()
        require(self, 1, "epochs", "batch_size", "max_len")
        require(self, 0, "rows_per_user", "max_grad_norm", "warmup_steps", "weight_decay")
        require(self, 0, "warmup_ratio", high=1)
        if self.window_stride < 0 or self.window_stride > self.max_len:
            raise ValueError(f"window_stride must be in 0..max_len ({self.max_len})")
