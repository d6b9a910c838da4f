"""Cost of one GRPO step against one finetune step on the same prompts, and against the naive
GRPO step that encodes each history once per group member instead of once per user.

    python bench/grpo_step.py --checkpoint runs/ml-100k/finetune/best --data-dir runs/ml-100k/data \\
        [--users 32] [--G 16] [--repeats 5]

All three update the same model from the same state (weights restored between runs); times are
medians over ``--repeats`` steps after one warm-up step.
"""

from __future__ import annotations

import copy
import sys

import torch
from common import median_seconds as timed
from common import parser as bench_parser

from etegrl.losses import code_loss
from etegrl.model import history_tokens
from rl.config import RLConfig
from rl.loop import RLStage


class NaiveRLStage(RLStage):
    """The same step, but the encoder runs on every group member's copy of the history."""

    def logits_for(self, model, tokens, mask, codes, encoded=None):
        g = codes.shape[1]
        tokens_g, mask_g = tokens.repeat_interleave(g, 0), mask.repeat_interleave(g, 0)
        encoded = model.encode(tokens_g, mask_g)
        flat = codes.reshape(-1, codes.shape[-1])
        hidden, _ = model.decode(encoded, mask_g, flat[:, :-1])
        return model.code_logits(hidden), flat


def main(argv=None) -> int:
    parser = bench_parser(__doc__, users=32)
    parser.add_argument("--G", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    cfg = dict(data_dir=args.data_dir, checkpoint=args.checkpoint, output_dir="/tmp/grpo-step-bench",
               overwrite=True, max_len=args.max_len, num_generations=args.G,
               per_device_train_batch_size=args.users * args.G, progress=False)
    stages = {}
    for name, cls in (("grpo", RLStage), ("naive", NaiveRLStage)):
        stage = cls(RLConfig(**cfg), log=lambda *_: None)
        stage.setup()
        stages[name] = stage
    rl = stages["grpo"]
    hist, targets = next(rl.rows.epoch())
    start = copy.deepcopy(rl.model.state_dict())

    def grpo_step(stage):
        def run():
            stage.model.load_state_dict(start)
            stage.step_on(hist, targets)
        return run

    opt = torch.optim.AdamW(rl.model.parameters(), lr=1e-5)

    def finetune_step():
        rl.model.load_state_dict(start)
        rl.model.train()
        tokens, mask = history_tokens(hist, rl.table.codes)
        target_codes = rl.table.codes[targets]
        loss = code_loss(rl.model(tokens, mask, target_codes)["logits"], target_codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_ft = timed(finetune_step, args.repeats)
    t_rl = timed(grpo_step(rl), args.repeats)
    t_naive = timed(grpo_step(stages["naive"]), args.repeats)
    print(f"{len(targets)} users, G {args.G}, histories ≤ {args.max_len} items, "
          f"threads {torch.get_num_threads()}; median of {args.repeats} steps")
    print("| step | seconds | × finetune step |")
    print("|---|---|---|")
    for name, t in (("finetune (code CE)", t_ft), ("GRPO (history encoded once per user)", t_rl),
                    ("GRPO naive (history encoded per group member)", t_naive)):
        print(f"| {name} | {t:.3f} | {t / t_ft:.2f} |")
    print(f"naive / ours: {t_naive / t_rl:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
