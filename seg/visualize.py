"""Colour-coded label maps and overlays (TensorBoard images, predict.py outputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from seg.data.base import IGNORE_INDEX, WIDE_IGNORE_INDEX
from seg.data.channels import display_rgb


def save_label_png(labels: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Class indices ``[H, W]`` as a PNG: indexed with ``palette`` (mode "P") for uint8 labels, 16-bit grayscale
    (mode "I;16") for uint16 ones (more than 255 classes, which a palette cannot hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels)
    if labels.dtype == np.uint8:
        image.putpalette(np.asarray(palette, dtype=np.uint8)[:256].reshape(-1).tolist())
    image.save(path)


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``HxW`` label map -> ``HxWx3`` uint8 RGB with the dataset palette (``[256, 3]``, or a row per class beyond
    256 classes); values past the palette (65535, the ignore index of 16-bit labels) are black."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    top = int(mask.max()) if mask.size else 0
    if top >= len(palette):
        palette = np.concatenate([palette, np.zeros((top + 1 - len(palette), 3), dtype=np.uint8)])
    return palette[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: Optional[int] = None) -> np.ndarray:
    """Blend the colour-coded ``mask`` over the RGB ``image``; ignored pixels show the image unchanged.

    ``ignore_index`` defaults to the one of the mask's label space: 255 for uint8 masks, 65535 for wider ones.

    OpenCV blends in uint8 (rounded, saturated), so a 10,000 x 10,000 image needs no float copies.
    """
    image = display_rgb(image)  # grayscale, multi-band and 16-bit inputs shown as RGB
    blended = cv2.addWeighted(image, 1 - alpha, colorize(mask, palette), alpha, 0)
    if ignore_index is None:
        ignore_index = IGNORE_INDEX if mask.dtype == np.uint8 else WIDE_IGNORE_INDEX
    ignored = mask == ignore_index
    blended[ignored] = image[ignored]
    return blended
