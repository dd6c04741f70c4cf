"""How much of a dilated filter lands inside a feature map of a given size (DeepLabv3, section 3.3, Fig. 4).

With zero padding, a tap that falls outside the map multiplies a padded zero: its weight is wasted. As the
rate of a 3x3 filter approaches the map size, the eight outer taps leave the map for almost every output
position and the filter degenerates to its centre 1x1 tap (1/9 of the weights); this is why DeepLabv3 adds
the image pooling branch for global context instead of ever larger rates.
"""

from __future__ import annotations

from typing import Dict, List

from seg.analysis.layers import Layer, layer_output_size


def valid_taps_1d(size: int, layer: Layer) -> List[int]:
    """For every output position along one axis, how many of the layer's taps fall inside ``[0, size)``."""
    return [sum(0 <= position * layer.stride - layer.padding + tap * layer.dilation < size
                for tap in range(layer.kernel))
            for position in range(layer_output_size(size, layer))]


def valid_taps(size: int, layer: Layer) -> Dict[str, float]:
    """Fractions of the ``k x k`` taps that fall inside a ``size x size`` map, over all output positions.

    ``mean_fraction`` averages valid taps / k^2; ``all_valid`` and ``one_valid`` are the fractions of output
    positions where every tap, or only one, is inside the map (the curves of the paper's Fig. 4). The window
    is separable, so each 2-D quantity is the product of the per-axis ones.
    """
    counts = valid_taps_1d(size, layer)
    positions = len(counts)
    return {
        "output_size": positions,
        "mean_fraction": (sum(counts) / (positions * layer.kernel)) ** 2,
        "all_valid": (counts.count(layer.kernel) / positions) ** 2,
        "one_valid": (counts.count(1) / positions) ** 2,
    }
