"""Receptive field and coverage of one output pixel over the input of a stack of layers.

The coverage of an output pixel counts, for every input pixel, the number of paths through the stack that
reach it: the sliding windows of all layers are treated as all-ones kernels (what matters is which pixels a
filter can see, not its weights). A pixel inside the receptive field with a count of zero is a hole: no
weight ever touches it, which is the gridding effect of badly chosen dilation rates.

Counts are computed backwards from a delta at the output by repeated transposed convolution with all-ones
dilated kernels. A square k x k all-ones kernel is the outer product of two 1-D ones, so the 2-D map is the
outer product of the 1-D profile with itself and only the profile is computed. Counts are exact Python
integers: through a ResNet-101 they exceed what float64 represents exactly.

Residual shortcuts only add the zero offset, which every convolution already contains, so they change counts
but never where the holes are; the main path alone decides the holes.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from seg.analysis.layers import Layer


def receptive_field(layers: Sequence[Layer]) -> int:
    """Receptive field in input pixels: ``1 + sum_i d_i (k_i - 1) * prod_{j<i} s_j``."""
    rf, jump = 1, 1
    for layer in layers:
        rf += (layer.span - 1) * jump
        jump *= layer.stride
    return rf


def total_stride(layers: Sequence[Layer]) -> int:
    jump = 1
    for layer in layers:
        jump *= layer.stride
    return jump


def transposed_conv1d(signal: np.ndarray, layer: Layer) -> np.ndarray:
    """Spread every output position of ``layer`` over the input positions its taps read.

    This is a 1-D transposed convolution with an all-ones kernel: insert ``stride - 1`` zeros between the
    samples, then fully convolve with ``[1, 0 x (d-1), 1, ...]`` (k ones, ``dilation - 1`` zeros apart).
    Padding only shifts where the window starts, so it does not enter.
    """
    upsampled = np.zeros((len(signal) - 1) * layer.stride + 1, dtype=object)
    upsampled[::layer.stride] = signal
    kernel = np.zeros(layer.span, dtype=object)
    kernel[::layer.dilation] = 1
    return np.convolve(upsampled, kernel)


def coverage_profile(layers: Sequence[Layer]) -> np.ndarray:
    """Per-axis path counts of one output pixel over the input; its length is the receptive field."""
    profile = np.ones(1, dtype=object)
    for layer in reversed(layers):
        profile = transposed_conv1d(profile, layer)
    return profile


def coverage_map(profile: np.ndarray) -> np.ndarray:
    """The 2-D coverage map (exact integer counts) of a square stack from its per-axis profile."""
    return np.outer(profile, profile)


def coverage_summary(profile: np.ndarray) -> Dict:
    """Holes and counts of a coverage profile as plain JSON-ready data.

    ``holes`` counts 2-D pixels inside the receptive field never used: a pixel is a hole when its row or its
    column offset is a 1-D hole. ``hole_offsets`` lists the 1-D holes as offsets from the first pixel of
    the receptive field.
    """
    size = len(profile)
    hole_offsets: List[int] = [i for i, count in enumerate(profile) if count == 0]
    used = size - len(hole_offsets)
    return {
        "size": size,
        "profile": [int(c) for c in profile],
        "holes": size * size - used * used,
        "hole_offsets": hole_offsets,
        "used_fraction": (used / size) ** 2,
        "max_count": int(max(profile)) ** 2,
    }
