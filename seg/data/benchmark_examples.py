"""Tiny copies of the benchmark datasets' layouts (ADE20K, COCO-Stuff-164k, Pascal Context), to see what
``dataset.root`` must look like and to try the commands before downloading gigabytes.

The synthetic shapes are drawn with each format's own stored values, as the real files hold them: ADE20K's
0 = "other" background and 1..150, COCO-Stuff's raw ids (COCO category id - 1, 255 = unlabeled) in
``annotations/<split>2017/``, Pascal Context's 0 = background and 1..59 with its split lists. Shape k (1-5) is
stored as the value ``VALUES[format][k]``; the background as ``VALUES[format][0]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np
from PIL import Image

from seg.data.base import DatasetError
from seg.data.folder import write_split_lists
from seg.data.synthetic import render
from seg.outputs import check_outputs

# background, disc, square, triangle, ring, cross -> the value stored in the format's mask files
VALUES = {
    "ade20k": (0, 1, 3, 5, 13, 21),             # other, wall, sky, tree, person, car
    "coco_stuff": (255, 0, 2, 61, 105, 156),    # unlabeled, person, car, chair, clouds, sky-other (category id - 1)
    "pascal_context": (0, 1, 37, 14, 59, 56),   # background, aeroplane, person, car, wood, wall
}
FORMATS = tuple(VALUES)


def _splits(num_images: int) -> Dict[str, List[int]]:
    val = max(1, num_images // 4)
    return {"train": list(range(num_images - val)), "val": list(range(num_images - val, num_images))}


def _paths(fmt: str, out: Path, split: str, index: int):
    """(sample id, image path, mask path) of image ``index`` of ``split`` in format ``fmt``'s layout."""
    if fmt == "ade20k":
        subset, prefix = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}[split]
        stem, folder = f"{prefix}_{index + 1:08d}", out / "ADEChallengeData2016"
        return stem, folder / "images" / subset / f"{stem}.jpg", folder / "annotations" / subset / f"{stem}.png"
    if fmt == "coco_stuff":
        stem, subset = f"{index + 1:012d}", f"{split}2017"
        return stem, out / "images" / subset / f"{stem}.jpg", out / "annotations" / subset / f"{stem}.png"
    stem, folder = f"2008_{index + 1:06d}", out / "VOCdevkit" / "VOC2010"
    return stem, folder / "JPEGImages" / f"{stem}.jpg", folder / "SegmentationClassContext" / f"{stem}.png"


def write_benchmark_example(fmt: str, out: Union[str, Path], num_images: int = 8, image_size: int = 96,
                            seed: int = 0, overwrite: bool = False) -> Path:
    """Write ``num_images`` images (a quarter, at least one, in val) in ``fmt``'s layout under ``out``."""
    if fmt not in VALUES:
        raise DatasetError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 2 \
            or not isinstance(image_size, int) or image_size < 16:
        raise DatasetError(f"num_images >= 2 and image_size >= 16 are needed, got {num_images}, {image_size}")
    out = Path(out).expanduser()
    first = _paths(fmt, out, "train", 0)[1].relative_to(out).parts[0]
    check_outputs([], {}, None, overwrite, folders=[out / first], key="out")  # files there: only with overwrite
    values = np.full(256, 255, dtype=np.uint8)
    values[: len(VALUES[fmt])] = VALUES[fmt]
    for split, indices in _splits(num_images).items():
        ids = []
        for index in indices:
            rng = np.random.default_rng([seed, 3, index])
            image, label = render(rng, image_size, 6, int(rng.integers(2, 5)), (0.2, 0.5), border=0)
            sample_id, image_path, mask_path = _paths(fmt, out, split, index)
            for path in (image_path, mask_path):
                path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_path, quality=92)
            Image.fromarray(values[label]).save(mask_path)
            ids.append(sample_id)
        if fmt == "pascal_context":
            write_split_lists(out / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext", {split: ids})
    return out
