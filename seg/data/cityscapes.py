"""Cityscapes fine annotations mapped to the 19 evaluation classes (train ids).

Layout under ``root``::

    leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       ids of LABELS below
    gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  optional, preferred when present

The file naming is torchvision's ``Cityscapes`` convention; its class only lists ``labelIds`` targets, so the
listing (a sorted glob) is done here to prefer ``labelTrainIds`` when cityscapesScripts has written them.
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from seg.data.base import IGNORE_INDEX, DatasetError, Sample, SegmentationDataset, not_found, read_mask, resolve_classes

Label = namedtuple("Label", ["name", "id", "train_id", "color"])

# cityscapesScripts' helpers/labels.py: name, id, trainId, color. trainId 255 and -1 are not evaluated.
LABELS = (
    Label("unlabeled", 0, 255, (0, 0, 0)),
    Label("ego vehicle", 1, 255, (0, 0, 0)),
    Label("rectification border", 2, 255, (0, 0, 0)),
    Label("out of roi", 3, 255, (0, 0, 0)),
    Label("static", 4, 255, (0, 0, 0)),
    Label("dynamic", 5, 255, (111, 74, 0)),
    Label("ground", 6, 255, (81, 0, 81)),
    Label("road", 7, 0, (128, 64, 128)),
    Label("sidewalk", 8, 1, (244, 35, 232)),
    Label("parking", 9, 255, (250, 170, 160)),
    Label("rail track", 10, 255, (230, 150, 140)),
    Label("building", 11, 2, (70, 70, 70)),
    Label("wall", 12, 3, (102, 102, 156)),
    Label("fence", 13, 4, (190, 153, 153)),
    Label("guard rail", 14, 255, (180, 165, 180)),
    Label("bridge", 15, 255, (150, 100, 100)),
    Label("tunnel", 16, 255, (150, 120, 90)),
    Label("pole", 17, 5, (153, 153, 153)),
    Label("polegroup", 18, 255, (153, 153, 153)),
    Label("traffic light", 19, 6, (250, 170, 30)),
    Label("traffic sign", 20, 7, (220, 220, 0)),
    Label("vegetation", 21, 8, (107, 142, 35)),
    Label("terrain", 22, 9, (152, 251, 152)),
    Label("sky", 23, 10, (70, 130, 180)),
    Label("person", 24, 11, (220, 20, 60)),
    Label("rider", 25, 12, (255, 0, 0)),
    Label("car", 26, 13, (0, 0, 142)),
    Label("truck", 27, 14, (0, 0, 70)),
    Label("bus", 28, 15, (0, 60, 100)),
    Label("caravan", 29, 255, (0, 0, 90)),
    Label("trailer", 30, 255, (0, 0, 110)),
    Label("train", 31, 16, (0, 80, 100)),
    Label("motorcycle", 32, 17, (0, 0, 230)),
    Label("bicycle", 33, 18, (119, 11, 32)),
    Label("license plate", -1, -1, (0, 0, 142)),
)

TRAIN_LABELS = sorted((label for label in LABELS if 0 <= label.train_id < IGNORE_INDEX),
                      key=lambda label: label.train_id)
CITYSCAPES_CLASSES = tuple(label.name for label in TRAIN_LABELS)


def _id_to_train_id():
    """Lookup table over uint8 label ids -> train id (255 = ignore), and which ids may appear in a labelIds PNG.

    ``license plate`` (id -1) is never drawn into the official PNGs; if a tool wrote it, a uint8 holds it as 255.
    """
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for label in LABELS:
        value = label.id % 256
        table[value] = label.train_id if 0 <= label.train_id < IGNORE_INDEX else IGNORE_INDEX
        known[value] = True
    return table, known


ID_TO_TRAIN_ID, KNOWN_IDS = _id_to_train_id()


def _train_id_to_id() -> np.ndarray:
    """Lookup table over uint8 train ids -> label id, the values the test server scores; anything that is not one
    of the 19 train ids (255 included) becomes 0, ``unlabeled``, which the server does not evaluate."""
    table = np.zeros(256, dtype=np.uint8)
    for label in TRAIN_LABELS:
        table[label.train_id] = label.id
    return table


TRAIN_ID_TO_ID = _train_id_to_id()


def cityscapes_palette() -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in TRAIN_LABELS:
        palette[label.train_id] = label.color
    return palette


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """A prediction in train ids ``[H, W]`` -> Cityscapes label ids (uint8), as the benchmark server expects."""
    return TRAIN_ID_TO_ID[train_ids]


def label_ids_to_train_ids(ids: np.ndarray, path: Path) -> np.ndarray:
    """Map a labelIds mask to train ids; an id that is not in ``LABELS`` is an error naming the file."""
    unknown = np.flatnonzero(np.bincount(ids.ravel(), minlength=256) * ~KNOWN_IDS)
    if unknown.size:
        raise DatasetError(f"mask {path} holds values {unknown.tolist()} that are not Cityscapes label ids (0-33)")
    return ID_TO_TRAIN_ID[ids]


class CityscapesSegmentation(SegmentationDataset):
    """``split`` is ``train``, ``val`` or ``test`` (test labels are all void)."""

    def __init__(self, root: Union[str, Path], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None):
        if root is None:
            raise DatasetError("dataset.root is required: the folder that holds leftImg8bit/ and gtFine/ "
                               "(see docs/datasets.md)")
        root = Path(root).expanduser()
        images = root / "leftImg8bit" / split
        labels = root / "gtFine" / split
        for folder in (root, images, labels):
            if not folder.is_dir():
                raise not_found("Cityscapes folder", folder)
        samples = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            mask = labels / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            if not mask.is_file():
                mask = mask.with_name(f"{stem}_gtFine_labelIds.png")
            samples.append(Sample(stem, image, mask))
        if not samples:
            raise DatasetError(f"split {split!r} of {root} is empty: no {images}/<city>/*_leftImg8bit.png files")
        names = resolve_classes(CITYSCAPES_CLASSES, num_classes, class_names, fixed=True)
        super().__init__(root, split, samples, names, cityscapes_palette())

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        mask = read_mask(path)
        if path.name.endswith("_labelIds.png"):
            return label_ids_to_train_ids(mask, path)
        return mask
