"""Mask value -> class index tables for the benchmark formats whose files store another numbering, and the pairing
of listed images with their annotation files.

ADE20K stores 0 for "other" and 1-150 for its classes, Pascal Context 0 for background, COCO-Stuff 182 raw ids of
which 171 are used: each becomes a 256-entry lookup table (mmsegmentation's ``reduce_zero_label`` is one such table).
A value the format never writes is an error naming the file, never a silent class or a silent ignore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from seg.data.base import IGNORE_INDEX, DatasetError, Sample

NOT_A_LABEL = -1  # table entry of a value the format never writes


def table_from_mapping(mapping: Mapping[int, int]) -> np.ndarray:
    """int16 ``[256]``: ``mapping[value]`` for the values it holds, ``NOT_A_LABEL`` for every other value."""
    table = np.full(256, NOT_A_LABEL, dtype=np.int16)
    for value, label in mapping.items():
        table[value] = label
    return table


def reduce_zero_label(num_labels: int) -> np.ndarray:
    """mmsegmentation's ``reduce_zero_label``: 0 -> 255 (ignored), 1..num_labels -> 0..num_labels-1, 255 stays 255."""
    return table_from_mapping({0: IGNORE_INDEX, IGNORE_INDEX: IGNORE_INDEX,
                               **{value: value - 1 for value in range(1, num_labels + 1)}})


def identity(num_labels: int) -> np.ndarray:
    """0..num_labels-1 kept as they are, 255 ignored."""
    return table_from_mapping({IGNORE_INDEX: IGNORE_INDEX, **{value: value for value in range(num_labels)}})


def apply_table(mask: np.ndarray, table: np.ndarray, path: Path, allowed: str) -> np.ndarray:
    """``table[mask]`` as uint8; values the table does not map are an error naming the file and ``allowed``."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # a 16-bit mask may hold values past 255
    bad = [int(v) for v in present if v >= len(table) or table[v] == NOT_A_LABEL]
    if bad:
        raise DatasetError(f"mask {path} holds values {bad} that are not {allowed}")
    return table[mask].astype(np.uint8)


def pair_samples(images: Iterable[Tuple[str, Path]], candidates: Callable[[str, Path], Sequence[Path]]
                 ) -> Tuple[List[Sample], List[str]]:
    """Each ``(id, image)`` with the first existing of its ``candidates(id, image)`` annotation files.

    An image without an annotation (or an id whose image is missing) is left out and reported as one problem naming
    the file, as ``dataset=folder`` reports unpaired files; when no sample is left, the first problem is raised.
    """
    samples, problems = [], []
    for sample_id, image in images:
        paths = list(candidates(sample_id, image))
        mask: Optional[Path] = next((p for p in paths if p.is_file()), None)
        if not image.is_file():
            problems.append(f"image file not found: {image} (listed for {sample_id})")
        elif mask is None:
            expected = " or ".join(str(p) for p in paths)
            problems.append(f"image {image} has no annotation: {expected} not found")
        else:
            samples.append(Sample(sample_id, image, mask))
    if problems and not samples:  # nothing left to train on: the first problem is the one-line error
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DatasetError(f"{problems[0]}{more}")
    return samples, problems
