"""Pascal Context on VOC2010, as mmsegmentation prepares and reads it: 59 classes (background ignored) or 60.

Layout under ``root`` (the folder that holds ``VOCdevkit/``; ``VOCdevkit/VOC2010`` itself works too)::

    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/<id>.png        0 = background, 1..59 = the 59 classes
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt     4,996 / 5,104 ids

``SegmentationClassContext/`` and the split lists are written from the official ``trainval_merged.json`` by
``scripts/prepare_pascal_context.py`` (``seg.data.pascal_context_json``) or by mmsegmentation's
``tools/dataset_converters/pascal_context.py`` (which needs the Detail API, not on PyPI); see docs/datasets.md.
The masks hold 0..59: the 59 classes in alphabetical order, everything else background (0).

``reduce_zero_label=True`` (the default) is mmsegmentation's ``PascalContextDataset59``: background becomes 255
(ignored), 1..59 become 0..58, the 59-class benchmark. ``reduce_zero_label=False`` is ``PascalContextDataset``:
60 classes, background class 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from seg.data.ade20k import ADE20K_COLOURS, class_palette
from seg.data.base import DatasetError, SegmentationDataset, not_found, read_mask, resolve_classes
from seg.data.label_table import apply_table, identity, pair_samples
from seg.data.label_table import reduce_zero_label as background_ignored
from seg.data.voc import find_voc_folder, read_split_file

CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)
CONTEXT60_CLASSES = ("background",) + CONTEXT59_CLASSES

# mmsegmentation's PascalContextDataset palette (background first; PascalContextDataset59 drops the first colour)
# is the first 60 colours of its ADE20K palette.
CONTEXT60_COLOURS = ADE20K_COLOURS[:60]

SPLIT_FOLDER = Path("ImageSets") / "SegmentationContext"
MASK_FOLDER = "SegmentationClassContext"
ALL_SPLIT = "all"  # train.txt + val.txt


def find_context_folder(root: Union[str, Path, None]) -> Path:
    """The folder holding ``JPEGImages/``: ``root/VOCdevkit/VOC2010``, ``root/VOC2010`` or ``root``."""
    return find_voc_folder(root, "2010", "Pascal Context layout (VOC2010/JPEGImages/)")


class PascalContextSegmentation(SegmentationDataset):
    """``split``: ``train``, ``val`` (ImageSets/SegmentationContext/<split>.txt) or ``all`` (train + val)."""

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, reduce_zero_label: bool = True):
        if not isinstance(reduce_zero_label, bool):
            raise DatasetError(f"dataset.reduce_zero_label must be true (59 classes, background ignored) or false "
                               f"(60 classes with background), got {reduce_zero_label!r}")
        folder = find_context_folder(root)
        ids = []
        for name in (("train", "val") if split == ALL_SPLIT else (split,)):
            split_file = folder / SPLIT_FOLDER / f"{name}.txt"
            if not split_file.is_file():
                raise not_found(f"split file of split {name!r}", split_file,
                                "scripts/prepare_pascal_context.py writes it from trainval_merged.json")
            ids += read_split_file(split_file)
        samples, problems = pair_samples(
            [(i, folder / "JPEGImages" / f"{i}.jpg") for i in ids],
            lambda i, image: [folder / MASK_FOLDER / f"{i}.png"])
        default = CONTEXT59_CLASSES if reduce_zero_label else CONTEXT60_CLASSES
        names = resolve_classes(default, num_classes, class_names, fixed=True)
        colours = CONTEXT60_COLOURS[1:] if reduce_zero_label else CONTEXT60_COLOURS
        self.labels = (background_ignored(len(CONTEXT59_CLASSES)) if reduce_zero_label
                       else identity(len(CONTEXT60_CLASSES)))
        super().__init__(folder, split, samples, names, class_palette(colours), problems,
                         label_decoding={"reduce_zero_label": reduce_zero_label})

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        return apply_table(read_mask(path), self.labels, path, "Pascal Context labels (0 = background, 1-59, 255)")
