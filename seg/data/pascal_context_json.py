"""Pascal Context's masks and split lists from the official ``trainval_merged.json``, without the Detail API.

mmsegmentation prepares Pascal Context with ``tools/dataset_converters/pascal_context.py``, which reads the JSON
through the Detail API (``detail.Detail``: compiled, not on PyPI). What it does is small and written out here with
pycocotools (which decodes the same RLE): for each image of phase ``train`` / ``val``, a zero mask painted with
the ``category_id`` of each of the image's ``annos_segmentation`` entries, in file order (Detail's ``getMask``),
then the 60 category ids of ``CONTEXT_CATEGORY_IDS`` (sorted) mapped to 0..59 (the converter's ``_mapping``;
another id is an error, as the converter's assertion is). It writes ``VOC2010/SegmentationClassContext/<id>.png``
and ``VOC2010/ImageSets/SegmentationContext/{train,val}.txt`` (sorted ids), the files ``dataset=pascal_context``
reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from tqdm import tqdm

from seg.data.base import DatasetError, not_found
from seg.data.pascal_context import MASK_FOLDER, SPLIT_FOLDER, find_context_folder
from seg.outputs import check_outputs

# Category ids (of the 459 labels) of background and the 59 classes: mmsegmentation's converter's _mapping.
CONTEXT_CATEGORY_IDS = (
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295, 296,
    427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347, 220, 349,
    360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
)
CATEGORY_TO_LABEL = {category: label for label, category in enumerate(sorted(CONTEXT_CATEGORY_IDS))}
PHASES = ("train", "val")


def load_annotations(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read Pascal Context annotations {path}: {error}") from None
    if not isinstance(data, dict) or not {"images", "annos_segmentation"} <= set(data):
        raise DatasetError(f"{path} is not PASCAL in Detail's trainval_merged.json (it needs 'images' and "
                           f"'annos_segmentation')")
    return data


def context_mask(image: dict, annotations: List[dict], source: Path) -> np.ndarray:
    """The 0..59 label mask of one image: its annotations painted in order, category ids mapped to labels."""
    ids = np.zeros((image["height"], image["width"]), dtype=np.int32)
    for annotation in annotations:
        try:
            painted = coco_mask.decode(annotation["segmentation"])
        except (TypeError, ValueError, KeyError) as error:
            raise DatasetError(f"cannot decode annotation {annotation.get('id')} of image {image['file_name']} in "
                               f"{source}: {error!r}") from None
        if painted.shape != ids.shape:
            raise DatasetError(f"annotation {annotation.get('id')} of image {image['file_name']} in {source} is "
                               f"{painted.shape[1]}x{painted.shape[0]}, the image {ids.shape[1]}x{ids.shape[0]}")
        ids[painted != 0] = annotation["category_id"]
    unknown = sorted(set(np.unique(ids).tolist()) - set(CATEGORY_TO_LABEL))
    if unknown:
        raise DatasetError(f"image {image['file_name']} in {source} has category ids {unknown} that are not "
                           f"Pascal Context's 59 classes or background")
    table = np.zeros(max(CATEGORY_TO_LABEL) + 1, dtype=np.uint8)
    for category, label in CATEGORY_TO_LABEL.items():
        table[category] = label
    return table[ids]


def prepare_pascal_context(json_path: Union[str, Path], voc_root: Union[str, Path], overwrite: bool = False,
                           progress: bool = True) -> Dict[str, int]:
    """Write the masks and split lists; returns the number of images per split.

    Existing split lists or masks (an earlier run's, mmsegmentation's converter's) are replaced only with
    ``overwrite`` (``seg.outputs``)."""
    json_path = Path(json_path).expanduser()
    if not json_path.is_file():
        raise not_found("Pascal Context annotations (trainval_merged.json)", json_path)
    folder = find_context_folder(voc_root)
    split_files = {phase: folder / SPLIT_FOLDER / f"{phase}.txt" for phase in PHASES}
    check_outputs(list(split_files.values()), {"--json": json_path, "--voc": folder / "JPEGImages"}, None, overwrite,
                  folders=[folder / MASK_FOLDER], key="--voc", option="--overwrite")
    data = load_annotations(json_path)
    by_image: Dict[int, List[dict]] = {}
    for annotation in data["annos_segmentation"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    (folder / MASK_FOLDER).mkdir(exist_ok=True)
    (folder / SPLIT_FOLDER).mkdir(parents=True, exist_ok=True)
    counts = {}
    for phase in PHASES:
        images = [image for image in data["images"] if image.get("phase") == phase]
        ids = []
        for image in tqdm(images, desc=f"Pascal Context {phase}", unit="mask", disable=not progress):
            mask = context_mask(image, by_image.get(image["image_id"], []), json_path)
            stem = Path(image["file_name"]).stem
            Image.fromarray(mask).save(folder / MASK_FOLDER / f"{stem}.png")
            ids.append(stem)
        split_files[phase].write_text("".join(f"{i}\n" for i in sorted(ids)))
        counts[phase] = len(ids)
    return counts
