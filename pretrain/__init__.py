"""The ETEGRec pretrain stage: ``accelerate launch -m pretrain --config configs/<dataset>/pretrain.yaml``."""
