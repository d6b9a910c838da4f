"""The GRPO stage: ``accelerate launch -m rl --config configs/<dataset>/rl.yaml``."""
