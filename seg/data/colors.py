"""Colour-coded masks: a table of one RGB colour per class, read from a list or an annotation tool's export, and the
vectorised mapping of a mask's colours to class indices.

Annotation tools export semantic masks as RGB images in which each class has a colour, with the colour table next
to them:

- a CSV with a header and ``name,r,g,b`` rows (CamVid's ``class_dict.csv``, Roboflow and many Kaggle sets);
- a Pascal-VOC ``labelmap.txt``, ``name:r,g,b:parts:actions`` lines after a ``#`` header (CVAT's "Segmentation
  mask" export).

The mapping packs every pixel's colour into one int32 and looks it up with ``np.searchsorted`` in the sorted table,
never a Python loop over pixels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from seg.data.base import DatasetError
from seg.data.palette import extend_palette

KEY = "dataset.colors"


@dataclass(frozen=True)
class ColourTable:
    colours: np.ndarray          # [K, 3] uint8: the colour of class i in row i
    names: Optional[List[str]]   # class names from a file, None for a plain list

    def __post_init__(self):
        packed = pack(self.colours)
        order = np.argsort(packed, kind="stable")
        object.__setattr__(self, "_keys", packed[order])
        # uint16 beyond 255 colours: 16-bit labels (65535 = ignore), as index masks of that many classes
        object.__setattr__(self, "_classes", order.astype(np.uint8 if len(order) <= 255 else np.uint16))

    def __len__(self) -> int:
        return len(self.colours)

    def to_indices(self, rgb: np.ndarray, path: Union[str, Path]) -> np.ndarray:
        """Class indices ``[H, W]`` (uint8, uint16 beyond 255 colours) of an RGB mask ``[H, W, 3]``; a colour not in
        the table is an error naming the file, the most frequent unknown colour and its pixel count."""
        packed = pack(rgb)
        position = np.minimum(np.searchsorted(self._keys, packed), len(self._keys) - 1)
        known = self._keys[position] == packed
        if not known.all():
            unknown, counts = np.unique(packed[~known], return_counts=True)
            worst = int(np.argmax(counts))
            colour = tuple(int(c) for c in unpack(unknown[worst]))
            others = (f" and {len(unknown) - 1} other unknown colours ({int(counts.sum() - counts[worst])} pixels)"
                      if len(unknown) > 1 else "")
            raise DatasetError(f"mask {path} has {int(counts[worst])} pixels of colour {colour}{others} that "
                               f"{KEY} does not list; add the colour to {KEY}")
        return self._classes[position]


def pack(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 colours -> ``[...]`` int32 keys ``r << 16 | g << 8 | b``."""
    rgb = np.asarray(rgb)
    return (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)


def unpack(key: int) -> np.ndarray:
    return np.array([(key >> 16) & 255, (key >> 8) & 255, key & 255], dtype=np.uint8)


def colour_list(value, key: str) -> np.ndarray:
    """``[[r, g, b], ...]`` -> ``[K, 3]`` uint8, or a ``DatasetError`` naming ``key``."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        array = np.zeros((0,))
    if not (array.ndim == 2 and array.shape[1] == 3 and len(array) and np.issubdtype(array.dtype, np.integer)
            and array.min() >= 0 and array.max() <= 255):
        raise DatasetError(f"{key} must be a list of [r, g, b] colours with values 0-255 (one per class), "
                           f"got {value!r}")
    return array.astype(np.uint8)


def read_colour_table(spec, root: Optional[Path] = None) -> ColourTable:
    """A ``ColourTable`` from ``dataset.colors``: a list of ``[r, g, b]``, or the path of a CSV or labelmap.txt file.

    A relative path is looked up in ``root`` (the dataset folder) first, then in the current directory.
    """
    if isinstance(spec, (str, Path)):
        path = _find(Path(spec).expanduser(), root)
        names, colours = (_read_csv(path) if path.suffix.lower() == ".csv" else _read_labelmap(path))
        table = ColourTable(colour_list(colours, f"{KEY} file {path}"), names)
        where = f"{KEY} file {path}"
    else:
        table = ColourTable(colour_list(spec, KEY), None)
        where = KEY
    keys, counts = np.unique(pack(table.colours), return_counts=True)
    if (counts > 1).any():
        raise DatasetError(f"{where} gives the colour {tuple(int(c) for c in unpack(keys[counts > 1][0]))} to "
                           f"more than one class")
    return table


def _find(path: Path, root: Optional[Path]) -> Path:
    candidates = [path] if path.is_absolute() or root is None else [Path(root).expanduser() / path, path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{KEY} file not found: {' or '.join(str(c) for c in candidates)} (a CSV with name,r,g,b "
                       f"rows, a labelmap.txt, or a list of [r, g, b])")


def _read_csv(path: Path) -> tuple:
    """``name,r,g,b`` rows; a first row whose r, g, b are not numbers is a header."""
    names, colours = [], []
    with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8" starts with a BOM
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if len(cells) < 4 or not all(_is_int(c) for c in cells[1:4]):
                if number == 1 and not names:
                    continue  # the header
                raise DatasetError(f"{KEY} file {path} line {number}: expected name,r,g,b, got {','.join(row)!r}")
            names.append(cells[0])
            colours.append([int(c) for c in cells[1:4]])
    if not names:
        raise DatasetError(f"{KEY} file {path} lists no classes (expected a header, then name,r,g,b rows)")
    return names, colours


def _read_labelmap(path: Path) -> tuple:
    """Pascal-VOC / CVAT ``labelmap.txt``: ``name:r,g,b:parts:actions``; ``#`` lines are comments."""
    names, colours = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        rgb = fields[1].split(",") if len(fields) > 1 else []
        if len(rgb) != 3 or not all(_is_int(c.strip()) for c in rgb):
            raise DatasetError(f"{KEY} file {path} line {number}: expected name:r,g,b:..., got {line!r}")
        names.append(fields[0].strip())
        colours.append([int(c) for c in rgb])
    if not names:
        raise DatasetError(f"{KEY} file {path} lists no classes (expected name:r,g,b:: lines)")
    return names, colours


def _is_int(text: str) -> bool:
    return text.isdigit()


def palette_with(colours: Sequence[Sequence[int]], base: np.ndarray) -> np.ndarray:
    """``base`` (``[256, 3]`` or more rows) with its first entries replaced by ``colours``; more colours than
    rows (over 256 classes) extend it."""
    palette = extend_palette(base, len(colours)).copy()
    palette[: len(colours)] = np.asarray(colours, dtype=np.uint8).reshape(-1, 3)
    return palette
