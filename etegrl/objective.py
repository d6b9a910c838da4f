"""The code loss of a training batch, as every stage that trains on true items computes it:
cross-entropy of the target's codes (over the trie's valid codes with ``logprob=trie``), mixed
with a teacher's code distributions along the target's codes when a teacher and a weight are
given (pretrain and finetune's ``teacher``, the rl stage's ``sft_teacher_weight``)."""

from __future__ import annotations

import torch

from .losses import code_loss
from .teacher import Teacher, code_targets


class CodeObjective:
    def __init__(self, *, trie: bool, teacher: Teacher | None = None, weight: float = 0.0,
                 temperature: float = 1.0, exclude: bool = False):
        self.trie, self.exclude = trie, exclude
        self.teacher = teacher if weight else None  # weight 0: the plain loss, no teacher pass
        self.weight, self.temperature = weight, temperature

    @classmethod
    def from_config(cls, cfg, teacher: Teacher | None, exclude: bool) -> "CodeObjective":
        """Pretrain's and finetune's: ``logprob``, ``teacher_weight``, ``teacher_temperature``."""
        return cls(trie=cfg.logprob == "trie", teacher=teacher, weight=cfg.teacher_weight,
                   temperature=cfg.teacher_temperature, exclude=exclude)

    def __call__(self, table, logits: torch.Tensor, target_codes: torch.Tensor,
                 hist: torch.Tensor | None = None, windows: torch.Tensor | None = None,
                 scores: torch.Tensor | None = None) -> torch.Tensor:
        """``logits [N, T, C]`` of the targets' codes ``[N, T]`` under ``table`` (a CodeTable);
        ``hist`` the histories the teacher scores (prefix rows, N of them), or with ``windows``
        (the ``[B, W]`` next items of sequence windows ``hist``, 0 = unscored) the windows whose
        N scored positions it scores — for prefix rows, ``windows`` may be their ``[N]`` targets
        (a transitions teacher leaves each row's own pair into its target out); or ``scores``
        its scores already at hand."""
        allowed = table.allowed_along(target_codes) if self.trie else None
        if self.teacher is None:
            return code_loss(logits, target_codes, allowed)
        if scores is None and windows is not None and windows.dim() == 2:
            scores = self.teacher.window_scores(hist, windows, exclude=self.exclude)
        elif scores is None:  # prefix rows: ``windows`` (when given) holds their targets
            future = None if windows is None else windows.reshape(-1, 1)
            scores = self.teacher.scores(hist, exclude=self.exclude, future=future)
        soft = code_targets(torch.softmax(scores / self.temperature, -1), table.codes,
                            target_codes, table.code_num)
        return code_loss(logits, target_codes, allowed, soft=soft, soft_weight=self.weight)
