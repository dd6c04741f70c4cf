"""Class weights against class imbalance, from the pixel statistics of a split's masks.

- ``median_frequency`` (Eigen & Fergus 2015, used by SegNet): ``freq(c)`` is the number of pixels of class ``c``
  divided by the number of pixels of the images in which ``c`` is present; ``weight(c) = median(freq) / freq(c)``.
- ``inverse_log`` (ENet, Paszke et al. 2016): ``weight(c) = 1 / ln(1.02 + p(c))`` with ``p(c)`` the fraction of all
  pixels that are class ``c``; weights lie between about 1.4 and 50.

Only labelled pixels count (the ignore value 255 is never trained on). A class without any pixel has no
frequency: its median-frequency weight is 1, and its inverse-log weight the formula's value for ``p = 0`` (50.5);
either way a weight only matters for pixels of that class, which it has none of.

Reading every training mask once can take minutes on a large set, so the statistics are cached under
``$SEG_CACHE`` (or ``~/.cache/seg``) by a fingerprint of the split: its mask files with their sizes and
modification times, and the options that decode them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from seg.data.base import SegmentationDataset
from seg.data.synthetic import default_cache

log = logging.getLogger(__name__)

METHODS = ("median_frequency", "inverse_log")
ENET_C = 1.02
CACHE_VERSION = 1


@dataclass
class PixelStatistics:
    """Per class: labelled pixels, labelled pixels of the images containing the class, and those images' count."""

    num_classes: int
    pixels: np.ndarray = field(default=None)
    present_pixels: np.ndarray = field(default=None)
    images: np.ndarray = field(default=None)

    def __post_init__(self):
        for name in ("pixels", "present_pixels", "images"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(self.num_classes, dtype=np.int64))

    def add_counts(self, counts: np.ndarray) -> None:
        """Add one mask, given as its ``np.bincount(minlength=num_classes)``; values outside the classes are not
        counted."""
        per_class = np.asarray(counts[: self.num_classes], dtype=np.int64)
        present = per_class > 0
        self.pixels += per_class
        self.present_pixels += present * per_class.sum()
        self.images += present

    def add(self, mask: np.ndarray) -> None:
        self.add_counts(np.bincount(mask.ravel(), minlength=self.num_classes))

    def weights(self, method: str) -> List[float]:
        if method == "median_frequency":
            return median_frequency_weights(self.pixels, self.present_pixels)
        if method == "inverse_log":
            return inverse_log_weights(self.pixels)
        raise ValueError(f"class weight method must be one of {list(METHODS)}, got {method!r}")

    def to_json(self) -> dict:
        return {"num_classes": self.num_classes, "pixels": self.pixels.tolist(),
                "present_pixels": self.present_pixels.tolist(), "images": self.images.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "PixelStatistics":
        return cls(int(data["num_classes"]), *(np.asarray(data[k], dtype=np.int64)
                                               for k in ("pixels", "present_pixels", "images")))


def median_frequency_weights(pixels: Sequence[int], present_pixels: Sequence[int]) -> List[float]:
    """``median(freq) / freq(c)`` with ``freq(c) = pixels(c) / present_pixels(c)``; 1.0 for a class without pixels."""
    pixels = np.asarray(pixels, dtype=np.float64)
    present = pixels > 0
    if not present.any():
        return [1.0] * len(pixels)
    frequency = np.where(present, pixels / np.maximum(np.asarray(present_pixels, dtype=np.float64), 1), np.nan)
    median = float(np.median(frequency[present]))
    return [float(median / f) if p else 1.0 for f, p in zip(frequency, present)]


def inverse_log_weights(pixels: Sequence[int], c: float = ENET_C) -> List[float]:
    """ENet's ``1 / ln(c + p(class))``, ``p`` the class's share of all labelled pixels."""
    pixels = np.asarray(pixels, dtype=np.float64)
    share = pixels / max(pixels.sum(), 1.0)
    return [float(1.0 / math.log(c + p)) for p in share]


def split_fingerprint(dataset: SegmentationDataset) -> str:
    """A hash of what the statistics depend on: the mask files (path, size, mtime), class count and decoding."""
    digest = hashlib.sha1()
    digest.update(json.dumps({"version": CACHE_VERSION, "type": type(dataset).__name__,
                              "num_classes": dataset.num_classes, "decoding": dataset.label_decoding},
                             sort_keys=True).encode())
    for sample in dataset.samples:
        path = Path(sample.mask if sample.mask is not None else sample.image)
        try:
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    annotations = getattr(dataset, "annotation_file", None)  # masks drawn from one annotation file (COCO)
    if annotations is not None:
        stat = Path(annotations).stat()
        digest.update(f"{annotations}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def compute_statistics(dataset: SegmentationDataset, progress: bool = False, threads: int = 4) -> PixelStatistics:
    """Read every mask of ``dataset`` (decoding releases the GIL: a few threads read in parallel)."""
    stats = PixelStatistics(dataset.num_classes)

    def counts(index: int) -> np.ndarray:
        return np.bincount(dataset.load_mask(index).ravel(), minlength=dataset.num_classes)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for result in tqdm(pool.map(counts, range(len(dataset))), total=len(dataset), desc="class statistics",
                           unit="mask", disable=not progress):
            stats.add_counts(result)
    return stats


def cached_statistics(dataset: SegmentationDataset, cache: Union[str, Path, None] = None,
                      progress: bool = False) -> PixelStatistics:
    """``compute_statistics``, read from / written to ``<cache>/class_stats/<fingerprint>.json``."""
    folder = (Path(cache).expanduser() if cache is not None else default_cache()) / "class_stats"
    path = folder / f"{split_fingerprint(dataset)}.json"
    if path.is_file():
        try:
            return PixelStatistics.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring the unreadable class statistics cache %s", path)
    stats = compute_statistics(dataset, progress)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp-{os.getpid()}")
        temporary.write_text(json.dumps(stats.to_json()) + "\n")
        os.replace(temporary, path)
    except OSError as error:  # a read-only cache or a full disk only costs the next run the same scan
        temporary.unlink(missing_ok=True)
        log.warning("could not cache class statistics in %s: %s", folder, error)
    return stats


def check_class_weights(class_weights, num_classes: Optional[int] = None) -> None:
    """Raise a ``ValueError`` starting with ``class_weights`` unless it is None, ``"none"``, a method of ``METHODS``
    or a list of non-negative numbers, not all zero (``num_classes`` of them, when given)."""
    if class_weights is None or isinstance(class_weights, str):
        if class_weights not in (None, "none", *METHODS):
            raise ValueError(f"class_weights must be one of {['none', *METHODS]} or a list, got {class_weights!r}")
        return
    numbers = isinstance(class_weights, (list, tuple)) and len(class_weights) > 0 and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in class_weights)
    if not numbers or not any(w > 0 for w in class_weights):
        raise ValueError(f"class_weights must be none, {', '.join(METHODS)} or a list of non-negative numbers "
                         f"(one per class), got {class_weights!r}")
    if num_classes is not None and len(class_weights) != num_classes:
        raise ValueError(f"class_weights has {len(class_weights)} values but the dataset has {num_classes} classes")


def resolve_class_weights(spec, dataset: SegmentationDataset, cache: Union[str, Path, None] = None,
                          progress: bool = False) -> Optional[List[float]]:
    """``class_weights`` (``check_class_weights``) -> one weight per class, or None.

    ``spec``: None / ``"none"``, a method of ``METHODS`` (computed from ``dataset``'s masks, cached), or a list of
    ``dataset.num_classes`` non-negative numbers (used as given).
    """
    check_class_weights(spec, dataset.num_classes if isinstance(spec, (list, tuple)) else None)
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        return cached_statistics(dataset, cache, progress).weights(spec)
    return [float(w) for w in spec]

