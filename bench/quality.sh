#!/usr/bin/env bash
# Quality over seeds: SASRec, TIGER mode, ETEGRec (pretrain → finetune), ETEGRec + GRPO and
# GRPO's control (rl control=true, where rl.yaml has an sft anchor) on one dataset, each seed a
# whole run_grpo.sh chain in runs/<dataset>-seed<S>, then a table of mean ± std in
# runs/<dataset>-quality.md and each run's curves (<stage>/curves.png).
#   bash bench/quality.sh [DATASET] [SEEDS...]        e.g. bash bench/quality.sh ml-100k 42 1 2
# On 2 CPU cores one ML-100K seed takes about 25 minutes; use a GPU machine for Beauty.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install.sh
dataset="${1:-ml-100k}"
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then seeds=(42 1 2); else seeds=("$@"); fi
launch() { accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no -m "$@"; }
roots=()
for seed in "${seeds[@]}"; do
  root="runs/$dataset-seed$seed"
  roots+=("$root")
  common=(seed="$seed" data_dir="$root/data")
  launch etegrl.prepare --config "configs/$dataset/prepare.yaml" seed="$seed" output_dir="$root/data"
  launch pretrain --config "configs/$dataset/pretrain.yaml" "${common[@]}" mode=tiger \
    output_dir="$root/pretrain-tiger"
  launch pretrain --config "configs/$dataset/pretrain.yaml" "${common[@]}" output_dir="$root/pretrain"
  launch finetune --config "configs/$dataset/finetune.yaml" "${common[@]}" \
    checkpoint="$root/pretrain/best" output_dir="$root/finetune"
  launch rl --config "configs/$dataset/rl.yaml" "${common[@]}" \
    checkpoint="$root/finetune/best" output_dir="$root/rl"
  # the RL term's control (the same steps and anchor without it), where rl.yaml has an anchor
  if python -c "import sys, yaml; sys.exit(not (yaml.safe_load(open(sys.argv[1])) or {}).get('sft_weight'))" \
      "configs/$dataset/rl.yaml"; then
    launch rl --config "configs/$dataset/rl.yaml" "${common[@]}" control=true \
      checkpoint="$root/finetune/best" output_dir="$root/rl-control"
  fi
  python -m etegrl.report "$root" > /dev/null
done
python bench/aggregate.py "${roots[@]}" --out "runs/$dataset-quality.md"
