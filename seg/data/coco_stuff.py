"""COCO-Stuff-164k: the COCO 2017 images with 80 thing and 91 stuff classes, 171 classes in all.

Layout under ``root`` (mmsegmentation's ``coco_stuff164k/``)::

    images/{train2017,val2017}/<12 digits>.jpg                   (or train2017/, val2017/ directly under root)
    annotations/{train2017,val2017}/<stem>_labelTrainIds.png     class indices 0..170, 255 = unlabeled
    annotations/{train2017,val2017}/<stem>.png                   or the raw maps of stuffthingmaps_trainval2017.zip
    stuffthingmaps_trainval2017/{train2017,val2017}/<stem>.png   (the same raw maps, unzipped into their own folder)

The raw maps hold COCO category id - 1 (0..181; 11 ids of COCO's 182 are never used) and 255 for unlabeled.
They are mapped to 0..170 exactly as mmsegmentation's ``tools/dataset_converters/coco_stuff164k.py`` does (the
used ids in order), on the fly, so that the converter need not be run; its ``_labelTrainIds.png`` files are
preferred when present. Names and palette are mmsegmentation's ``COCOStuffDataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from seg.data.ade20k import class_palette
from seg.data.base import IGNORE_INDEX, DatasetError, SegmentationDataset, not_found, read_mask, resolve_classes
from seg.data.label_table import apply_table, identity, pair_samples, table_from_mapping

COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard",
    "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone",
    "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud",
    "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield",
    "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

# mmsegmentation's COCOStuffDataset palette, one colour per class.
COCO_STUFF_COLOURS = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192), (128, 128, 0),
    (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160), (0, 32, 0),
    (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128), (0, 0, 128),
    (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128), (64, 0, 160),
    (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192), (0, 128, 32), (64, 224, 0),
    (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192), (0, 128, 160), (192, 224, 0), (0, 128, 64),
    (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32), (64, 160, 128), (128, 64, 64), (128, 0, 160),
    (64, 32, 128), (128, 192, 192), (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96), (192, 32, 0),
    (128, 64, 128), (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0), (0, 192, 128),
    (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128), (64, 0, 96),
    (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128), (64, 0, 224), (192, 224, 128),
    (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96), (0, 224, 0), (64, 64, 64),
    (128, 128, 224), (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0), (64, 192, 64), (128, 128, 96),
    (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224), (0, 32, 128),
    (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64), (192, 0, 128),
    (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128), (64, 192, 160),
    (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128), (64, 64, 32), (0, 224, 192),
    (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128), (64, 64, 160), (128, 224, 192), (192, 128, 64),
    (192, 64, 32), (128, 96, 64), (192, 0, 192), (0, 192, 32), (64, 224, 64), (64, 0, 64), (128, 192, 160),
    (64, 96, 64), (64, 128, 192), (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32), (192, 32, 192),
    (64, 64, 192), (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192), (192, 192, 192),
    (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128), (64, 192, 96),
    (64, 160, 64), (64, 64, 0),
)

# Raw ids (COCO category id - 1) that COCO-Stuff never uses: the 11 thing ids COCO 2017 left out.
UNUSED_RAW_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
RAW_IDS = tuple(i for i in range(182) if i not in UNUSED_RAW_IDS)  # position = class index
RAW_LABELS = table_from_mapping({IGNORE_INDEX: IGNORE_INDEX, **{raw: index for index, raw in enumerate(RAW_IDS)}})
TRAIN_ID_LABELS = identity(len(COCO_STUFF_CLASSES))
SPLITS = {"train": ("train2017",), "val": ("val2017",), "all": ("train2017", "val2017"),
          "train2017": ("train2017",), "val2017": ("val2017",)}
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"
RAW_FOLDER = "stuffthingmaps_trainval2017"


def image_folder(root: Path, subset: str) -> Path:
    """``root/images/<subset>`` (mmsegmentation's layout), else ``root/<subset>`` (COCO's own)."""
    for candidate in (root / "images" / subset, root / subset):
        if candidate.is_dir():
            return candidate
    raise not_found("COCO-Stuff image folder", root / "images" / subset)


class COCOStuffSegmentation(SegmentationDataset):
    """``split``: ``train`` (train2017), ``val`` (val2017) or ``all`` (both)."""

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None):
        if root is None:
            raise DatasetError("dataset.root is required: the folder that holds images/ and annotations/ "
                               "(see docs/datasets.md)")
        if split not in SPLITS:
            raise DatasetError(f"dataset.split must be train, val or all for COCO-Stuff, got {split!r}")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise not_found("dataset root", root)
        images = []
        for subset in SPLITS[split]:
            images += [(path.stem, path) for path in sorted(image_folder(root, subset).glob("*.jpg"))]

        def candidates(stem: str, image: Path):
            subset = image.parent.name
            return [root / "annotations" / subset / f"{stem}{TRAIN_IDS_SUFFIX}",
                    root / "annotations" / subset / f"{stem}.png", root / RAW_FOLDER / subset / f"{stem}.png"]

        samples, problems = pair_samples(images, candidates)
        names = resolve_classes(COCO_STUFF_CLASSES, num_classes, class_names, fixed=True)
        super().__init__(root, split, samples, names, class_palette(COCO_STUFF_COLOURS), problems,
                         label_decoding={"coco_stuff_raw_ids": list(RAW_IDS)})

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        if path.name.endswith(TRAIN_IDS_SUFFIX):
            return apply_table(read_mask(path), TRAIN_ID_LABELS, path, "COCO-Stuff train ids (0-170, 255)")
        return apply_table(read_mask(path), RAW_LABELS, path,
                           f"COCO-Stuff ids (0-181 less the unused {list(UNUSED_RAW_IDS)}, 255 = unlabeled)")
