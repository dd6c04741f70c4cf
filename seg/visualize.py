"""Colour-coded label maps and overlays (TensorBoard images, predict.py outputs)."""

from __future__ import annotations

import cv2
import numpy as np


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``HxW`` label map -> ``HxWx3`` uint8 RGB with the dataset palette (``[256, 3]``)."""
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the colour-coded ``mask`` over the RGB ``image``; ignored pixels show the image unchanged.

    OpenCV blends in uint8 (rounded, saturated), so a 10,000 x 10,000 image needs no float copies.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    blended = cv2.addWeighted(image, 1 - alpha, colorize(mask, palette), alpha, 0)
    ignored = mask == ignore_index
    blended[ignored] = image[ignored]
    return blended
