"""The deployment table's accuracy column (benchmark ``ckpt=``): the checkpoint's model, its validation split, and
the mIoU of a model run as a table row runs it, so that every backend and precision is scored on the same images
with the same ``evaluate`` as evaluate.py."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from seg.benchmark.backends import Evaluation
from seg.config import dataset_kwargs
from seg.data import build_dataset
from seg.deployment.quantize import _First, calibration_images
from seg.engine.checkpoint import checkpoint_in, load_trained, model_from_checkpoint
from seg.engine.evaluation import evaluate, evaluation_dataset

CALIBRATION_IMAGES = 32  # int8 rows: the first images of the training split (not the ones the mIoU is measured on)


def checkpoint_rows(ckpt: str, output_stride: int, dataset: Mapping, limit: Optional[int],
                    device: torch.device) -> Tuple[nn.Module, Evaluation, Iterator[np.ndarray]]:
    """``(model, evaluation, calibration images)`` for ``backends_phase``: the checkpoint's weights at
    ``output_stride`` in eval mode, the mIoU on its dataset's validation split (the first ``limit`` images; the
    dataset's ``root`` replaced by ``dataset``'s where that names the same dataset with a root), and the images
    int8 is calibrated on."""
    path = checkpoint_in(ckpt)
    state = load_trained(path)
    trained = dict(state["config"]["dataset"])
    root = dataset.get("root")
    override = {"root": root} if dataset.get("name") == trained.get("name") and root not in (None, "???") else {}
    dataset_cfg, split = evaluation_dataset(trained, override)
    validation = build_dataset(**dataset_kwargs(dataset_cfg, split=split))
    if limit is not None:
        validation = _First(validation, limit)

    def evaluation(model: nn.Module, amp_dtype: Optional[torch.dtype]) -> float:
        return evaluate(model, validation, device, amp_dtype=amp_dtype).metrics["mIoU"]

    calibration = calibration_images(dataset_cfg["split"], CALIBRATION_IMAGES, dataset_cfg)
    return model_from_checkpoint(state, output_stride, Path(path)).eval(), evaluation, calibration
