"""etegrl: the core shared by the pretrain, finetune and rl stages."""

__version__ = "0.1.0"
