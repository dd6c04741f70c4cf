"""Inference: from a batch of normalised images to per-class probabilities at the images' resolution.

The strategies combine freely; the DeepLabv3 paper's best VOC numbers use output stride 8 (set on the model),
scales 0.5 ... 1.75 and flips:

* multi-scale (``scales``): the image is resized bilinearly per scale, each pass's logits are resized back to the
  original size, turned into probabilities (softmax) and averaged over all passes;
* flip (``flip=True``): every scale also runs on the mirrored image, whose output is mirrored back;
* sliding window (``mode="slide"``): each (scaled) image is covered by ``window``-sized crops ``stride`` apart;
  the crops' probabilities are summed and divided by how many crops covered each pixel (and, for a scaled pass,
  resized to the original size). An image smaller than the window is padded at the bottom / right with zeros,
  which in normalised space is the mean colour (what training pads with). This bounds memory for large images such
  as Cityscapes' 1024x2048.

Everything returns probabilities, so ``argmax(1)`` gives the labels in every case, and one plain pass is exactly
the model's softmax.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from seg.errors import UserError


class InferenceOutOfMemory(UserError, RuntimeError):
    pass


def default_stride(window: Sequence[int]) -> Tuple[int, int]:
    """Two thirds of the window (e.g. 512 -> 341): neighbouring windows overlap by a third."""
    return tuple(max(1, 2 * side // 3) for side in window)


def segment(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
            mode: str = "whole", window: Optional[Sequence[int]] = None,
            stride: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Per-class probabilities ``[N, C, H, W]`` (float32) for normalised images ``[N, 3, H, W]``.

    ``model(x)["out"]`` must give logits at ``x``'s size (any size). ``mode`` is ``"whole"`` or ``"slide"``;
    ``window`` / ``stride`` are ``(height, width)``; ``stride`` defaults to two thirds of the window. The options
    are checked where a configuration enters (``seg.config.validate_inference``), not on every call. A CUDA
    out-of-memory error becomes an ``InferenceOutOfMemory`` that says what to change.
    """
    size = tuple(images.shape[-2:])
    if mode == "slide" and stride is None:
        stride = default_stride(window)
    total, passes = None, 0
    try:
        for scale in scales:
            scaled = images
            if scale != 1:
                scaled_size = [max(1, int(side * scale + 0.5)) for side in size]
                scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
            for mirrored in (False, True) if flip else (False,):
                x = scaled.flip(-1) if mirrored else scaled
                if mode == "whole":
                    probs = _probabilities(model(x)["out"], size)
                else:
                    probs = _slide(model, x, size, window, stride)
                probs = probs.flip(-1) if mirrored else probs
                total = probs if total is None else total + probs
                passes += 1
    except torch.cuda.OutOfMemoryError:
        raise InferenceOutOfMemory(
            f"out of GPU memory segmenting {images.shape[0]} image(s) of {size[0]}x{size[1]} (scales "
            f"{list(scales)}, flip {flip}, mode {mode}): use sliding-window inference (inference.mode=slide, "
            "with a smaller inference.window), fewer or smaller tta.scales, or batch_size=1") from None
    return total / passes


def _probabilities(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    logits = logits.float()
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.softmax(1)


def _window_starts(length: int, window: int, stride: int) -> List[int]:
    """Window offsets along one side (``length >= window``); the last window ends exactly at the border."""
    count = (length - window + stride - 1) // stride + 1
    return [min(i * stride, length - window) for i in range(count)]


def _slide(model: torch.nn.Module, images: torch.Tensor, size: Tuple[int, int], window: Sequence[int],
           stride: Sequence[int]) -> torch.Tensor:
    """Probabilities of ``images`` from overlapping windows, resized to ``size``."""
    height, width = images.shape[-2:]
    pad_bottom, pad_right = max(window[0] - height, 0), max(window[1] - width, 0)
    padded = F.pad(images, (0, pad_right, 0, pad_bottom))  # zeros: the mean colour after normalisation
    summed = None
    count = torch.zeros(padded.shape[-2:], device=images.device)
    for top in _window_starts(padded.shape[-2], window[0], stride[0]):
        for left in _window_starts(padded.shape[-1], window[1], stride[1]):
            crop = padded[..., top:top + window[0], left:left + window[1]]
            probs = model(crop)["out"].float().softmax(1)
            if summed is None:
                summed = probs.new_zeros((*probs.shape[:2], *padded.shape[-2:]))
            summed[..., top:top + window[0], left:left + window[1]] += probs
            count[top:top + window[0], left:left + window[1]] += 1
    probs = (summed / count)[..., :height, :width]
    if (height, width) != size:  # a scaled pass: probabilities back to the original size
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
    return probs
