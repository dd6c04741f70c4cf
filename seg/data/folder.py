"""Your own data as it usually arrives: a folder of images and a folder of masks, paired by file stem.

Layout under ``root`` (the two folder names are options)::

    images/<sub folders>/<stem>.jpg       .jpg .jpeg .png .bmp .tif .tiff .webp, any case
    masks/<sub folders>/<stem>.png        the same relative path and stem (.png .bmp .tif .tiff .gif .webp)
    train.txt, val.txt                    optional: one stem per line (the path under images/ without extension)

Masks hold class indices (palette or 8-bit grayscale PNGs, 255 = ignore; 16-bit grayscale PNGs or TIFFs for more
than 255 classes, 65535 = ignore, or ``ignore_index``) or, with ``colors``, one colour per class (RGB images as
annotation tools export them, see ``seg.data.colors``). ``label_map`` then remaps values, e.g. ``{255: 1}`` for
0/255 binary masks or ``{5: 255}`` to ignore a "void" class.

Without split lists, the split is derived from ``val_fraction`` and ``seed``: stems ranked by a hash of
``(seed, stem)``, the first ``val_fraction`` of them for validation, the same on every machine. Adding files to the
folder changes it, so training records the lists it used (``derived_splits``, written into the run directory and
the checkpoint's ``dataset.splits``): resume and evaluation read exactly those.

Listing problems (an image without a mask, a mask without an image, two files with one stem, a JPEG mask, a stem
listed in a split file that has no pair) leave the samples out and are collected in ``problems``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from seg.data.base import (
    IGNORE_INDEX,
    MASK_MODES,
    WIDE_GRAY_MODES,
    WIDE_IGNORE_INDEX,
    DatasetError,
    Sample,
    SegmentationDataset,
    not_found,
    open_image,
    read_image,
    read_mask,
    resolve_classes,
    value_table,
    wide_values,
)
from seg.data.colors import ColourTable, colour_list, palette_with, read_colour_table
from seg.data.voc import read_split_file, voc_palette

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg")
ALL_SPLIT = "all"  # every paired sample
DERIVED_SPLITS = ("train", "val")


def derive_split(stems: Sequence[str], val_fraction: float, seed: int) -> Dict[str, List[str]]:
    """``{"train": [...], "val": [...]}``: the ``round(val_fraction * n)`` stems (at least 1, at most n - 1) that rank
    first by ``sha1(f"{seed}:{stem}")`` go to val. Independent of the platform, Python's hash seed and file order."""
    stems = sorted(stems)
    if len(stems) < 2:
        raise DatasetError(f"a train/val split needs at least 2 image/mask pairs, found {len(stems)}")
    ranked = sorted(stems, key=lambda stem: hashlib.sha1(f"{seed}:{stem}".encode()).hexdigest())
    val = set(ranked[: min(len(stems) - 1, max(1, round(val_fraction * len(stems))))])
    return {"train": [s for s in stems if s not in val], "val": [s for s in stems if s in val]}


def write_split_lists(folder: Union[str, Path], splits: Mapping[str, Sequence[str]]) -> List[Path]:
    """``<folder>/<split>.txt``, one stem per line (the format ``dataset.root/<split>.txt`` is read in)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, stems in splits.items():
        paths.append(folder / f"{split}.txt")
        paths[-1].write_text("".join(f"{stem}\n" for stem in stems))
    return paths


def _index(folder: Path, suffixes: Sequence[str], what: str) -> Tuple[Dict[str, Path], List[str]]:
    """``{stem: file}`` of the files under ``folder`` with one of ``suffixes``, and the stems held by two files."""
    found: Dict[str, List[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and not path.name.startswith(".") and path.is_file():
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    problems = [f"{what}s {', '.join(str(p) for p in paths)} have the same stem {stem!r}: keep one"
                for stem, paths in found.items() if len(paths) > 1]
    return {stem: paths[0] for stem, paths in found.items() if len(paths) == 1}, problems


def pair_files(image_folder: Path, mask_folder: Path,
               unannotated: Optional[List[str]] = None) -> Tuple[Dict[str, Sample], List[str]]:
    """Image/mask pairs by stem, and one problem line for every file that cannot be paired.

    ``unannotated``: a list that receives the stems of the images without a mask instead of problems (an annotation
    tool's export writes no mask for an image nobody annotated)."""
    images, problems = _index(image_folder, IMAGE_SUFFIXES, "image")
    masks, mask_problems = _index(mask_folder, MASK_SUFFIXES + LOSSY_MASK_SUFFIXES, "mask")
    problems += mask_problems
    for stem in sorted(masks):
        if masks[stem].suffix.lower() in LOSSY_MASK_SUFFIXES:
            problems.append(f"mask {masks[stem]} is a JPEG: lossy compression changes the values at region edges; "
                            f"save masks as PNG")
    pairs = {stem: Sample(stem, images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys())
             if masks[stem].suffix.lower() not in LOSSY_MASK_SUFFIXES}
    if not pairs:
        stem = next(iter(images), None)
        example = f" (e.g. {images[stem]} has no {mask_folder / stem}.png)" if stem is not None else ""
        raise DatasetError(f"no image in {image_folder} has a mask with the same stem in {mask_folder}: found "
                           f"{len(images)} images and {len(masks)} masks{example}; see docs/datasets.md")
    if unannotated is not None:
        unannotated += sorted(images.keys() - masks.keys())
    else:
        problems += [f"image {images[stem]} has no mask {mask_folder / stem}.png (stem {stem!r})"
                     for stem in sorted(images.keys() - masks.keys())]
    problems += [f"mask {masks[stem]} has no image in {image_folder} (stem {stem!r})"
                 for stem in sorted(masks.keys() - images.keys())]
    return pairs, problems


def split_ids(root: Path, split: str, stems: List[str], splits, val_fraction: float, seed: int,
              what: str = "image/mask pair") -> Tuple[List[str], List[str], Optional[Dict[str, List[str]]]]:
    """The stems of ``split``, the problems of its list (stems without a ``what``) and the derived splits (or None).

    ``all`` is every stem; ``splits`` (a run's recorded split) wins over ``<root>/<split>.txt``; without any split file,
    ``train`` and ``val`` are derived from ``val_fraction`` and ``seed`` (``derive_split``).
    """
    if split == ALL_SPLIT:
        return stems, [], None
    if splits is not None:
        if split not in splits:
            raise DatasetError(f"dataset.splits has no split {split!r} (it has {sorted(splits)})")
        listed, source = list(splits[split]), f"dataset.splits[{split!r}]"
    elif (root / f"{split}.txt").is_file():
        listed, source = read_split_file(root / f"{split}.txt"), str(root / f"{split}.txt")
    elif split in DERIVED_SPLITS and not any((root / f"{s}.txt").is_file() for s in DERIVED_SPLITS):
        derived = derive_split(stems, val_fraction, seed)
        return derived[split], [], derived
    else:
        raise not_found(f"split file of split {split!r}", root / f"{split}.txt",
                        "list one stem per line, or use dataset.split=train/val without any split file")
    known = set(stems)
    ids = [_strip_suffix(stem, known) for stem in listed]
    problems = [f"{source} lists {stem!r} but there is no {what} with that stem" for stem in ids if stem not in known]
    return [stem for stem in ids if stem in known], problems, None


def _label_map(label_map: Optional[Mapping]) -> Optional[Dict[int, int]]:
    """``label_map`` (``{value: new value}``) as checked integers, or None when there is none."""
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise DatasetError(f"dataset.label_map must be a mapping {{value: new value}}, e.g. {{255: 1}}, "
                           f"got {label_map!r}")
    checked = {}
    for old, new in label_map.items():
        try:
            old_value, new_value = int(old), int(new)
        except (TypeError, ValueError):
            old_value = new_value = -1
        if not (0 <= old_value <= WIDE_IGNORE_INDEX and 0 <= new_value <= WIDE_IGNORE_INDEX) or isinstance(new, bool):
            raise DatasetError(f"dataset.label_map maps mask values (0-255 in 8-bit masks, 0-{WIDE_IGNORE_INDEX} in "
                               f"16-bit ones) to class indices or the ignore index ({IGNORE_INDEX}, or "
                               f"{WIDE_IGNORE_INDEX} with more than {IGNORE_INDEX} classes), got {old!r}: {new!r}")
        checked[old_value] = new_value
    return checked


class FolderSegmentation(SegmentationDataset):
    """A split of an images/ + masks/ folder (see the module docstring).

    ``split``: ``train``, ``val``, ``all`` (every pair) or any ``<split>.txt`` in ``root``. ``splits``
    (``{split: [stems]}``) takes precedence over split files: it is how a training run's recorded split comes back.
    ``colors``: a list of ``[r, g, b]`` (class i's colour in row i) or the path of a CSV / labelmap.txt file.
    ``palette``: display colours, a list of ``[r, g, b]`` per class (default: ``colors``, else VOC's colour map).
    ``ignore_index``: the value of ignored pixels in 16-bit masks (None or 255: 65535); 8-bit masks use 255.
    """

    value_hint = "; remap them with dataset.label_map or raise dataset.num_classes"
    unannotated: Optional[List[str]] = None  # a list in exports whose images without a mask are skipped, not errors

    def __init__(self, root: Union[str, Path, None], split: str = "train", num_classes: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None, images: str = "images", masks: str = "masks",
                 colors: Union[str, Path, Sequence[Sequence[int]], None] = None,
                 label_map: Optional[Mapping[int, int]] = None, palette: Optional[Sequence[Sequence[int]]] = None,
                 val_fraction: float = 0.2, seed: int = 0,
                 splits: Optional[Mapping[str, Sequence[str]]] = None, ignore_index: Optional[int] = None):
        if root is None:
            raise DatasetError("dataset.root is required: the folder that holds images/ and masks/ "
                               "(see docs/datasets.md)")
        root = Path(root).expanduser()
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise DatasetError(f"dataset.val_fraction must be a number in (0, 1), got {val_fraction!r}")
        for key, value in (("images", images), ("masks", masks)):
            if not (root / str(value)).is_dir():
                raise not_found(f"{key} folder (dataset.{key}={value})", root / str(value))
        self.colour_table: Optional[ColourTable] = read_colour_table(colors, root) if colors is not None else None
        self.label_map = _label_map(label_map)
        self.wide_ignore = _wide_ignore(ignore_index)
        self._tables: Dict[type, Optional[np.ndarray]] = {}
        names = self._classes(num_classes, class_names, label_map is not None)
        pairs, problems = pair_files(root / images, root / masks, self.unannotated)
        ids, listing_problems = self._split_ids(root, split, sorted(pairs), splits, val_fraction, seed)
        samples = [pairs[i] for i in ids]
        decoding = {"colors": None if self.colour_table is None else self.colour_table.colours.tolist(),
                    "label_map": None if label_map is None else sorted((int(k), int(v)) for k, v in
                                                                        label_map.items())}
        if self.wide_ignore != WIDE_IGNORE_INDEX:
            decoding["ignore_index"] = self.wide_ignore
        super().__init__(root, split, samples, names, self._palette(palette, len(names)),
                         problems + listing_problems, decoding)
        if self.num_classes == 2 and self.label_map is None and self.colour_table is None:
            self.load_mask(0)  # 0/255 binary masks: say so now rather than at the first training batch

    # -- construction -----------------------------------------------------------------------------------------
    def _classes(self, num_classes, class_names, remapped: bool) -> List[str]:
        table = self.colour_table
        if table is None and num_classes is None and class_names is None:
            raise DatasetError("dataset.num_classes (or dataset.class_names, or dataset.colors) must be set for "
                               "dataset=folder: how many classes the masks hold, background included")
        defaults = table.names if table is not None and table.names else [
            f"class_{i}" for i in range(len(table) if table is not None else (num_classes or len(class_names)))]
        names = resolve_classes(defaults, num_classes, class_names, fixed=False)
        if table is not None and len(table) != len(names) and not remapped:
            raise DatasetError(f"dataset.colors has {len(table)} colours but there are {len(names)} classes "
                               f"(dataset.num_classes / dataset.class_names): give one colour per class, or map the "
                               f"extra ones with dataset.label_map")
        return names

    def _palette(self, palette, num_classes: int) -> np.ndarray:
        """Up to 255 classes, value 255 (ignore) keeps VOC's colour whatever the colours listed."""
        shown = num_classes if num_classes > IGNORE_INDEX else IGNORE_INDEX
        if palette is not None:
            return palette_with(colour_list(palette, "dataset.palette")[:shown], voc_palette())
        if self.colour_table is not None:
            return palette_with(self.colour_table.colours[:shown], voc_palette())
        return voc_palette()

    def _split_ids(self, root: Path, split: str, stems: List[str], splits, val_fraction: float,
                   seed: int) -> Tuple[List[str], List[str]]:
        ids, problems, self.derived_splits = split_ids(root, split, stems, splits, val_fraction, seed)
        return ids, problems

    # -- reading ----------------------------------------------------------------------------------------------
    def load_mask(self, index: int) -> np.ndarray:
        path = self.samples[index].mask
        if self.colour_table is not None:
            values = self.colour_table.to_indices(read_image(path, what="mask"), path)
        else:
            values = read_index_mask(path)
        if self.label_map is None and self.num_classes == 2:
            check_not_binary_255(values, path)
        table = self._table(values.dtype)
        return values if table is None else table[values]

    def _table(self, dtype) -> Optional[np.ndarray]:
        """File value -> label for masks of ``dtype`` (``seg.data.base.value_table``), made once per depth; None
        where the values are the labels (8-bit masks of up to 255 classes, 16-bit ones beyond, no remapping)."""
        if dtype not in self._tables:
            wide = dtype == np.uint16
            table = value_table(WIDE_IGNORE_INDEX if wide else IGNORE_INDEX, self.ignore_index,
                                self.wide_ignore if wide else None, self.label_map)
            self._tables[dtype] = None if np.array_equal(table, np.arange(len(table))) else table
        return self._tables[dtype]


def _wide_ignore(ignore_index) -> int:
    """``dataset.ignore_index`` as the ignore value of 16-bit masks: 255 (every dataset's default) means 65535."""
    if ignore_index is None or ignore_index == IGNORE_INDEX:
        return WIDE_IGNORE_INDEX
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index < 65536:
        raise DatasetError(f"dataset.ignore_index must be an integer in [0, {WIDE_IGNORE_INDEX}] (the value of ignored "
                           f"pixels in 16-bit masks; 255 means {WIDE_IGNORE_INDEX}), got {ignore_index!r}")
    return ignore_index


def read_index_mask(path: Path) -> np.ndarray:
    """Raw values of an index mask: uint8 from a palette or 8-bit grayscale image, a 1-bit image (0/255) or an RGB
    image whose three channels are equal (a grayscale mask saved as RGB); uint16 from a 16-bit grayscale image. A
    colour image is an error pointing to dataset.colors."""
    with open_image(path, "mask") as img:
        if img.mode in MASK_MODES:
            return np.array(img, dtype=np.uint8)
        if img.mode in WIDE_GRAY_MODES:
            return wide_values(img, path)
        if img.mode == "1":
            return np.array(img.convert("L"), dtype=np.uint8)
        if img.mode in ("RGB", "RGBA"):
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                return rgb[..., 0].copy()
            raise DatasetError(f"mask {path} is a colour (RGB) image: set dataset.colors (one [r, g, b] per class, "
                               f"or a CSV / labelmap.txt file) to map its colours to classes")
    return read_mask(path)  # refuses the other modes (16-bit, ...) with its message


def check_not_binary_255(values: np.ndarray, path: Path) -> None:
    """A 2-class 8-bit mask holding only 0 and 255 is a 0/255 binary mask read as "background and ignored": refuse
    it."""
    if values.dtype != np.uint8:
        return
    counts = np.bincount(values.ravel(), minlength=256)
    if counts[IGNORE_INDEX] and not counts[1:IGNORE_INDEX].any():
        raise DatasetError(f"mask {path} holds only 0 and 255 with 2 classes, but 255 is the ignore value: for 0/255 "
                           f"binary masks set dataset.label_map={{255:1}} (or dataset.label_map={{}} if 255 "
                           f"really means ignore)")


def _strip_suffix(stem: str, known) -> str:
    """A listed ``name.jpg`` means the stem ``name``."""
    path = Path(stem)
    if stem not in known and path.suffix.lower() in IMAGE_SUFFIXES:
        return path.with_suffix("").as_posix()
    return stem
