#!/usr/bin/env bash
# GPU readiness: the tiny chain (prepare → pretrain → finetune → GRPO) on the accelerator with
# bf16 autocast, then checks of what it wrote (bench/gpu_check.py): every stage ran on the
# device, finished, and gave finite metrics in [0, 1]; the checkpoints load on the device and
# rank the same as on the CPU. A few minutes on a GPU.
#   bash bench/gpu_check.sh [OUT]        (default runs/gpu-check; ETEGRL_CHECK_DEVICE=cpu runs
#                                         the same chain and checks on a CPU, for the script itself)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu-check}"
want="${ETEGRL_CHECK_DEVICE:-cuda}"
[ -d .venv ] && . .venv/bin/activate
python -c "import torch, sys; sys.exit(0 if '$want' == 'cpu' or torch.cuda.is_available() else \
  'no CUDA device: torch ' + torch.__version__ + ' sees none (a CPU wheel?)')"
bf16=true
[ "$want" = cpu ] && bf16=false  # emulated bf16 on a CPU without it would only be slow
run() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no -m "$@"; }
run etegrl.prepare --config configs/tiny/prepare.yaml output_dir="$out/data" overwrite=true 2>&1 | tail -3
run pretrain --config configs/tiny/pretrain.yaml data_dir="$out/data" output_dir="$out/pretrain" \
  bf16=$bf16 overwrite=true progress=false | tail -2
run finetune --config configs/tiny/finetune.yaml data_dir="$out/data" \
  checkpoint="$out/pretrain/best" output_dir="$out/finetune" bf16=$bf16 overwrite=true progress=false | tail -2
run rl --config configs/tiny/rl.yaml data_dir="$out/data" checkpoint="$out/finetune/best" \
  output_dir="$out/rl" bf16=$bf16 overwrite=true progress=false | tail -2
python bench/gpu_check.py "$out" --device "$want"
