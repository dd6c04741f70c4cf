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
from seg.data.channels import InputStats, stats_from_state
from seg.deployment.quantize import _First, calibration_images
from seg.deployment.sources import exported_metadata, exported_state
from seg.engine.checkpoint import checkpoint_in, load_trained, model_from_checkpoint
from seg.engine.evaluation import check_classes, evaluate, evaluation_dataset

CALIBRATION_IMAGES = 32  # int8 rows: the first images of the training split (not the ones the mIoU is measured on)


def checkpoint_rows(ckpt: str, output_stride: int, dataset: Mapping, limit: Optional[int],
                    device: torch.device) -> Tuple[nn.Module, Evaluation, Iterator[np.ndarray], InputStats]:
    """``(model, evaluation, calibration images, input stats)`` for ``backends_phase``: the checkpoint's weights at
    ``output_stride`` in eval mode, the mIoU on its dataset's validation split (the first ``limit`` images; the
    dataset's ``root`` replaced by ``dataset``'s where that names the same dataset with a root), the images int8
    is calibrated on, and the input the model expects."""
    path = checkpoint_in(ckpt)
    state = load_trained(path)
    trained = dict(state["config"]["dataset"])
    root = dataset.get("root")
    override = {"root": root} if dataset.get("name") == trained.get("name") and root not in (None, "???") else {}
    dataset_cfg, split = evaluation_dataset(trained, override)
    evaluation = validation_miou(state, dataset_cfg, split, limit, device)
    calibration = calibration_images(dataset_cfg["split"], CALIBRATION_IMAGES, dataset_cfg)
    model = model_from_checkpoint(state, output_stride, Path(path)).eval()
    return model, evaluation, calibration, stats_from_state(state)


def exported_rows(path: Path, dataset: Mapping, limit: Optional[int],
                  device: torch.device) -> Tuple[Evaluation, InputStats]:
    """``(evaluation, input stats)`` for ``time_variants`` of the exported file ``path``: the mIoU on
    ``dataset``'s validation split (the benchmark's ``dataset=``: the file records none; its first ``limit``
    images), and the input the file expects."""
    state = exported_state(path, exported_metadata(path, "openvino"))  # openvino: the backend that reads both kinds
    dataset_cfg, split = evaluation_dataset({}, {**dataset, "split": None})  # its split is the training one
    return validation_miou(state, dataset_cfg, split, limit, device), stats_from_state(state)


def validation_miou(state: Mapping, dataset_cfg: Mapping, split: str, limit: Optional[int],
                    device: torch.device) -> Evaluation:
    """``evaluate``'s mIoU on ``split`` of ``dataset_cfg`` (its first ``limit`` images, read with the channels
    of ``state``'s model, whose classes must be the dataset's), for a model run as a table row runs it."""
    stats = stats_from_state(state)
    validation = build_dataset(**{**dataset_kwargs(dataset_cfg, split=split), "channels": stats.channels})
    check_classes(state, validation.class_names, f"dataset {dataset_cfg['name']} split {split!r}")
    if limit is not None:
        validation = _First(validation, limit)

    def evaluation(model: nn.Module, amp_dtype: Optional[torch.dtype]) -> float:
        return evaluate(model, validation, device, amp_dtype=amp_dtype, stats=stats).metrics["mIoU"]

    return evaluation
