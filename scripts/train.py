"""Train DeepLabv3: python scripts/train.py backbone=resnet50 os=16 [dataset=...] [resume=PATH]"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.config import overwrite_flag, training_inputs
from seg.engine.checkpoint import checkpoint_in
from seg.engine.trainer import train
from seg.errors import exit_on_user_error
from seg.outputs import run_outputs


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    # str: resume=123 is a (missing) file, not a crash; a run folder means its checkpoints/last.pt
    resume = checkpoint_in(str(cfg.resume), resume=True) if cfg.resume else None
    if resume:
        cfg.resume = str(resume)
    if resume and resume.parent.name == "checkpoints":
        run_dir = resume.resolve().parent.parent  # keep writing into the resumed run
    run_outputs(run_dir, resume, training_inputs(cfg), overwrite_flag(cfg))  # another run's checkpoints stay
    train(cfg, run_dir)


if __name__ == "__main__":
    main()
