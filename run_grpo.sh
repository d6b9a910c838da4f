#!/usr/bin/env bash
# The main job, on the embedded default dataset (MovieLens-100K) unless a dataset is named:
#   bash run_grpo.sh [DATASET] [key=value ...]
# where DATASET names a folder of configs/ (ml-100k, scientific, beauty, instruments, tiny).
# Stages: data preparation (leave-one-out splits, SASRec baseline, item embeddings) →
# ETEGRec pretraining → finetuning → GRPO → the test results as a markdown table. A stage whose finished output exists with the same config is
# skipped; pass overwrite=true to redo it. key=value overrides apply to every stage, so name
# only keys that all of them know (seed, overwrite).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/install.sh
dataset="${1:-ml-100k}"
[ $# -gt 0 ] && shift
[ -d "configs/$dataset" ] || { echo "no configs/$dataset; choose one of: $(ls configs | tr '\n' ' ')" >&2; exit 2; }
start=$(date +%s)
launch() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no -m "$@"; }
launch etegrl.prepare --config "configs/$dataset/prepare.yaml" "$@"
launch pretrain --config "configs/$dataset/pretrain.yaml" "$@"
launch finetune --config "configs/$dataset/finetune.yaml" "$@"
launch rl --config "configs/$dataset/rl.yaml" "$@"
python -m etegrl.report "runs/$dataset"
echo "main job finished in $(( $(date +%s) - start ))s"
