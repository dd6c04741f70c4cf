"""Any COCO-format instances file as semantic masks: ``dataset=coco_json`` (CVAT, Label Studio, Roboflow, makesense
and other tools export it).

Classes: 0 is background, then the file's categories in category-id order, whatever the ids are (CVAT's 1, 2, 5,
Label Studio's 0, 1, 2 all become 1, 2, 3), named as the file names them. ``categories`` keeps a subset (names or
ids, in id order); objects of the other categories are left out (their pixels are background). A category that no
object uses and that is the ``supercategory`` of the others is not a class: Roboflow writes the dataset's own name
as such a category (id 0).

Masks: every object's polygons or RLE (compressed or not, crowd included) are rasterised with pycocotools. Objects
that overlap: the larger object (in pixels) is painted first and the smaller on top, ties in the file's order, so a cup
on a table stays a cup (detectron2's and Mask2Former's semantic conversions order by area the same way;
torchvision's VOC reference instead marks overlaps 255). Crowd objects get their category, or 255 with
``crowd=ignore``. Images without objects are all background.

Where the files are (``root``):

- CVAT "COCO 1.0": ``annotations/instances_<subset>.json`` and ``images/[<subset>/]<file_name>``;
- Roboflow "COCO Segmentation": ``<split>/_annotations.coco.json`` next to its images (``train``, ``valid``,
  ``test``; ``split=val`` reads ``valid``);
- Label Studio "COCO": ``result.json`` next to ``images/`` (its ``file_name`` says ``images/...``);
- ``annotations``: one JSON, or ``{train: a.json, val: b.json}``, anywhere (relative paths are under ``root``), with
  ``images`` the folder of the images when they are not next to the JSON.

With one file for everything (Label Studio, CVAT's ``default`` subset, one ``annotations`` path), ``train`` and
``val`` are derived from ``val_fraction`` and ``seed`` by image as ``dataset=folder`` does (or listed in
``<root>/<split>.txt``, one ``file_name`` without extension per line), and recorded by training in ``splits``.
``split=all`` reads every image of every file.

Bad input is a problem line naming the file and the object (an image the JSON names that is missing, an unknown
category or image id, a polygon outside the image, an RLE of another size); objects that cannot be drawn (a box
without a segmentation, a polygon of fewer than 3 points) are skipped and counted in ``skipped``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from seg.data.base import DatasetError, Sample, SegmentationDataset, label_space, not_found, resolve_classes
from seg.data.coco import decode_segmentation
from seg.data.folder import ALL_SPLIT, split_ids
from seg.data.mask_exports import find_split
from seg.data.voc import voc_palette

CROWD_MODES = ("category", "ignore")
ROBOFLOW_FILE = "_annotations.coco.json"
TOLERANCE = 1.0  # pixels a polygon point may lie outside the image (tools write the far edge, x = width, as well)
Skipped = Dict[str, List]  # reason -> [count, first example]


def read_json(path: Path, what: str) -> object:
    """The parsed JSON at ``path``; missing, empty or broken files are one-line ``DatasetError``s naming it."""
    if not path.is_file():
        raise not_found(what, path)
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DatasetError(f"{what} {path} is empty: export it again from the annotation tool")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{what} {path} is not JSON ({error.msg}, line {error.lineno} column {error.colno})") \
            from None


def read_coco_file(path: Path) -> Dict:
    """A COCO instances file: a JSON object with ``images``, ``annotations`` and ``categories`` lists."""
    data = read_json(path, "COCO annotations file")
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(data, dict) or not isinstance(data.get(key), list)]
    if missing:
        hint = ("; it is a LabelMe file: use dataset=labelme" if isinstance(data, dict) and "shapes" in data else
                "; it is a Label Studio JSON export: export as COCO instead" if isinstance(data, list) else "")
        raise DatasetError(f"COCO annotations file {path} is not a COCO instances file: it has no "
                           f"{', '.join(repr(k) for k in missing)} list{'s' if len(missing) > 1 else ''}{hint}")
    for key in ("images", "annotations", "categories"):
        for number, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or "id" not in entry:
                raise DatasetError(f"COCO annotations file {path}: {key}[{number}] is not an object with an 'id'")
    return data


def find_files(root: Optional[Path], annotations) -> Tuple[Dict[str, Path], bool]:
    """``{subset: annotation file}`` and whether the subsets are real splits (else one file holds everything)."""
    if annotations is not None:
        if isinstance(annotations, (str, Path)):
            return {"all": _under(root, annotations)}, False
        if isinstance(annotations, Mapping) and annotations:
            return {str(k): _under(root, v) for k, v in annotations.items()}, True
        raise DatasetError(f"dataset.annotations must be the path of a COCO JSON file or a map {{train: path, val: "
                           f"path}}, got {annotations!r}")
    if root is None:
        raise DatasetError("dataset.root (the folder the annotation tool exported) or dataset.annotations (a COCO "
                           "JSON file) is required for dataset=coco_json (see docs/datasets.md)")
    if root.is_file():
        return {"all": root}, False
    if not root.is_dir():
        raise not_found("dataset folder (dataset.root)", root)
    cvat = {p.stem[len("instances_"):]: p for p in sorted((root / "annotations").glob("instances_*.json"))}
    roboflow = {p.parent.name: p for p in sorted(root.glob(f"*/{ROBOFLOW_FILE}"))}
    if (root / ROBOFLOW_FILE).is_file():  # a single Roboflow split folder
        roboflow = {"all": root / ROBOFLOW_FILE}
    found = cvat or roboflow
    if found:
        return found, set(found) != {"default"} and set(found) != {"all"}
    if (root / "result.json").is_file():  # Label Studio
        return {"all": root / "result.json"}, False
    jsons = sorted(root.glob("*.json"))
    if len(jsons) == 1:
        return {"all": jsons[0]}, False
    raise DatasetError(f"no COCO annotations found in {root}: expected annotations/instances_<subset>.json (CVAT), "
                       f"<split>/{ROBOFLOW_FILE} (Roboflow), result.json (Label Studio) or one *.json; or name the "
                       f"file(s) with dataset.annotations (see docs/datasets.md)")


def _under(root: Optional[Path], path) -> Path:
    path = Path(str(path)).expanduser()
    if not path.is_absolute() and root is not None and (root / path).exists():
        return root / path
    return path


def _image_folders(root: Optional[Path], subset: str, file: Path, images) -> List[Path]:
    """Where a file's images may be, in the order they are looked up."""
    if images is not None:
        return [_under(root, images)]
    folders = [file.parent]
    if root is not None and root.is_dir():
        folders += [root / "images" / subset, root / "images", root]
    if file.parent.name == "annotations":
        folders += [file.parent.parent / "images" / subset, file.parent.parent / "images"]
    return list(dict.fromkeys(folders))


def _classes(files: Mapping[str, Path], data: Mapping[str, Dict], categories) -> List[Dict]:
    """The categories that are classes (id order), over every file."""
    by_id: Dict[int, Dict] = {}
    used: Counter = Counter()
    for subset, file in files.items():
        for category in data[subset]["categories"]:
            known = by_id.setdefault(category["id"], category)
            if known.get("name") != category.get("name"):
                raise DatasetError(f"COCO annotations file {file} names category id {category['id']} "
                                   f"{category.get('name')!r}, another file {known.get('name')!r}: export every "
                                   f"split with one label set")
        used.update(a.get("category_id") for a in data[subset]["annotations"])
    parents = {c.get("supercategory") for c in by_id.values()}
    kept = [by_id[i] for i in sorted(by_id, key=_id_order)
            if not (used[i] == 0 and by_id[i].get("name") in parents)]
    if categories is not None:
        if isinstance(categories, (str, int)) or not categories:
            raise DatasetError(f"dataset.categories must be a list of category names or ids, got {categories!r}")
        wanted = set()
        for item in categories:
            match = [c["id"] for c in kept if item in (c["id"], c.get("name"))]
            if not match:
                raise DatasetError(f"dataset.categories names {item!r}, which is not a category of "
                                   f"{', '.join(str(f) for f in files.values())} (they have "
                                   f"{', '.join(str(c.get('name')) for c in kept)})")
            wanted.update(match)
        kept = [c for c in kept if c["id"] in wanted]
    return kept


def _id_order(category_id) -> tuple:
    return (0, category_id, "") if isinstance(category_id, int) else (1, 0, str(category_id))


def skip_object(skipped: Skipped, reason: str, example: str) -> None:
    """Count an object that is not drawn under ``reason``, keeping the first ``example`` (check_dataset prints it)."""
    entry = skipped.setdefault(reason, [0, example])
    entry[0] += 1


def skipped_lines(skipped: Skipped) -> List[str]:
    """check_dataset's lines for the objects that were not drawn: ``<count> <reason> (e.g. <first example>)``."""
    return [f"{count} {reason} (e.g. {example})" for reason, (count, example) in skipped.items()]


def point_outside(points: np.ndarray, height: int, width: int) -> Optional[str]:
    """``"(x, y) outside the WxH image"`` for the first of ``points`` (``[K, 2]`` x, y) beyond ``TOLERANCE`` of the
    image, None when all lie on it."""
    outside = ((points[:, 0] < -TOLERANCE) | (points[:, 0] > width + TOLERANCE)
               | (points[:, 1] < -TOLERANCE) | (points[:, 1] > height + TOLERANCE))
    if not outside.any():
        return None
    x, y = points[np.argmax(outside)]
    return f"({x:g}, {y:g}) outside the {width}x{height} image"


def _check_segmentation(segmentation, height: int, width: int, where: str, skipped: Skipped):
    """The segmentation to draw (polygons of >= 3 points, or an RLE of the image's size), None to skip the object,
    or a problem string."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            return f"{where} has an RLE segmentation without 'counts' and 'size'"
        if list(segmentation["size"]) != [height, width]:
            return (f"{where} has an RLE of size {list(segmentation['size'])} (height, width) but the image is "
                    f"{[height, width]}")
        return segmentation
    if not isinstance(segmentation, list) or not all(isinstance(p, list) for p in segmentation):
        if segmentation is None or segmentation == []:
            skip_object(skipped, "objects without a segmentation (a box only)", where)
            return None
        return f"{where} has a segmentation that is neither polygons nor RLE: {str(segmentation)[:60]}"
    try:
        polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segmentation]
    except (TypeError, ValueError):
        return f"{where} has a polygon that is not a list of x, y numbers"
    if not polygons:
        skip_object(skipped, "objects without a segmentation (a box only)", where)
        return None
    for points in polygons:
        outside = point_outside(points, height, width)
        if outside:
            return f"{where} has a polygon point {outside}"
    drawable = [p.ravel().tolist() for p in polygons if len(p) >= 3]
    if not drawable:
        skip_object(skipped, "polygons of fewer than 3 points", where)
        return None
    return drawable  # pycocotools would take a 2-point polygon (4 numbers) for a box


class COCOJSONSegmentation(SegmentationDataset):
    """A split of COCO-format annotation files (see the module docstring).

    ``skipped``: ``{reason: [count, first example]}`` of the objects that were not drawn (check_dataset prints it).
    """

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, annotations=None, images: Optional[str] = None,
                 categories: Optional[Sequence] = None, crowd: str = "category", val_fraction: float = 0.2,
                 seed: int = 0, splits: Optional[Mapping[str, Sequence[str]]] = None):
        if crowd not in CROWD_MODES:
            raise DatasetError(f"dataset.crowd must be one of {', '.join(CROWD_MODES)}, got {crowd!r}")
        root = Path(root).expanduser() if root is not None else None
        files, real_splits = find_files(root, annotations)
        data = {subset: read_coco_file(file) for subset, file in files.items()}
        kept = _classes(files, data, categories)
        class_of = {c["id"]: index for index, c in enumerate(kept, start=1)}
        known = {c["id"] for subset in data for c in data[subset]["categories"]}
        names = resolve_classes(["background"] + [str(c.get("name", c["id"])) for c in kept], num_classes,
                                class_names, fixed=True)
        self.skipped: Skipped = {}
        self.crowd = crowd
        chosen = self._subsets(split, files, real_splits)
        samples: List[Sample] = []
        self.objects: List[List[Tuple]] = []
        self.sizes: List[Tuple[int, int]] = []
        problems: List[str] = []
        for subset in chosen:
            self._list(subset, files[subset], data[subset], class_of, known, root, images, samples, problems)
        base = root if root is not None and root.is_dir() else files[chosen[0]].parent
        if not real_splits and split != ALL_SPLIT:
            ids, split_problems, self.derived_splits = split_ids(base, split, [s.id for s in samples], splits,
                                                                 val_fraction, seed, "image")
            position = {s.id: i for i, s in enumerate(samples)}
            order = [position[i] for i in ids]
            samples, self.objects, self.sizes = ([samples[i] for i in order], [self.objects[i] for i in order],
                                                 [self.sizes[i] for i in order])
            problems += split_problems
        decoding = {"categories": [c["id"] for c in kept], "crowd": crowd, "overlap": "area"}
        super().__init__(base, split, samples, names, voc_palette(), problems, decoding)

    @staticmethod
    def _subsets(split: str, files: Mapping[str, Path], real_splits: bool) -> List[str]:
        if split == ALL_SPLIT or not real_splits:
            return list(files)
        name = find_split(split, list(files))
        if name is not None:
            return [name]
        raise DatasetError(f"dataset.split={split} has no annotation file: the export has "
                           f"{', '.join(f'{k} ({v})' for k, v in files.items())}; choose one of "
                           f"{', '.join(list(files) + [ALL_SPLIT])}")

    def _list(self, subset: str, file: Path, data: Dict, class_of: Mapping, known: set, root: Optional[Path],
              images, samples: List[Sample], problems: List[str]) -> None:
        """Append the samples of one file (its images that exist) with their drawable objects."""
        folders = _image_folders(root, subset, file, images)
        by_image: Dict[object, List[Dict]] = {}
        images_by_id = {info["id"]: info for info in data["images"]}
        for ann in data["annotations"]:
            if ann.get("image_id") not in images_by_id:
                problems.append(f"annotation {ann['id']} in {file} names image id {ann.get('image_id')!r}, which "
                                f"'images' does not list")
                continue
            by_image.setdefault(ann["image_id"], []).append(ann)
        for image_id, info in images_by_id.items():
            name = str(info.get("file_name", "")).replace("\\", "/")
            path = next((folder / candidate for candidate in (name, Path(name).name) for folder in folders
                         if name and (folder / candidate).is_file()), None)
            if path is None:
                problems.append(f"image {name!r} (id {image_id}) named by {file} not found in "
                                f"{' or '.join(str(f) for f in folders)}"
                                f"{'' if images is not None else '; set dataset.images to the folder of the images'}")
                continue
            height, width = info.get("height"), info.get("width")
            if not (isinstance(height, int) and isinstance(width, int)):
                with Image.open(path) as img:  # the header only
                    width, height = img.size
            objects, bad = [], False
            for ann in by_image.get(image_id, []):
                where = f"annotation {ann['id']} of image {name!r} in {file}"
                category = ann.get("category_id")
                if category not in known:
                    problems.append(f"{where} has category id {category!r}, which 'categories' does not list")
                    bad = True
                    continue
                if category not in class_of:
                    skip_object(self.skipped, "objects of categories left out by dataset.categories", where)
                    continue
                segmentation = _check_segmentation(ann.get("segmentation"), height, width, where, self.skipped)
                if isinstance(segmentation, str):
                    problems.append(segmentation)
                    bad = True
                elif segmentation is not None:
                    ignored = ann.get("iscrowd") and self.crowd == "ignore"
                    value = None if ignored else class_of[category]  # None: the ignore index
                    objects.append((ann["id"], value, segmentation))
            if bad:
                continue
            stem = Path(name).with_suffix("").as_posix()
            samples.append(Sample(stem, path, file))
            self.objects.append(objects)
            self.sizes.append((height, width))

    def load_mask(self, index: int) -> np.ndarray:
        height, width = self.sizes[index]
        ignore, dtype = label_space(self.num_classes)  # uint16 beyond 255 categories (LVIS-style label sets)
        target = np.zeros((height, width), dtype=dtype)
        drawn = []
        for order, (ann_id, value, segmentation) in enumerate(self.objects[index]):
            try:
                mask = decode_segmentation(segmentation, height, width).astype(bool)
            except (TypeError, ValueError, KeyError, IndexError) as error:  # a malformed RLE
                raise DatasetError(f"cannot decode annotation {ann_id} in {self.mask_source(index)}: {error!r}") \
                    from None
            drawn.append((-int(mask.sum()), order, value, mask))
        for _, _, value, mask in sorted(drawn, key=lambda d: d[:2]):  # largest first, smaller on top
            target[mask] = ignore if value is None else value
        return target

    def mask_source(self, index: int) -> str:
        return f"the annotations of {self.samples[index].image.name} in {self.samples[index].mask}"

    def skipped_lines(self) -> List[str]:
        return skipped_lines(self.skipped)
