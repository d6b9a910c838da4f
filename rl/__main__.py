"""accelerate launch -m rl --config configs/<dataset>/rl.yaml [key=value ...]"""

import sys

from etegrl.runs import run_stage

from .config import RLConfig
from .loop import RLStage


def main(argv=None) -> int:
    return run_stage(RLConfig, RLStage, argv, prog="accelerate launch -m rl")


if __name__ == "__main__":
    sys.exit(main())
