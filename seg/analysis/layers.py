"""A stack of square convolution (or pooling) layers, described by kernel, dilation, stride and padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence


@dataclass(frozen=True)
class Layer:
    """One square sliding-window layer. ``padding=None`` means "same" padding, ``dilation * (kernel - 1) // 2``."""

    kernel: int
    dilation: int = 1
    stride: int = 1
    padding: Optional[int] = None
    name: str = ""

    def __post_init__(self):
        for field_name in ("kernel", "dilation", "stride"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"layer {self.name or '?'}: {field_name} must be a positive integer, got {value!r}")
        if self.padding is None:
            object.__setattr__(self, "padding", self.dilation * (self.kernel - 1) // 2)
        elif not isinstance(self.padding, int) or isinstance(self.padding, bool) or self.padding < 0:
            raise ValueError(f"layer {self.name or '?'}: padding must be an integer >= 0, got {self.padding!r}")

    @property
    def span(self) -> int:
        """Extent of the dilated kernel: a 3x3 filter at rate r spans 2r + 1 pixels."""
        return self.dilation * (self.kernel - 1) + 1


def parse_layers(spec: Sequence[Sequence[int]]) -> List[Layer]:
    """``[[kernel, dilation(, stride(, padding))], ...]`` -> layers named 1, 2, ... in order."""
    if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
        raise ValueError(f"layers must be a non-empty list like [[3,1],[3,2],[3,5]], got {spec!r}")
    layers = []
    for index, entry in enumerate(spec, start=1):
        if isinstance(entry, str) or not isinstance(entry, Sequence) or not 2 <= len(entry) <= 4:
            raise ValueError(f"layer {index} must be [kernel, dilation] or [kernel, dilation, stride(, padding)], "
                             f"got {entry!r} (a single layer is written [[3,2]])")
        layers.append(Layer(*entry, name=str(index)))
    return layers


def output_size(size: int, kernel: int, dilation: int = 1, stride: int = 1, padding: int = 0) -> int:
    """Spatial output size of a convolution, ``floor((F + 2p - d(k-1) - 1) / s) + 1``, as torch computes it."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ValueError(f"a {size}-pixel map is too small for kernel {kernel}, dilation {dilation}, "
                         f"padding {padding}: the dilated kernel spans {dilation * (kernel - 1) + 1} pixels")
    return out


def layer_output_size(size: int, layer: Layer) -> int:
    return output_size(size, layer.kernel, layer.dilation, layer.stride, layer.padding)
