"""accelerate launch -m pretrain --config configs/<dataset>/pretrain.yaml [key=value ...]"""

import sys

from etegrl.runs import run_stage

from .config import PretrainConfig
from .loop import PretrainStage


def main(argv=None) -> int:
    return run_stage(PretrainConfig, PretrainStage, argv, prog="accelerate launch -m pretrain")


if __name__ == "__main__":
    sys.exit(main())
