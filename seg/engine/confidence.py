"""What predict.py derives from one image's class probabilities: labels, confidence and entropy, and their files.

* labels: the most probable class (uint8);
* confidence: the largest class probability, in [1/C, 1];
* entropy: ``-sum_c p_c ln p_c / ln C``, normalised to [0, 1] (0: one class certain; 1: all classes equally likely).

Everything is computed in bands of rows, so a 10,000 x 10,000 image never needs a second ``[C, H, W]`` tensor
(an ``argmax`` or ``p ln p`` of the whole image would allocate one, in int64 or float32). The maps are written as
8-bit PNGs through OpenCV's viridis colour scale (dark violet = 0, yellow = 1), and the probabilities optionally
as a float16 ``.npy`` ``[C, H, W]``, also written band by band (``numpy.lib.format.open_memmap``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple, Optional

import cv2
import numpy as np
import torch
from PIL import Image

from seg.data.base import label_space

BAND_ELEMENTS = 1 << 24  # about 64 MB of float32 per band: bounded memory, few Python steps
COLOUR_MAP = cv2.COLORMAP_VIRIDIS


class Summary(NamedTuple):
    labels: np.ndarray                   # [H, W] class indices: uint8, uint16 beyond 255 classes (label_dtype)
    confidence: Optional[np.ndarray]     # [H, W] float32 in [0, 1], or None if not asked for
    entropy: Optional[np.ndarray]        # [H, W] float32 in [0, 1], or None


def _bands(probabilities: torch.Tensor):
    """``(first row, last row)`` pairs covering ``probabilities [C, H, W]`` in bands of about BAND_ELEMENTS."""
    classes, height, width = probabilities.shape
    rows = max(1, BAND_ELEMENTS // max(1, classes * width))
    return [(top, min(top + rows, height)) for top in range(0, height, rows)]


@torch.inference_mode()
def summarise(probabilities: torch.Tensor, maps: bool = False) -> Summary:
    """Labels (and, with ``maps``, confidence and entropy) of one image's probabilities ``[C, H, W]``."""
    classes, height, width = probabilities.shape
    labels = np.empty((height, width), dtype=label_dtype(classes))
    confidence = np.empty((height, width), dtype=np.float32) if maps else None
    entropy = np.empty((height, width), dtype=np.float32) if maps else None
    for top, bottom in _bands(probabilities):
        band = probabilities[:, top:bottom].float()
        best, index = band.max(0)
        labels[top:bottom] = index.to(torch.int32).cpu().numpy()
        if maps:
            confidence[top:bottom] = best.cpu().numpy()
            spread = -(band * band.clamp_min(1e-12).log()).sum(0) / math.log(classes) if classes > 1 else best * 0
            entropy[top:bottom] = spread.clamp(0, 1).cpu().numpy()
    return Summary(labels, confidence, entropy)


def label_dtype(num_classes: int) -> type:
    """The dtype of predicted label maps, the one of the dataset's label maps (``seg.data.base.label_space``): uint8
    up to 255 classes (a palette PNG), uint16 beyond (a 16-bit grayscale PNG: a palette holds 256 colours at most),
    so that an overlay's default ignore value (255 in uint8, 65535 else) is never a class."""
    return label_space(num_classes)[1]


def colour_scale(values: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> uint8 RGB ``[H, W, 3]`` on the viridis scale (256 levels)."""
    levels = np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLOUR_MAP), cv2.COLOR_BGR2RGB)


def save_map(values: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(colour_scale(values)).save(path)


def save_probabilities(probabilities: torch.Tensor, path: Path) -> None:
    """``probabilities [C, H, W]`` as a float16 ``.npy`` (``np.load`` reads it), written class by class, band by
    band. Plain writes, not a memory map: a full disk under a memory map kills the process with SIGBUS, a write
    raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
              "shape": tuple(probabilities.shape)}
    bands = _bands(probabilities)
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for plane in probabilities:
            for top, bottom in bands:
                handle.write(plane[top:bottom].to(torch.float16).cpu().numpy().tobytes())
