"""Segment images: python scripts/predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=FOLDER [tta.flip=true]"""

import hydra
from omegaconf import DictConfig

from seg.deployment import model_source
from seg.engine.predict import predict
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict(cfg, source=model_source(cfg))


if __name__ == "__main__":
    check_overrides(__file__, "predict")
    main()
