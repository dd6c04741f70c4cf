"""Inference: from a batch of normalised images to per-class probabilities at the images' resolution.

The strategies combine freely; the DeepLabv3 paper's best VOC numbers use output stride 8 (set on the model),
scales 0.5 ... 1.75 and flips:

* multi-scale (``scales``): the image is resized bilinearly per scale, each pass's logits are resized back to the
  original size, turned into probabilities (softmax) and averaged over all passes;
* flip (``flip=True``): every scale also runs on the mirrored image, whose output is mirrored back;
* sliding window (``mode="slide"``): each (scaled) image is covered by ``window``-sized crops ``stride`` apart;
  each crop's probabilities, divided by how many crops cover each pixel, are added in place into one
  preallocated buffer (for a scaled pass, a buffer at the scaled size, resized to the original size at the end).
  An image smaller than the window is padded at the bottom / right with zeros, which in normalised space is the
  mean colour (what training pads with). Windows are streamed one at a time, so at the original scale the memory
  beyond the input is one ``[N, C, H, W]`` buffer (float32, or float16 with ``accumulate``) plus one window's
  activations: this is what makes Cityscapes' 1024x2048 or a 10,000 x 10,000 image fit.

Everything returns probabilities, so ``argmax(1)`` gives the labels in every case, and one plain pass is exactly
the model's softmax.

Callers that take images of any size (predict, evaluate) pass their options through ``fit_to_memory`` first: a
whole-image pass that would not fit in the memory free now (``seg.engine.memory``) becomes the sliding window.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from seg.engine import memory
from seg.errors import UserError

log = logging.getLogger("seg.inference")

PROGRESS_MIN_WINDOWS = 16  # fewer windows take too little time for a bar to help


class InferenceOutOfMemory(UserError, RuntimeError):
    pass


def default_stride(window: Sequence[int]) -> Tuple[int, int]:
    """Two thirds of the window (e.g. 512 -> 341): neighbouring windows overlap by a third."""
    return tuple(max(1, 2 * side // 3) for side in window)


def segment(model: torch.nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
            mode: str = "whole", window: Optional[Sequence[int]] = None, stride: Optional[Sequence[int]] = None,
            accumulate: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """Per-class probabilities ``[N, C, H, W]`` (of dtype ``accumulate``) for normalised images ``[N, 3, H, W]``.

    ``model(x)["out"]`` must give logits at ``x``'s size (any size). ``mode`` is ``"whole"`` or ``"slide"``;
    ``window`` / ``stride`` are ``(height, width)``; ``stride`` defaults to two thirds of the window.
    ``accumulate=torch.float16`` halves the one full-size buffer the passes are summed into. ``progress`` shows a
    bar of windows for images that need at least ``PROGRESS_MIN_WINDOWS`` of them. The options are checked where a
    configuration enters (``seg.config.validate_inference``), not on every call. A CUDA out-of-memory error
    becomes an ``InferenceOutOfMemory`` that says what to change.
    """
    size = tuple(images.shape[-2:])
    if mode == "slide" and stride is None:
        stride = default_stride(window)
    mirrors = (False, True) if flip else (False,)
    sizes = [size if scale == 1 else tuple(max(1, int(side * scale + 0.5)) for side in size) for scale in scales]
    windows = sum(_window_count(s, window, stride) for s in sizes) * len(mirrors) if mode == "slide" else 0
    total = None
    try:
        with tqdm(total=windows, desc="windows", unit="window", leave=False, dynamic_ncols=True,
                  disable=not progress or windows < PROGRESS_MIN_WINDOWS) as bar:
            for scaled_size in sizes:
                scaled = images
                if scaled_size != size:
                    scaled = F.interpolate(images, size=scaled_size, mode="bilinear", align_corners=False)
                for mirrored in mirrors:
                    if mode == "whole":
                        x = scaled.flip(-1) if mirrored else scaled
                        probs = _probabilities(model(x)["out"], size)
                        total = _add(total, probs.flip(-1) if mirrored else probs, accumulate)
                    elif scaled_size == size:  # windows add straight into the full-size buffer
                        total = _slide(model, scaled, window, stride, total, accumulate, mirrored, bar)
                    else:  # a scaled pass has its own buffer, resized to the original size at the end
                        part = _slide(model, scaled, window, stride, None, accumulate, mirrored, bar)
                        total = _add(total, _probabilities(part, size, softmax=False), accumulate)
                        del part
    except torch.cuda.OutOfMemoryError:
        raise InferenceOutOfMemory(
            f"out of GPU memory segmenting {images.shape[0]} image(s) of {size[0]}x{size[1]} (scales "
            f"{list(scales)}, flip {flip}, mode {mode}): use sliding-window inference (inference.mode=slide, "
            "with a smaller inference.window), fewer or smaller tta.scales, or batch_size=1") from None
    passes = len(scales) * len(mirrors)
    return total if passes == 1 else total.div_(passes)


def fit_to_memory(model: torch.nn.Module, images: torch.Tensor, options: Mapping, name: str) -> Dict:
    """The options of ``segment`` for ``images`` (``name``: how the messages call them), within the memory free now.

    Whole-image inference whose estimated peak (``seg.engine.memory``) exceeds the memory this process may still
    use runs as the sliding window instead, with the window the options carry (the configured one, else the
    training crop), and one warning says so (image, size, estimate, free memory). Switching rather than refusing:
    the sliding window gives the model the context it was trained on, so its labels are as good, and a folder of
    mixed sizes goes through in one run. Where no window is known, or the sliding window would not fit either, an
    ``InferenceOutOfMemory`` names the image, its size and what to change, before any allocation fails.
    """
    if options["mode"] != "whole":
        return dict(options)
    free = memory.free_bytes(images.device)
    if free is None:
        return dict(options)
    need = memory.whole_image_bytes(model, images, options["scales"], options["accumulate"])
    if need <= free:
        return dict(options)
    size = "x".join(str(side) for side in images.shape[-2:])
    window = options.get("window")
    if window is None:
        raise InferenceOutOfMemory(
            f"{name} ({size}) needs about {_gb(need)} for whole-image inference and {_gb(free)} is free: use "
            "inference.mode=slide inference.window=[height,width] (the model records no training crop size)")
    slide = memory.slide_bytes(model, images, options["scales"], window, options["accumulate"])
    if slide > free:
        raise InferenceOutOfMemory(
            f"{name} ({size}) does not fit in the {_gb(free)} free, whole (about {_gb(need)}) nor with "
            f"inference.mode=slide (about {_gb(slide)}): use inference.accumulate=float16, a smaller "
            "inference.window or fewer tta.scales, or a machine with more memory")
    log.warning("%s (%s): whole-image inference needs about %s but %s is free: using inference.mode=slide "
                "(window %s) for it", name, size, _gb(need), _gb(free), list(window))
    return {**options, "mode": "slide"}


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def allocate_accumulator(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The one full-size buffer (``[N, C, H, W]``, zeros) every pass at the original scale adds into in place.

    A function of its own so that a test can watch what is allocated, and how often.
    """
    return torch.zeros(tuple(shape), dtype=dtype, device=device)


def _add(total: Optional[torch.Tensor], probs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if total is None:
        total = allocate_accumulator(probs.shape, dtype, probs.device)
    return total.add_(probs)


def _probabilities(logits: torch.Tensor, size: Tuple[int, int], softmax: bool = True) -> torch.Tensor:
    logits = logits.float()
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits.softmax(1) if softmax else logits


def _window_starts(length: int, window: int, stride: int) -> List[int]:
    """Window offsets along one side; the last window ends exactly at the border (at 0 if the side is shorter)."""
    length = max(length, window)
    count = (length - window + stride - 1) // stride + 1
    return [min(i * stride, length - window) for i in range(count)]


def _window_count(size: Sequence[int], window: Sequence[int], stride: Sequence[int]) -> int:
    return len(_window_starts(size[0], window[0], stride[0])) * len(_window_starts(size[1], window[1], stride[1]))


def _coverage(starts: Sequence[int], window: int, length: int, device: torch.device) -> torch.Tensor:
    """How many windows cover each position of a side (``[length]``): windows form a grid, so the count of a
    pixel is its row's count times its column's count, and no full-size count map is needed."""
    count = torch.zeros(length, device=device)
    for start in starts:
        count[start:start + window] += 1
    return count


def _slide(model: torch.nn.Module, images: torch.Tensor, window: Sequence[int], stride: Sequence[int],
           total: Optional[torch.Tensor], dtype: torch.dtype, mirrored: bool, bar) -> torch.Tensor:
    """Add the window-averaged probabilities of ``images`` (or of their mirror image) into ``total``, in place.

    Windows are streamed: one crop at a time is cut out (and, for the mirrored pass, flipped; the mirrored image
    is never materialised), padded to the window size if the image is smaller, run, divided by the number of
    windows covering each of its pixels and added into ``total`` (allocated on the first window, ``[N, C, H,
    W]`` of ``dtype``) at its place in the original image. Returns ``total``.
    """
    height, width = images.shape[-2:]
    rows = _window_starts(height, window[0], stride[0])
    cols = _window_starts(width, window[1], stride[1])
    row_count = _coverage(rows, window[0], height, images.device)[:, None]
    col_count = _coverage(cols, window[1], width, images.device)[None, :]
    for top in rows:
        for left in cols:  # in the coordinates of the pass's image (mirrored or not)
            crop_h, crop_w = min(window[0], height - top), min(window[1], width - left)
            first = width - left - crop_w if mirrored else left  # the crop's columns in the original image
            crop = images[..., top:top + crop_h, first:first + crop_w]
            crop = crop.flip(-1) if mirrored else crop
            if (crop_h, crop_w) != tuple(window):  # image smaller than the window: zeros = the mean colour
                crop = F.pad(crop, (0, window[1] - crop_w, 0, window[0] - crop_h))
            probs = model(crop)["out"].float().softmax(1)[..., :crop_h, :crop_w]
            probs = probs / row_count[top:top + crop_h] / col_count[:, left:left + crop_w]
            if total is None:
                total = allocate_accumulator((images.shape[0], probs.shape[1], height, width), dtype, images.device)
            total[..., top:top + crop_h, first:first + crop_w] += probs.flip(-1) if mirrored else probs
            bar.update()
    return total
