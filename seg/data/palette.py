"""Display colours for any number of classes: label maps are drawn through a palette with one row per value.

VOC's colour map spreads the bits of a value over the three channels (bit 0 to red, 1 to green, 2 to blue, and so
on from the top bit down), so it gives distinct colours to 2**24 values: its first 256 rows are the palette stored
in VOC's PNGs, and the rows beyond serve datasets with more than 256 classes (16-bit masks).
"""

from __future__ import annotations

import numpy as np


def colour_map(n: int = 256) -> np.ndarray:
    """uint8 ``[n, 3]``: VOC's colour map for the values ``0..n-1`` (value 255 is (224, 224, 192))."""
    values = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for bit in range(7, -1, -1):
        for channel in range(3):
            colours[:, channel] |= ((values >> channel) & 1) << bit
        values >>= 3
    return colours.astype(np.uint8)


def extend_palette(palette, num_classes: int) -> np.ndarray:
    """``palette`` (uint8 ``[rows, 3]``, at least 256 rows) with ``colour_map`` rows appended up to ``num_classes``
    rows, so that every class of a dataset with more than 256 classes has a colour."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) >= num_classes:
        return palette
    return np.concatenate([palette, colour_map(num_classes)[len(palette):]])
