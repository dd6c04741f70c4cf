"""Evaluate a checkpoint: python scripts/evaluate.py ckpt=PATH [dataset=...] [os=8] [tta.scales=...] [tta.flip=true]"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.deployment import model_source
from seg.engine.evaluation import evaluate_checkpoint
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg, Path(HydraConfig.get().runtime.output_dir), source=model_source(cfg))


if __name__ == "__main__":
    check_overrides(__file__, "evaluate")
    main()
