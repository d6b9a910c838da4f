"""The finetune stage: ``accelerate launch -m finetune --config configs/<dataset>/finetune.yaml``."""
