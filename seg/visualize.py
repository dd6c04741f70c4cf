"""Colour-coded label maps and overlays (TensorBoard images, predict.py outputs)."""

from __future__ import annotations

import numpy as np


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``HxW`` label map -> ``HxWx3`` uint8 RGB with the dataset palette (``[256, 3]``)."""
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_index: int = 255) -> np.ndarray:
    """Blend the colour-coded ``mask`` over the RGB ``image``; ignored pixels show the image unchanged."""
    colours = colorize(mask, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    blended[mask == ignore_index] = image[mask == ignore_index]
    return blended.round().clip(0, 255).astype(np.uint8)
