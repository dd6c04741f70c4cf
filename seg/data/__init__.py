"""Datasets, augmentation pipelines and sample validation.

``build_dataset(name, root, split, num_classes=None, class_names=None, **options)`` builds any dataset from the
keys of a ``configs/dataset/*.yaml`` file (less ``val_split``, and ``ignore_index`` unless it is not 255: the ignore
value of ``folder``'s 16-bit masks); ``DATASETS`` is the registry.
Class weights against imbalance (``seg.data.class_weights``) are computed from a dataset's masks.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional, Sequence, Union

from seg.data.ade20k import ADE20K_CLASSES, ADE20KSegmentation
from seg.data.base import IGNORE_INDEX, DatasetError, Sample, SegmentationDataset
from seg.data.check import CheckReport, check_dataset
from seg.data.cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation
from seg.data.coco import COCOSegmentation
from seg.data.coco_json import COCOJSONSegmentation
from seg.data.coco_stuff import COCO_STUFF_CLASSES, COCOStuffSegmentation
from seg.data.folder import FolderSegmentation
from seg.data.labelme import LabelMeSegmentation
from seg.data.mask_exports import CVATSegmentation, RoboflowSegmentation
from seg.data.pascal_context import CONTEXT59_CLASSES, PascalContextSegmentation
from seg.data.synthetic import SYNTHETIC_CLASSES, synthetic_dataset
from seg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MEAN_PIXEL,
    TransformedDataset,
    eval_transform,
    normalize,
    pad_collate,
    train_transform,
    worker_init_fn,
)
from seg.data.voc import VOC_CLASSES, VOCSegmentation

# name -> class or factory taking (root, split, num_classes, class_names, **format options).
# voc_aug is the VOC reader too: splits ending in "_aug" read SegmentationClassAug/.
DATASETS = {
    "synthetic": synthetic_dataset,
    "voc": VOCSegmentation,
    "voc_aug": VOCSegmentation,
    "cityscapes": CityscapesSegmentation,
    "coco": COCOSegmentation,
    "folder": FolderSegmentation,
    # the field's benchmarks (mmsegmentation's layouts and label conventions)
    "ade20k": ADE20KSegmentation,
    "coco_stuff": COCOStuffSegmentation,
    "pascal_context": PascalContextSegmentation,
    # annotation tools' exports (docs/datasets.md, "Annotation tools")
    "coco_json": COCOJSONSegmentation,
    "labelme": LabelMeSegmentation,
    "cvat": CVATSegmentation,
    "roboflow": RoboflowSegmentation,
}


def dataset_options(name: str) -> list:
    """The format-specific options (beyond root, split, num_classes, class_names) that dataset ``name`` takes."""
    if name not in DATASETS:
        raise DatasetError(f"dataset.name must be one of {sorted(DATASETS)}, got {name!r}")
    common = {"self", "root", "split", "num_classes", "class_names", "channels"}  # channels: build_dataset's own
    return [p for p in inspect.signature(DATASETS[name]).parameters if p not in common]


def build_dataset(name: str, root: Union[str, Path, None], split: str, num_classes: Optional[int] = None,
                  class_names: Optional[Sequence[str]] = None, strict: bool = True, channels: int = 3,
                  **options) -> SegmentationDataset:
    """Build a dataset split; unknown option keys are an error naming the allowed ones.

    ``channels`` (``dataset.channels``): the bands every image must have; 3 reads RGB as always, any other count
    the files' own bands (``seg.data.channels``).

    ``strict``: a dataset whose listing found problems (``dataset.problems``, e.g. an image without a mask) is an
    error naming the first one; ``check_dataset`` builds with ``strict=False`` to report them all.
    """
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DatasetError(f"unknown option(s) {', '.join('dataset.' + k for k in unknown)} for dataset {name!r}; "
                           f"it takes dataset.root, dataset.split, dataset.num_classes, dataset.class_names"
                           f"{''.join(', dataset.' + k for k in allowed)}")
    if channels != 3 and "channels" in inspect.signature(DATASETS[name]).parameters:  # synthetic: generated so
        options["channels"] = channels
    dataset = DATASETS[name](root=root, split=split, num_classes=num_classes, class_names=class_names, **options)
    if channels != 3:
        dataset.channels = channels
    if strict and dataset.problems:
        more = f" (and {len(dataset.problems) - 1} more problems)" if len(dataset.problems) > 1 else ""
        raise DatasetError(f"{dataset.problems[0]}{more}; python scripts/check_dataset.py dataset={name} "
                           f"dataset.root={root} ... lists them all")
    return dataset


__all__ = [
    "ADE20K_CLASSES", "ADE20KSegmentation", "COCO_STUFF_CLASSES", "COCOStuffSegmentation", "CONTEXT59_CLASSES",
    "PascalContextSegmentation",
    "CITYSCAPES_CLASSES", "DATASETS", "FolderSegmentation", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD",
    "MEAN_PIXEL",
    "SYNTHETIC_CLASSES", "VOC_CLASSES", "CheckReport", "CityscapesSegmentation", "COCOSegmentation", "DatasetError",
    "COCOJSONSegmentation", "CVATSegmentation", "LabelMeSegmentation", "RoboflowSegmentation",
    "Sample", "SegmentationDataset", "TransformedDataset", "VOCSegmentation", "build_dataset", "check_dataset",
    "dataset_options", "eval_transform", "normalize", "pad_collate", "synthetic_dataset", "train_transform",
    "worker_init_fn",
]
