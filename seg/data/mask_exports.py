"""Annotation tools' semantic-mask exports, read as the tool writes them: ``dataset=cvat`` and ``dataset=roboflow``.

CVAT "Segmentation mask 1.1" (Export dataset / Export task dataset) under ``root``::

    labelmap.txt                          name:r,g,b:parts:actions per class, background first (absent: VOC's 21)
    ImageSets/Segmentation/<subset>.txt   one image name without extension per line (default, train, ...)
    SegmentationClass/<name>.png          the class colours of labelmap.txt (RGB or palette; grayscale: indices)
    JPEGImages/<name>.jpg                 with "Save images" checked

Classes are labelmap.txt's lines in order. ``split`` is a subset (``val`` also finds ``validation``/``valid``,
any case); with only ``default.txt``, ``train`` and ``val`` are derived as for ``dataset=folder`` and recorded by
training. Images that CVAT wrote no mask for (nobody annotated them) are skipped and counted.

Roboflow "Semantic Segmentation Masks" under ``root``::

    <split>/<name>.jpg, <split>/<name>_mask.png   index masks: pixel value = class
    <split>/_classes.csv                          "Pixel Value, Class" rows

``split`` is a folder (``train``, ``valid``, ``test``; ``val`` reads ``valid``) or ``all``. Classes are the pixel
values of ``_classes.csv`` in order (0 is background); every split's file must list the same classes.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from seg.data.base import (
    IGNORE_INDEX,
    DatasetError,
    Sample,
    SegmentationDataset,
    not_found,
    open_image,
    resolve_classes,
)
from seg.data.folder import ALL_SPLIT, IMAGE_SUFFIXES, FolderSegmentation, read_index_mask, split_ids
from seg.data.voc import VOC_CLASSES, voc_palette

SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "valid": ("valid", "val", "validation"),
                 "validation": ("validation", "val", "valid")}
ROBOFLOW_CLASSES = "_classes.csv"
ROBOFLOW_MASK = "_mask.png"


def find_split(split: str, names: Sequence[str]) -> Optional[str]:
    """The one of ``names`` that ``split`` means (``val`` also finds ``valid``/``validation``; any case)."""
    lowered = {name.lower(): name for name in names}
    for alias in SPLIT_ALIASES.get(split.lower(), (split.lower(),)):
        if alias in lowered:
            return lowered[alias]
    return None


class CVATSegmentation(FolderSegmentation):
    """CVAT's "Segmentation mask 1.1" export (see the module docstring)."""

    value_hint = "; labelmap.txt lists fewer classes than the mask holds"

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, val_fraction: float = 0.2, seed: int = 0,
                 splits: Optional[Mapping[str, Sequence[str]]] = None):
        if root is None:
            raise DatasetError("dataset.root is required: the folder of CVAT's Segmentation mask 1.1 export (it "
                               "holds SegmentationClass/ and labelmap.txt; see docs/datasets.md)")
        root = Path(root).expanduser()
        if not (root / "SegmentationClass").is_dir():
            raise not_found("CVAT Segmentation mask 1.1 folder SegmentationClass/", root / "SegmentationClass",
                            "dataset.root is the unzipped export")
        if not (root / "JPEGImages").is_dir():
            raise not_found("images folder JPEGImages/ of the CVAT export", root / "JPEGImages",
                            "export again with \"Save images\" checked, or copy the images there")
        labelmap = root / "labelmap.txt"
        colors = labelmap if labelmap.is_file() else voc_palette()[:len(VOC_CLASSES)].tolist()
        if not labelmap.is_file() and class_names is None and num_classes is None:
            class_names = list(VOC_CLASSES)  # CVAT writes no labelmap.txt for VOC's own labels
        self.unannotated: List[str] = []
        self.skipped_images = 0
        self.unannotated_examples: List[str] = []
        super().__init__(root, split, num_classes, class_names, images="JPEGImages", masks="SegmentationClass",
                         colors=colors, val_fraction=val_fraction, seed=seed, splits=splits)

    def _split_ids(self, root: Path, split: str, stems: List[str], splits, val_fraction: float,
                   seed: int) -> Tuple[List[str], List[str]]:
        lists = root / "ImageSets" / "Segmentation"
        found = find_split(split, [p.stem for p in lists.glob("*.txt")]) if lists.is_dir() else None
        known = sorted(set(stems) | set(self.unannotated))
        ids, problems, self.derived_splits = split_ids(lists, found or split, known, splits, val_fraction, seed)
        unannotated = set(self.unannotated)
        self.skipped_images = sum(1 for i in ids if i in unannotated)
        self.unannotated_examples = [i for i in ids if i in unannotated][:1]
        return [i for i in ids if i not in unannotated], problems

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        with open_image(path, "mask") as img:
            if img.mode == "L":  # one decode: the grayscale values are the indices
                return np.array(img, dtype=np.uint8)
        try:
            return super().load_mask(index)
        except DatasetError as error:  # name the export's own file, not the folder option it stands for
            where = "labelmap.txt" if (self.root / "labelmap.txt").is_file() else "VOC's colour map"
            raise DatasetError(str(error).replace("dataset.colors", where)) from None

    def skipped_lines(self) -> List[str]:
        if not self.skipped_images:
            return []
        return [f"{self.skipped_images} images without a mask in SegmentationClass/ (not annotated in CVAT; e.g. "
                f"{self.unannotated_examples[0]!r})"]


def read_roboflow_classes(path: Path) -> Tuple[List[int], List[str]]:
    """``_classes.csv``: a ``Pixel Value, Class`` header, then ``value, name`` rows."""
    if not path.is_file():
        raise not_found(f"Roboflow class table {ROBOFLOW_CLASSES}", path)
    values, names = [], []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if len(cells) < 2 or not cells[0].isdigit() or int(cells[0]) >= IGNORE_INDEX:
                if number == 1:
                    continue  # the header
                raise DatasetError(f"{path} line {number}: expected \"pixel value, class\" with a value 0-254, got "
                                   f"{','.join(row)!r}")
            values.append(int(cells[0]))
            names.append(cells[1])
    if not values:
        raise DatasetError(f"{path} lists no classes (expected a \"Pixel Value, Class\" header and rows)")
    if len(set(values)) != len(values):
        raise DatasetError(f"{path} lists a pixel value twice")
    order = sorted(range(len(values)), key=values.__getitem__)
    return [values[i] for i in order], [names[i] for i in order]


class RoboflowSegmentation(SegmentationDataset):
    """Roboflow's "Semantic Segmentation Masks" export (see the module docstring)."""

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, val_fraction: float = 0.2, seed: int = 0,
                 splits: Optional[Mapping[str, Sequence[str]]] = None):
        if root is None:
            raise DatasetError("dataset.root is required: the folder of Roboflow's Semantic Segmentation Masks "
                               "export (it holds train/, valid/, test/; see docs/datasets.md)")
        root = Path(root).expanduser()
        folders = {p.parent.name: p.parent for p in sorted(root.glob(f"*/{ROBOFLOW_CLASSES}"))}
        single = (root / ROBOFLOW_CLASSES).is_file()  # one folder without splits: train/val derived
        if not folders and not single:
            raise not_found(f"Roboflow export (<split>/{ROBOFLOW_CLASSES})", root / "train" / ROBOFLOW_CLASSES,
                            "dataset.root is the unzipped Semantic Segmentation Masks export")
        if single:
            chosen = [root]
        elif split == ALL_SPLIT:
            chosen = list(folders.values())
        else:
            name = find_split(split, list(folders))
            if name is None:
                raise DatasetError(f"dataset.split={split} is not a folder of the Roboflow export {root}: choose one "
                                   f"of {', '.join(list(folders) + [ALL_SPLIT])}")
            chosen = [folders[name]]
        tables = {folder: read_roboflow_classes(folder / ROBOFLOW_CLASSES)
                  for folder in ([root] if single else folders.values())}
        values, names = next(iter(tables.values()))
        for folder, table in tables.items():
            if table != (values, names):
                raise DatasetError(f"{folder / ROBOFLOW_CLASSES} lists other classes than "
                                   f"{next(iter(tables)) / ROBOFLOW_CLASSES}: export every split together")
        self.lookup = np.full(256, -1, dtype=np.int16)
        self.lookup[values] = np.arange(len(values))
        self.lookup[IGNORE_INDEX] = IGNORE_INDEX
        problems: List[str] = []
        samples: List[Sample] = []
        for folder in chosen:
            samples += self._pairs(root, folder, problems)
        if single and split != ALL_SPLIT:
            by_id = {s.id: s for s in samples}
            ids, split_problems, self.derived_splits = split_ids(root, split, sorted(by_id), splits, val_fraction,
                                                                 seed)
            samples, problems = [by_id[i] for i in ids], problems + split_problems
        names = resolve_classes(names, num_classes, class_names, fixed=True)
        super().__init__(root, split, samples, names, voc_palette(), problems,
                         {"pixel_values": values})

    @staticmethod
    def _pairs(root: Path, folder: Path, problems: List[str]) -> List[Sample]:
        masks = {p.name[:-len(ROBOFLOW_MASK)]: p for p in sorted(folder.glob(f"*{ROBOFLOW_MASK}"))}
        images: Dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.endswith(ROBOFLOW_MASK) and path.is_file():
                images[path.stem] = path
        problems += [f"image {images[s]} has no mask {folder / (s + ROBOFLOW_MASK)}" for s in sorted(images)
                     if s not in masks]
        problems += [f"mask {masks[s]} has no image {folder / s}.jpg" for s in sorted(masks) if s not in images]
        prefix = "" if folder == root else f"{folder.name}/"
        return [Sample(prefix + s, images[s], masks[s]) for s in sorted(images) if s in masks]

    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        values = read_index_mask(path)
        if values.dtype != np.uint8:
            raise DatasetError(f"mask {path} is a 16-bit image; {ROBOFLOW_CLASSES} lists 8-bit mask values")
        mapped = self.lookup[values]
        if (mapped < 0).any():
            unknown = sorted(set(np.unique(values[mapped < 0]).tolist()))
            raise DatasetError(f"mask {path} holds pixel values {unknown} that {ROBOFLOW_CLASSES} does not list")
        return mapped.astype(np.uint8)
