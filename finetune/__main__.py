"""accelerate launch -m finetune --config configs/<dataset>/finetune.yaml [key=value ...]"""

import sys

from etegrl.runs import run_stage

from .config import FinetuneConfig
from .loop import FinetuneStage


def main(argv=None) -> int:
    return run_stage(FinetuneConfig, FinetuneStage, argv, prog="accelerate launch -m finetune")


if __name__ == "__main__":
    sys.exit(main())
