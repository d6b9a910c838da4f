"""Training throughput of the pretrain stage's recommender and tokenizer epochs, and the FLOP
rate they achieve as a share of this machine's fp32 matmul peak, measured in the same run.

    python bench/throughput.py --config configs/ml-100k/pretrain.yaml [--steps 20] [key=value ...]

The stage is set up as configured (its data must be prepared; tokenizer pretraining is skipped
here, it does not change a step's cost), then ``--steps`` training steps of each kind run on the
stage's own length-bucketed batches. FLOPs per step (forward + backward + optimiser) come from
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention: what the peak measures);
the peak is the best of several large matmuls in the precision the step's matmuls use (fp32, or
bf16 with ``bf16=true``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import matmul_peak
from torch.utils.flop_counter import FlopCounterMode

from etegrl.config import parse_args
from etegrl.distributed import use_bf16
from pretrain.config import PretrainConfig
from pretrain.loop import PretrainStage


def run_kind(stage: PretrainStage, kind: str, steps: int) -> dict:
    train_tok = kind == "tokenizer"
    stage.model.train(not train_tok)
    stage.tokenizer.train(train_tok)
    for p in stage.model.parameters():
        p.requires_grad_(not train_tok)
    for p in stage.tokenizer.parameters():
        p.requires_grad_(train_tok)
    opt = stage.opt_id if train_tok else stage.opt_rec
    batches = []
    while len(batches) < steps + 1:
        batches.extend(stage.rows.epoch())
    batches = batches[:steps + 1]

    def step(hist, targets):
        stage.batch_targets, stage.share = targets, 1.0  # one process: the batch is all of it
        losses = stage.batch_losses(hist, targets, kind)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()

    step(*batches[0])  # warm-up
    with FlopCounterMode(display=False) as counter:
        step(*batches[0])
    per_sample = counter.get_total_flops() / len(batches[0][1])
    samples, flops = 0, 0.0
    t0 = time.perf_counter()
    for hist, targets in batches[1:]:
        step(hist, targets)
        samples += len(targets)
        flops += per_sample * len(targets)
    seconds = time.perf_counter() - t0
    return {"samples_per_s": samples / seconds, "flops_per_s": flops / seconds,
            "mean_len": sum(int((h > 0).sum(1).float().mean()) for h, _ in batches[1:]) / steps}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    args, rest = parser.parse_known_args(argv)
    cfg = parse_args(PretrainConfig, rest + ["tokenizer_pretrain_epochs=0", "progress=false",
                                             "output_dir=/tmp/throughput-bench", "overwrite=true"])
    stage = PretrainStage(cfg, log=lambda *_: None)
    stage.setup()
    # the share is taken of the peak of the precision the matmuls run in (bf16 on: bf16)
    dtype = torch.bfloat16 if use_bf16(cfg.bf16, stage.device) else torch.float32
    peak = matmul_peak(dtype=dtype)
    print(f"threads {torch.get_num_threads()}; {str(dtype)[6:]} matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"{cfg.num_layers}+{cfg.num_decoder_layers} layers, d_model {cfg.d_model}, batch "
          f"{cfg.batch_size}, histories ≤ {cfg.max_len} items")
    print("| epoch kind | samples/s | mean history | GFLOP/s | share of peak |")
    print("|---|---|---|---|---|")
    for kind in ("recommender", "tokenizer"):
        r = run_kind(stage, kind, args.steps)
        print(f"| {kind} | {r['samples_per_s']:.0f} | {r['mean_len']:.1f} | "
              f"{r['flops_per_s'] / 1e9:.1f} | {r['flops_per_s'] / peak:.0%} |")
    stage.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
