"""accelerate launch -m pretrain --config configs/<dataset>/pretrain.yaml [key=value ...]"""

import json
import sys
from pathlib import Path

from etegrl.checkpoint import CheckpointError
from etegrl.codes import CodeTableError
from etegrl.config import ConfigError, parse_args
from etegrl.data import DataError
from etegrl.embeddings import EmbeddingError
from etegrl.runs import claim_output, mark_done

from .config import PretrainConfig
from .loop import PretrainStage


def main(argv=None) -> int:
    from accelerate import PartialState

    # One process trains for now; others leave at once (multi-process training is planned).
    if not PartialState().is_main_process:
        return 0
    try:
        cfg = parse_args(PretrainConfig, argv, prog="accelerate launch -m pretrain")
        if claim_output(cfg, cfg.output_dir, "pretrain"):
            results = json.loads((Path(cfg.output_dir) / "results.json").read_text())
            print(f"{cfg.output_dir}: finished with this config; test {results['test']} "
                  f"(overwrite=true redoes it)")
            return 0
        stage = PretrainStage(cfg)
        try:
            stage.setup()
            stage.train()
        finally:
            stage.cleanup()
        mark_done(cfg.output_dir)
    except (ConfigError, DataError, EmbeddingError, CodeTableError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
