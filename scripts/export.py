"""Export a checkpoint: python scripts/export.py ckpt=PATH output=model.ts [format=torchscript|onnx|export] [os=8]"""

import hydra
from omegaconf import DictConfig

from seg.errors import exit_on_user_error
from seg.export import export_checkpoint
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export_checkpoint(cfg)


if __name__ == "__main__":
    check_overrides(__file__, "export")
    main()
