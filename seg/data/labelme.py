"""A folder of LabelMe JSON files (one per image) as semantic masks: ``dataset=labelme``.

Layout under ``root`` (sub-folders allowed)::

    <name>.json     LabelMe's file: ``shapes``, ``imagePath`` (relative to the JSON), ``imageHeight``/``imageWidth``,
                    and optionally the image itself as base64 ``imageData``
    <name>.jpg      the image ``imagePath`` names (not needed when the JSON embeds it)
    labels.txt      optional, labelme2voc's class list: ``__ignore__``, ``_background_``, then one class per line
    train.txt, val.txt  optional: one JSON path under root without ``.json`` per line

Shapes are rasterised as LabelMe's own ``labelme.utils.shape_to_mask`` does, with PIL's ImageDraw: ``polygon``
(and ``oriented_rectangle``) filled with its outline, ``rectangle`` from its two corners, ``circle`` from its centre
and a point on it, ``line``/``linestrip`` ``line_width`` pixels wide (rounded joints), ``point`` a disc of radius
``point_size``, and ``mask`` (a PNG patch from the AI tools, placed at its top-left corner). Shapes are painted in
the file's order, later ones on top, as LabelMe's ``shapes_to_label`` (and labelme2voc) do.

Classes: ``class_names`` (index 0 is background), else ``labels.txt``, else background and the labels found in all
JSON files under ``root`` sorted by name; training records the list (``dataset.class_names`` in the run and the
checkpoint) so that evaluation and prediction use the same indices. The labels ``_background_`` and ``background``
are class 0 and ``__ignore__`` is 255.

Bad input is a problem line naming the file and the shape (a file that is empty or not LabelMe's, an image it
names that is missing, an unknown label or shape type, a shape with the wrong number of points, a point outside
the image); polygons of fewer than 3 points are skipped and counted in ``skipped``.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from seg.data.base import (
    DatasetError,
    Sample,
    SegmentationDataset,
    check_sample,
    checked_bands,
    label_space,
    not_found,
    read_image,
    resolve_classes,
    rgb_array,
)
from seg.data.channels import pil_bands
from seg.data.coco_json import Skipped, point_outside, read_json, skip_object, skipped_lines
from seg.data.folder import IMAGE_SUFFIXES, split_ids
from seg.data.voc import voc_palette

BACKGROUND_LABELS = ("_background_", "background")
IGNORE_LABEL = "__ignore__"
# shape type -> the number of points it takes (None: at least 3 / at least 2)
POINT_COUNTS = {"circle": 2, "rectangle": 2, "line": 2, "point": 1, "oriented_rectangle": 4, "mask": 2}
SHAPE_TYPES = ("polygon", "linestrip", *POINT_COUNTS)


def shape_to_mask(height: int, width: int, points: Sequence[Sequence[float]], shape_type: Optional[str],
                  line_width: int = 10, point_size: int = 5, patch: Optional[np.ndarray] = None) -> np.ndarray:
    """bool ``[H, W]`` of one LabelMe shape, drawn as LabelMe draws it (see the module docstring)."""
    if shape_type == "mask":
        return _place_patch(height, width, points, patch)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [(float(x), float(y)) for x, y in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse(((cx - d, cy - d), (cx + d, cy + d)), outline=1, fill=1)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))), outline=1, fill=1)
    elif shape_type == "line":
        draw.line(xy, fill=1, width=line_width)
    elif shape_type == "linestrip":
        draw.line(xy, fill=1, width=line_width, joint="curve")  # rounded turns, as LabelMe 7 draws them
    elif shape_type == "point":
        (cx, cy), r = xy[0], point_size
        draw.ellipse(((cx - r, cy - r), (cx + r, cy + r)), outline=1, fill=1)
    else:  # polygon, oriented_rectangle
        draw.polygon(xy, outline=1, fill=1)
    return np.array(canvas, dtype=bool)


def _place_patch(height: int, width: int, points, patch: np.ndarray) -> np.ndarray:
    """A ``mask`` shape: its patch at the rounded top-left corner; with integer corners the patch spans them."""
    mask = np.zeros((height, width), dtype=bool)
    corners = np.asarray(points, dtype=np.float64)
    (x1, y1), (x2, y2) = corners.round().astype(int)
    if np.array_equal(corners, np.trunc(corners)):
        patch_height, patch_width = y2 - y1 + 1, x2 - x1 + 1
    else:
        patch_height, patch_width = patch.shape
    y0, y_stop = max(y1, 0), min(y1 + patch_height, height, y1 + patch.shape[0])
    x0, x_stop = max(x1, 0), min(x1 + patch_width, width, x1 + patch.shape[1])
    if y0 < y_stop and x0 < x_stop:
        mask[y0:y_stop, x0:x_stop] = patch[y0 - y1:y_stop - y1, x0 - x1:x_stop - x1]
    return mask


def decode_base64_image(data: str, what: str) -> Image.Image:
    """A base64-encoded image file (LabelMe's ``imageData`` or a shape's ``mask``), decoded and upright."""
    try:
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=False)))
        img.load()
        return ImageOps.exif_transpose(img)
    except (binascii.Error, OSError, ValueError, TypeError) as error:
        raise DatasetError(f"cannot decode {what}: {error}") from None


def read_labels_txt(path: Path) -> List[str]:
    """labelme2voc's ``labels.txt``: ``__ignore__`` (optional), ``_background_``, then the classes."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    names = [name for name in lines if name != IGNORE_LABEL]
    if not names:
        raise DatasetError(f"{path} lists no classes (labelme2voc's format: __ignore__, _background_, then one "
                           f"class per line)")
    return names


class LabelMeSegmentation(SegmentationDataset):
    """A split of a folder of LabelMe files (see the module docstring).

    ``skipped``: ``{reason: [count, first example]}`` of the shapes that were not drawn (check_dataset prints it).
    """

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, line_width: int = 10, point_size: int = 5,
                 val_fraction: float = 0.2, seed: int = 0, splits: Optional[Mapping[str, Sequence[str]]] = None):
        if root is None:
            raise DatasetError("dataset.root is required: the folder of LabelMe .json files (see docs/datasets.md)")
        root = Path(root).expanduser()
        if not root.is_dir():
            raise not_found("LabelMe folder (dataset.root)", root)
        for key, value in (("line_width", line_width), ("point_size", point_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DatasetError(f"dataset.{key} must be a positive integer (pixels), got {value!r}")
        self.line_width, self.point_size = line_width, point_size
        files = {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.json"))
                 if not p.name.startswith(".")}
        if not files:
            raise DatasetError(f"no LabelMe .json files found in {root} (see docs/datasets.md)")
        problems: List[str] = []
        parsed: Dict[str, dict] = {}
        for stem, path in files.items():
            try:
                parsed[stem] = self._read(path)
            except DatasetError as error:
                problems.append(str(error))
        labels = sorted({s["label"] for data in parsed.values() for s in data["shapes"]}
                        - set(BACKGROUND_LABELS) - {IGNORE_LABEL})
        if class_names is None and (root / "labels.txt").is_file():
            class_names = read_labels_txt(root / "labels.txt")
        elif class_names is None and num_classes is None:
            self.classes_from_data = True
        names = resolve_classes(["background", *labels], num_classes, class_names, fixed=class_names is None)
        self.background = names[0]
        value_of = {name: index for index, name in enumerate(names)}
        value_of.update({name: 0 for name in BACKGROUND_LABELS if name not in value_of})
        value_of[IGNORE_LABEL] = label_space(len(names))[0]
        ids, split_problems, self.derived_splits = split_ids(root, split, sorted(parsed), splits, val_fraction,
                                                             seed, "readable LabelMe file")
        self.skipped: Skipped = {}
        self.shapes: List[List[Tuple]] = []
        self.sizes: List[Tuple[int, int]] = []
        self.embedded: List[Optional[str]] = []
        samples = []
        for stem in ids:
            entry = self._sample(files[stem], parsed[stem], value_of, problems)
            if entry is not None:
                samples.append(Sample(stem, entry, files[stem]))
        decoding = {"line_width": line_width, "point_size": point_size, "classes": names}
        super().__init__(root, split, samples, names, voc_palette(), problems + split_problems, decoding)

    @staticmethod
    def _read(path: Path) -> dict:
        data = read_json(path, "LabelMe file")
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            hint = "; it is a COCO file: use dataset=coco_json" if isinstance(data, dict) and "images" in data else ""
            raise DatasetError(f"LabelMe file {path} is not a LabelMe file: it has no 'shapes' list{hint}")
        for number, shape in enumerate(data["shapes"]):
            if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
                raise DatasetError(f"LabelMe file {path}: shape {number} has no 'label'")
        return data

    def _sample(self, path: Path, data: dict, value_of: Mapping[str, int], problems: List[str]):
        """The image file of one LabelMe file (the JSON itself when it embeds the image), its shapes stored; None (and
        a problem) when it cannot be used."""
        name = str(data.get("imagePath") or "").replace("\\", "/")
        candidates = [path.parent / name, path.parent / Path(name).name] if name else []
        candidates += [path.with_suffix(s) for s in IMAGE_SUFFIXES] + [path.with_suffix(s.upper())
                                                                       for s in IMAGE_SUFFIXES]
        image = next((c for c in candidates if c.is_file()), None)
        embedded = data.get("imageData") if image is None else None
        if image is None and not embedded:
            problems.append(f"image {name or path.stem!r} named by LabelMe file {path} not found next to it, and "
                            f"the file embeds no imageData")
            return None
        height, width = data.get("imageHeight"), data.get("imageWidth")
        if not (isinstance(height, int) and isinstance(width, int)):
            try:
                img = Image.open(image) if image is not None else decode_base64_image(embedded, f"{path} imageData")
                width, height = img.size
            except (OSError, DatasetError) as error:
                problems.append(f"cannot read the image of LabelMe file {path}: {error}")
                return None
        shapes, bad = [], False
        for number, shape in enumerate(data["shapes"]):
            where = f"shape {number} ({shape['label']!r}) of LabelMe file {path}"
            problem = self._check_shape(shape, where, value_of, height, width)
            if problem:
                problems.append(problem)
                bad = True
            elif problem is None:
                shapes.append((value_of[shape["label"]], shape.get("shape_type") or "polygon",
                               [(float(x), float(y)) for x, y in shape["points"]], shape.get("mask")))
        if bad:
            return None
        self.shapes.append(shapes)
        self.sizes.append((height, width))
        self.embedded.append(embedded)
        return image if image is not None else path

    def _check_shape(self, shape: dict, where: str, value_of: Mapping[str, int], height: int,
                     width: int) -> Optional[str]:
        """A problem line, ``""`` for a shape skipped (counted), None for a shape to draw."""
        if shape["label"] not in value_of:
            known = ", ".join(k for k, v in value_of.items() if k != IGNORE_LABEL and (v or k == self.background))
            return f"{where} has the label {shape['label']!r}, which is not a class ({known}); add it to " \
                   f"dataset.class_names"
        kind = shape.get("shape_type") or "polygon"
        if kind not in SHAPE_TYPES:
            return f"{where} has shape_type {kind!r}; LabelMe's are {', '.join(SHAPE_TYPES)}"
        try:
            points = np.asarray(shape.get("points"), dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            return f"{where} has points that are not a list of [x, y]"
        wanted = POINT_COUNTS.get(kind)
        if wanted is not None and len(points) != wanted:
            return f"{where} is a {kind} with {len(points)} points; LabelMe's {kind} has {wanted}"
        if kind == "mask" and not isinstance(shape.get("mask"), str):
            return f"{where} is a mask shape without its base64 'mask' PNG"
        if (kind == "polygon" and len(points) < 3) or (kind == "linestrip" and len(points) < 2):
            skip_object(self.skipped, f"{kind}s of too few points", where)
            return ""
        outside = None if kind == "mask" else point_outside(points, height, width)
        if outside:
            return f"{where} has a point {outside}"
        return None

    # -- reading ----------------------------------------------------------------------------------------------
    def load_mask(self, index: int) -> np.ndarray:
        height, width = self.sizes[index]
        target = np.zeros((height, width), dtype=label_space(self.num_classes)[1])
        for value, kind, points, patch in self.shapes[index]:  # file order: later shapes on top
            if kind == "mask":
                with decode_base64_image(patch, f"the mask shape in {self.samples[index].mask}") as img:
                    patch = np.array(img.convert("L"), dtype=np.uint8) > 0
            target[shape_to_mask(height, width, points, kind, self.line_width, self.point_size, patch)] = value
        return target

    def load_image(self, index: int) -> np.ndarray:
        embedded = self.embedded[index]
        if embedded is None:
            return read_image(self.samples[index].image, channels=self.channels)
        where = f"the imageData of {self.samples[index].mask}"
        with decode_base64_image(embedded, where) as img:
            if self.channels == 3:
                return rgb_array(img)
            return checked_bands(pil_bands(img), self.channels, f"the image embedded in {self.samples[index].mask}",
                                 where)

    def mask_source(self, index: int) -> str:
        return f"the shapes of LabelMe file {self.samples[index].mask}"

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image, mask = self.load_image(index), self.load_mask(index)
        name = str(self.samples[index].image if self.embedded[index] is None
                   else f"embedded in {self.samples[index].mask}")
        check_sample(image, mask, self.num_classes, name, self.mask_source(index))
        return image, mask

    def skipped_lines(self) -> List[str]:
        return skipped_lines(self.skipped)
