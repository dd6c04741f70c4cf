"""COCO 2017 instance annotations turned into 21-class VOC semantic masks, as torchvision's reference does.

Layout under ``root``: ``annotations/instances_<split>2017.json`` and ``<split>2017/*.jpg``.

The conversion follows torchvision's ``references/segmentation/coco_utils.py`` exactly: only the 20 COCO
categories that are VOC classes are kept (``CAT_LIST``, position = VOC class index), each instance is rasterised
with pycocotools, a pixel takes the largest class index of the instances covering it, and pixels covered by more
than one instance become 255. For the ``train`` split, images whose kept annotations cover ``min_area`` pixels or
fewer (by the annotations' ``area`` field) are dropped, as torchvision's
``_coco_remove_images_without_annotations`` does.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from seg.data.base import DatasetError, Sample, SegmentationDataset, not_found, resolve_classes
from seg.data.voc import VOC_CLASSES, voc_palette

# COCO category id of each VOC class (index 0, background, has none).
CAT_LIST = [0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]
# COCO 2017's names of those categories: a file that names them otherwise is not COCO 2017 (an annotation tool's
# export with its own categories), and reading it by id would be silently wrong.
COCO_NAMES = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 9: "boat",
              16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 44: "bottle", 62: "chair",
              63: "couch", 64: "potted plant", 67: "dining table", 72: "tv"}


def check_coco_2017(categories: Dict[int, dict], path: Path) -> None:
    """Refuse a file whose categories are not COCO 2017's: its ids would be read as COCO's classes."""
    wrong = [(i, c.get("name")) for i, c in sorted(categories.items()) if i in COCO_NAMES and c.get("name") !=
             COCO_NAMES[i]]
    if wrong or not any(i in COCO_NAMES for i in categories):
        example = (f"category id {wrong[0][0]} is {wrong[0][1]!r}, COCO 2017's is {COCO_NAMES[wrong[0][0]]!r}" if wrong
                   else "it has none of the 20 COCO categories that are VOC classes")
        raise DatasetError(f"{path} is not COCO 2017 ({example}): dataset=coco maps COCO 2017's categories to VOC's "
                           f"21 classes; for your own categories use dataset=coco_json dataset.root=...")


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) -> uint8 0/1 ``[H, W]``."""
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), (str, bytes)):
        return coco_mask.decode(segmentation)  # compressed RLE: pycocotools reads it directly
    if isinstance(segmentation, list) and not segmentation:
        return np.zeros((height, width), dtype=np.uint8)
    decoded = coco_mask.decode(coco_mask.frPyObjects(segmentation, height, width))
    if decoded.ndim == 3:  # one plane per polygon of the instance
        decoded = decoded.any(axis=2)
    return decoded.astype(np.uint8)


def semantic_mask(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """VOC class mask from annotations whose ``category_id`` is already a VOC class index (torchvision's merge)."""
    if not annotations:
        return np.zeros((height, width), dtype=np.uint8)
    masks = np.stack([decode_segmentation(a["segmentation"], height, width) for a in annotations])
    classes = np.array([a["category_id"] for a in annotations], dtype=np.uint8)
    target = (masks * classes[:, None, None]).max(axis=0)
    target[masks.sum(axis=0) > 1] = 255
    return target


class COCOSegmentation(SegmentationDataset):
    """``split`` is ``train`` or ``val`` (``<split>2017``); ``min_area=None`` keeps every training image."""

    def __init__(self, root: Union[str, Path], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, min_area: Optional[float] = 1000):
        if root is None:
            raise DatasetError("dataset.root is required: the folder that holds annotations/ and train2017/ "
                               "(see docs/datasets.md)")
        root = Path(root).expanduser()
        self.annotation_file = root / "annotations" / f"instances_{split}2017.json"
        images = root / f"{split}2017"
        for path in (root, self.annotation_file, images):
            if not path.exists():
                raise not_found("COCO file" if path.suffix else "COCO folder", path)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
                coco = COCO(str(self.annotation_file))
        except (AssertionError, ValueError, KeyError, TypeError) as error:  # pycocotools asserts on a non-dict file
            raise DatasetError(f"cannot read COCO annotations {self.annotation_file}: {error!r}") from None

        check_coco_2017(coco.cats, self.annotation_file)
        # Keep only what a sample needs (file, size, VOC-class annotations): the COCO object is large and would
        # be copied into every data-loader worker.
        samples: List[Sample] = []
        self.image_info: List[Dict] = []
        for image_id in sorted(coco.imgs):
            info = coco.imgs[image_id]
            kept = [a for a in coco.imgToAnns.get(image_id, []) if a["category_id"] in CAT_LIST]
            if split == "train" and min_area is not None and (not kept or sum(a["area"] for a in kept) <= min_area):
                continue
            annotations = [{"category_id": CAT_LIST.index(a["category_id"]), "segmentation": a["segmentation"]}
                           for a in kept]
            samples.append(Sample(Path(info["file_name"]).stem, images / info["file_name"]))
            self.image_info.append({"height": info["height"], "width": info["width"], "annotations": annotations})
        names = resolve_classes(VOC_CLASSES, num_classes, class_names, fixed=True)
        if not samples and coco.imgs:
            raise DatasetError(f"split {split!r} of {root} is empty: every one of its {len(coco.imgs)} images has "
                               f"VOC-class annotations covering dataset.min_area={min_area} pixels or fewer; lower "
                               f"it or set dataset.min_area=null to keep every image")
        super().__init__(root, split, samples, names, voc_palette())

    def load_mask(self, index: int) -> np.ndarray:
        info = self.image_info[index]
        try:
            return semantic_mask(info["annotations"], info["height"], info["width"])
        except (TypeError, ValueError, KeyError, IndexError) as error:  # a malformed polygon or RLE
            raise DatasetError(f"cannot decode {self.mask_source(index)}: {error!r}") from None

    def mask_source(self, index: int) -> str:
        return f"the annotations of {self.samples[index].image.name} in {self.annotation_file}"
