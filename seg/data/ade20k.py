"""ADE20K, the MIT SceneParsing release (ADEChallengeData2016): 150 classes, 0 ("other") ignored.

Layout under ``root`` (the folder that holds ``ADEChallengeData2016/``, or that folder itself)::

    ADEChallengeData2016/images/training/ADE_train_<8 digits>.jpg       20,210 images
    ADEChallengeData2016/images/validation/ADE_val_<8 digits>.jpg       2,000 images
    ADEChallengeData2016/annotations/{training,validation}/<stem>.png   8-bit: 0 = other, 1..150 = classes

As mmsegmentation's ``ADE20KDataset`` (``reduce_zero_label=True``): value 0 becomes 255 and is never trained on
nor scored, values 1..150 become classes 0..149. The names and palette are mmsegmentation's (the first name of
each row of SceneParsing's ``objectInfo150.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from seg.data.base import DatasetError, SegmentationDataset, not_found, read_mask, resolve_classes
from seg.data.colors import palette_with
from seg.data.label_table import apply_table, pair_samples, reduce_zero_label

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

# mmsegmentation's ADE20KDataset.METAINFO["palette"], one colour per class.
ADE20K_COLOURS = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

FOLDER = "ADEChallengeData2016"
SPLITS = {"train": ("training",), "val": ("validation",), "all": ("training", "validation"),
          "training": ("training",), "validation": ("validation",)}
LABELS = reduce_zero_label(len(ADE20K_CLASSES))


def class_palette(colours: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 ``[256, 3]``: class i drawn in ``colours[i]``, every other value black."""
    return palette_with(colours, np.zeros((256, 3), dtype=np.uint8))


def find_ade_folder(root: Union[str, Path, None]) -> Path:
    """``root/ADEChallengeData2016`` or ``root`` itself, whichever holds ``images/`` and ``annotations/``."""
    if root is None:
        raise DatasetError("dataset.root is required: the folder that holds ADEChallengeData2016/ "
                           "(see docs/datasets.md)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise not_found("dataset root", root)
    for candidate in (root / FOLDER, root):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise not_found("ADE20K layout (images/ and annotations/)", root / FOLDER)


class ADE20KSegmentation(SegmentationDataset):
    """``split``: ``train`` (images/training), ``val`` (images/validation) or ``all`` (both)."""

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None):
        if split not in SPLITS:
            raise DatasetError(f"dataset.split must be train, val or all for ADE20K, got {split!r}")
        folder = find_ade_folder(root)
        images = []
        for subset in SPLITS[split]:
            if not (folder / "images" / subset).is_dir():
                raise not_found("ADE20K folder", folder / "images" / subset)
            images += [(path.stem, path) for path in sorted((folder / "images" / subset).glob("*.jpg"))]
        samples, problems = pair_samples(
            images, lambda stem, image: [folder / "annotations" / image.parent.name / f"{stem}.png"])
        names = resolve_classes(ADE20K_CLASSES, num_classes, class_names, fixed=True)
        super().__init__(folder, split, samples, names, class_palette(ADE20K_COLOURS), problems,
                         label_decoding={"reduce_zero_label": True})

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        return apply_table(read_mask(path), LABELS, path, "ADE20K labels (0 = other, 1-150 = classes)")
