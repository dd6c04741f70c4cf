"""Train DeepLabv3: python scripts/train.py backbone=resnet50 os=16 [dataset=...] [resume=PATH|auto]
On SLURM: python scripts/train.py hydra/launcher=submitit_slurm --multirun ... (docs/slurm.md)"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seg.config import overwrite_flag, training_inputs
from seg.engine import slurm
from seg.engine.checkpoint import checkpoint_in
from seg.engine.trainer import train
from seg.errors import Interrupted, exit_on_user_error
from seg.outputs import run_outputs
from seg.overrides import check_overrides

slurm.use_usr1()  # before the launcher imports submitit: SLURM's warning signal is the one the trainer stops on


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.resume is None and slurm.requeueable():
        cfg.resume = "auto"  # a requeued copy of this job continues in its run folder
    # str: resume=123 is a (missing) file, not a crash; a run folder means its checkpoints/last.pt
    resume = checkpoint_in(str(cfg.resume), resume=True) if cfg.resume and cfg.resume != "auto" else None
    if resume:
        cfg.resume = str(resume)
    if resume and resume.parent.name == "checkpoints":
        run_dir = resume.resolve().parent.parent  # keep writing into the resumed run
    if cfg.resume != "auto":  # resume=auto continues its own folder's run, or starts one where there is none
        run_outputs(run_dir, resume, training_inputs(cfg), overwrite_flag(cfg))  # another run's checkpoints stay
    try:
        train(cfg, run_dir)
    except Interrupted as stop:
        slurm.requeue_after(stop.exit_code)
        raise


if __name__ == "__main__":
    check_overrides(__file__, "train")
    main()
