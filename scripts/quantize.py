"""Static int8 quantization: python scripts/quantize.py ckpt=PATH calibration=val n=64 output=model.int8.onnx"""

import hydra
from omegaconf import DictConfig

from seg.deployment.quantize import quantize_checkpoint
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="quantize")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    quantize_checkpoint(cfg)


if __name__ == "__main__":
    check_overrides(__file__, "quantize")
    main()
