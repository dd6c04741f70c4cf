"""Pascal VOC 2012 layout: VOC itself, the SBD-augmented ``train_aug`` split, and your own data in that layout.

Layout under the VOC folder (``VOCdevkit/VOC2012``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png           palette PNGs: pixel value = class index, 255 = ignore (object borders)
    SegmentationClassAug/<id>.png        written by scripts/prepare_sbd.py, read for splits ending in "_aug"
    ImageSets/Segmentation/<split>.txt   one id per line

torchvision's ``VOCSegmentation`` reads the same files but only accepts the official splits and the
``VOCdevkit/VOC2012`` nesting, so the few lines of listing are written out here.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from seg.data.base import DatasetError, Sample, SegmentationDataset, not_found, resolve_classes
from seg.data.palette import colour_map

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_palette() -> np.ndarray:
    """The VOC colour map (the one stored in VOC's PNGs) for all 256 values; 255 is (224, 224, 192)."""
    return colour_map(256)


def find_voc_folder(root: Union[str, Path, None], year: str = "2012",
                    layout: str = "VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)") -> Path:
    """The folder holding ``JPEGImages/``: ``root/VOCdevkit/VOC<year>``, ``root/VOC<year>`` or root (Pascal Context
    lives in VOC2010's)."""
    if root is None:
        raise DatasetError("dataset.root is required: the folder that holds VOCdevkit/ (see docs/datasets.md)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise not_found("dataset root", root)
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (candidate / "ImageSets" / "Segmentation").is_dir() or (candidate / "JPEGImages").is_dir():
            return candidate
    raise not_found(layout, root / "VOCdevkit" / f"VOC{year}")


def read_split_file(path: Path) -> List[str]:
    """Ids listed one per line (only the first column is used); blank lines are skipped.

    ``utf-8-sig`` drops the byte-order mark some Windows editors put at the start (it would stick to the first id).
    """
    return [line.split()[0] for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def mask_folder(split: str) -> str:
    return "SegmentationClassAug" if split.endswith("_aug") else "SegmentationClass"


class VOCSegmentation(SegmentationDataset):
    """A split of a VOC-layout folder.

    ``num_classes`` / ``class_names`` default to VOC's 21 classes; give them for your own data in this layout.
    ``image_suffix`` is the extension of the files in ``JPEGImages/`` (``.jpg`` for VOC).
    """

    def __init__(self, root: Union[str, Path], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, image_suffix: str = ".jpg"):
        folder = find_voc_folder(root)
        split_file = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            hint = "run scripts/prepare_sbd.py to create it" if split.endswith("_aug") else ""
            raise not_found(f"split file of split {split!r}", split_file, hint)
        ids = read_split_file(split_file)
        if not ids:
            raise DatasetError(f"split file {split_file} is empty: it lists no images")
        masks = folder / mask_folder(split)
        samples = [Sample(i, folder / "JPEGImages" / f"{i}{image_suffix}", masks / f"{i}.png") for i in ids]
        names = resolve_classes(VOC_CLASSES, num_classes, class_names, fixed=False)
        super().__init__(folder, split, samples, names, voc_palette())
