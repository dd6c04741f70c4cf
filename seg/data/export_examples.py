"""Tiny examples of each annotation tool's export, written from the synthetic shapes, so that a user can see the layout
``dataset=coco_json|labelme|cvat|roboflow`` reads (``scripts/make_example_folder.py format=...``).

Each image's classes become one object per class (COCO: a compressed RLE; LabelMe: a ``mask`` shape, the patch
LabelMe's AI tools write); the files are those the tools write, not a converter's idea of them.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Dict, Union

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from seg.data.base import DatasetError
from seg.data.folder import write_split_lists
from seg.data.synthetic import SYNTHETIC_CLASSES, render
from seg.data.voc import voc_palette
from seg.outputs import check_outputs

EXPORT_FORMATS = ("coco_json", "labelme", "cvat", "roboflow")


def write_export_example(out: Union[str, Path], fmt: str, num_images: int = 8, image_size: int = 96,
                         num_classes: int = 6, seed: int = 0, overwrite: bool = False) -> Dict[str, np.ndarray]:
    """Write ``num_images`` synthetic images in export format ``fmt`` under ``out`` (a quarter, at least one, in the
    validation subset); returns ``{sample id: class-index mask}`` as ``dataset=fmt`` will read it."""
    if fmt not in EXPORT_FORMATS:
        raise DatasetError(f"format must be folder or one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    out = Path(out).expanduser()
    check_outputs([], {}, None, overwrite, folders=[out], key="out")  # files in out: only with overwrite
    names = list(SYNTHETIC_CLASSES[:num_classes])
    num_val = max(1, num_images // 4)
    items = []
    for index in range(num_images):
        rng = np.random.default_rng([seed, 3, index])
        image, label = render(rng, image_size, num_classes, int(rng.integers(2, 5)), (0.2, 0.5), border=0)
        items.append(("val" if index >= num_images - num_val else "train", f"img_{index:04d}", image, label))
    writer = {"coco_json": _coco, "labelme": _labelme, "cvat": _cvat, "roboflow": _roboflow}[fmt]
    return writer(out, items, names)


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=92)


def _coco(out: Path, items, names) -> Dict[str, np.ndarray]:
    """CVAT's "COCO 1.0" layout: ``annotations/instances_<subset>.json``, ``images/<subset>/``; ids from 1."""
    expected = {}
    for subset in ("train", "val"):
        images, annotations = [], []
        for split, name, image, label in items:
            if split != subset:
                continue
            _save_jpeg(out / "images" / subset / f"{name}.jpg", image)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": label.shape[0],
                           "width": label.shape[1]})
            for value in np.unique(label[label > 0]).tolist():
                rle = coco_mask.encode(np.asfortranarray((label == value).astype(np.uint8)))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": value,
                                    "segmentation": {"counts": rle["counts"].decode(), "size": rle["size"]},
                                    "area": float(coco_mask.area(rle)), "bbox": coco_mask.toBbox(rle).tolist(),
                                    "iscrowd": 0})
            expected[name] = label
        categories = [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(names) if i]
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "annotations" / f"instances_{subset}.json").write_text(json.dumps(
            {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}))
    return expected


def _labelme(out: Path, items, names) -> Dict[str, np.ndarray]:
    """One LabelMe file per image next to it, a ``mask`` shape per class; ``train.txt``/``val.txt`` list them."""
    expected, lists = {}, {"train": [], "val": []}
    for split, name, image, label in items:
        _save_jpeg(out / f"{name}.jpg", image)
        shapes = []
        for value in np.unique(label[label > 0]).tolist():
            ys, xs = np.nonzero(label == value)
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
            buffer = io.BytesIO()
            Image.fromarray(label[y0:y1 + 1, x0:x1 + 1] == value).save(buffer, format="PNG")
            shapes.append({"label": names[value], "points": [[x0, y0], [x1, y1]], "group_id": None,
                           "description": "", "shape_type": "mask", "flags": {},
                           "mask": base64.b64encode(buffer.getvalue()).decode()})
        (out / f"{name}.json").write_text(json.dumps(
            {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{name}.jpg", "imageData": None,
             "imageHeight": label.shape[0], "imageWidth": label.shape[1]}, indent=2))
        lists[split].append(name)
        expected[name] = label
    (out / "labels.txt").write_text("__ignore__\n_background_\n" + "".join(n + "\n" for n in names[1:]))
    write_split_lists(out, lists)
    return expected


def _cvat(out: Path, items, names) -> Dict[str, np.ndarray]:
    """CVAT's "Segmentation mask 1.1": labelmap.txt, ImageSets/Segmentation/<subset>.txt, RGB SegmentationClass/."""
    colours = voc_palette()[:len(names)]
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (out / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{r},{g},{b}::\n" for name, (r, g, b) in zip(names, colours.tolist())))
    expected, lists = {}, {"train": [], "val": []}
    for split, name, image, label in items:
        _save_jpeg(out / "JPEGImages" / f"{name}.jpg", image)
        Image.fromarray(colours[label]).save(out / "SegmentationClass" / f"{name}.png")
        lists[split].append(name)
        expected[name] = label
    write_split_lists(out / "ImageSets" / "Segmentation", lists)
    return expected


def _roboflow(out: Path, items, names) -> Dict[str, np.ndarray]:
    """Roboflow's "Semantic Segmentation Masks": <split>/<name>.jpg, <name>_mask.png, _classes.csv."""
    expected = {}
    for split, name, image, label in items:
        folder = out / ("valid" if split == "val" else split)
        _save_jpeg(folder / f"{name}.jpg", image)
        Image.fromarray(label).save(folder / f"{name}_mask.png")
        expected[f"{folder.name}/{name}"] = label
    for folder in ("train", "valid"):
        (out / folder / "_classes.csv").write_text("Pixel Value, Class\n" + "".join(
            f"{value}, {name}\n" for value, name in enumerate(names)))
    return expected
