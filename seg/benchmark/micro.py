"""Atrous micro-benchmarks on the real ASPP input shapes: a 3x3 convolution at each dilation, and the image
pooling branch's upsampling (broadcast ``expand`` vs bilinear ``F.interpolate``)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg.benchmark.timing import median_of, ratio, time_calls

def bench_conv3x3(shape: Sequence[int], rates: Sequence[int], device: torch.device, dtype: torch.dtype,
                  channels_last: bool, warmup: int, steps: int, backward: bool) -> List[Dict]:
    """A 3x3 conv (C -> 256) at dilation 1 and at each ASPP rate, on the ASPP input shape."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    rows = []
    for dilation in [1, *rates]:
        conv = nn.Conv2d(shape[1], 256, 3, padding=dilation, dilation=dilation, bias=False)
        conv = conv.to(device=device, dtype=dtype, memory_format=memory_format)
        with torch.inference_mode():
            forward, _ = time_calls(lambda: conv(x), device, warmup, steps)
        row = {"dilation": dilation, "fwd_ms": median_of(forward), "fwd_bwd_ms": None}
        if backward:
            xg = x.detach().requires_grad_(True)
            grad = torch.randn(shape[0], 256, *shape[2:], device=device, dtype=dtype).contiguous(
                memory_format=memory_format)

            def fwd_bwd():
                return torch.autograd.grad(conv(xg), (xg, conv.weight), grad)

            both, _ = time_calls(fwd_bwd, device, warmup, steps)
            row["fwd_bwd_ms"] = median_of(both)
        rows.append(row)
        del conv
    dense = rows[0]
    for row in rows:
        row["fwd_ratio"] = ratio(row["fwd_ms"], dense["fwd_ms"])
        row["fwd_bwd_ratio"] = ratio(row["fwd_bwd_ms"], dense["fwd_bwd_ms"])
    return rows


def bench_image_pool(shape: Sequence[int], device: torch.device, dtype: torch.dtype, channels_last: bool,
                     warmup: int, steps: int) -> Dict:
    """The pooling branch brought back to the feature size and concatenated with the other four branches:
    ``expand`` (a broadcast view, as ``seg/models/aspp.py`` does) vs bilinear ``F.interpolate`` from 1x1
    (torchvision's ``ASPPPooling``)."""
    n, _, h, w = shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    others = torch.randn(n, 4 * 256, h, w, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    pooled = torch.randn(n, 256, 1, 1, device=device, dtype=dtype)
    grad = torch.randn(n, 5 * 256, h, w, device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def expand(p):
        return torch.cat([others_, p.expand(-1, -1, h, w)], dim=1)

    def interpolate(p):
        return torch.cat([others_, F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)], dim=1)

    result = {"shape": [n, 256, h, w]}
    for name, fn in (("expand", expand), ("interpolate", interpolate)):
        others_ = others
        with torch.inference_mode():
            forward, _ = time_calls(lambda: fn(pooled), device, warmup, steps)
        others_ = others.detach().requires_grad_(True)
        pooled_g = pooled.detach().requires_grad_(True)
        both, _ = time_calls(lambda: torch.autograd.grad(fn(pooled_g), (others_, pooled_g), grad), device,
                             warmup, steps)
        result[f"{name}_fwd_ms"], result[f"{name}_fwd_bwd_ms"] = median_of(forward), median_of(both)
    return result
