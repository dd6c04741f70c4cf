"""The models table (docs/models.md): parameters, forward GFLOPs and inference time of every encoder and head this
project builds, in one process, so the time ratios against ResNet-50 compare like with like.

The models are timed in turns (one call of each, then the next round), so that a change of machine load during the
run touches every model alike; each figure is the median of its rounds.
"""

from __future__ import annotations

import copy
import importlib.util
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from seg.benchmark.measure import count_flops
from seg.models import build_model

BASELINE = "resnet50"
# label, build_model arguments: the built-in encoders, then timm's ready configs (configs/backbone/) when installed
BUILT_IN: Tuple[Tuple[str, Dict], ...] = (
    ("resnet18", dict(backbone="resnet18")),
    ("resnet34", dict(backbone="resnet34")),
    ("resnet50", dict(backbone="resnet50")),
    ("resnet101", dict(backbone="resnet101")),
    ("resnet50, deep stem", dict(backbone="resnet50", stem="deep")),
    ("mobilenet_v3_large", dict(backbone="mobilenet_v3_large", multi_grid=None)),
    ("mobilenet_v3_large, LR-ASPP", dict(backbone="mobilenet_v3_large", multi_grid=None, head="lraspp")),
    ("resnet50, cascade block5-7", dict(backbone="resnet50", head="cascade")),
    ("resnet50, DeepLab v2 ASPP-L", dict(backbone="resnet50", head="deeplabv2")),
    # the dilated family (docs/dilated.md); the U-Net runs at output stride 16 whatever the table's
    ("resnet50, context module (basic)", dict(backbone="resnet50", head="context")),
    ("resnet50, context module (large)", dict(backbone="resnet50", head="context", context="large")),
    ("dilated U-Net 64-1024", dict(backbone="unet", head="unet_dilated", multi_grid=None, output_stride=16)),
)
TIMM: Tuple[Tuple[str, Dict], ...] = tuple(
    (name, dict(backbone=f"timm:{name}", multi_grid=(1, 2, 4) if name == "resnet50d" else None))
    for name in ("mobilenetv3_large_100", "efficientnet_b0", "xception65", "resnet50d", "convnext_tiny"))


def model_rows(output_stride: int = 16, size: int = 512, rounds: int = 3, warmup: int = 1,
               include_timm: Optional[bool] = None, names: Optional[Sequence[str]] = None) -> List[Dict]:
    """One row per model: ``name``, ``head``, ``params_m``, ``gflops`` (forward, 1 x 3 x size x size),
    ``ms`` (median inference latency, batch 1, eval mode, no grad) and ``ratio`` (ms / ResNet-50's ms)."""
    include_timm = importlib.util.find_spec("timm") is not None if include_timm is None else include_timm
    chosen = [(label, arguments) for label, arguments in BUILT_IN + (TIMM if include_timm else ())
              if names is None or label in names or label == BASELINE]
    models, rows = [], []
    for label, arguments in chosen:
        arguments = {"num_classes": 21, "output_stride": output_stride, **arguments}
        model = build_model(**arguments).eval()
        models.append(model)
        rows.append({"name": label, "head": arguments.get("head", "deeplabv3"),
                     "output_stride": arguments["output_stride"],
                     "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                     "gflops": count_flops(copy.deepcopy(model).to("meta"), 1, (size, size)) / 1e9})
    image = torch.rand(1, 3, size, size)
    times = [[] for _ in models]
    with torch.no_grad():
        for round_index in range(warmup + rounds):
            for model, spent in zip(models, times):
                tick = time.perf_counter()
                model(image)
                if round_index >= warmup:
                    spent.append((time.perf_counter() - tick) * 1e3)
    baseline = float(np.median(times[[row["name"] for row in rows].index(BASELINE)]))
    for row, spent in zip(rows, times):
        row["ms"] = float(np.median(spent))
        row["ratio"] = row["ms"] / baseline
    return rows


def markdown(rows: Sequence[Dict], size: int, device: str) -> str:
    header = (f"| model | head | output stride | parameters (M) | GFLOPs at {size}x{size} | {device} ms (batch 1) | "
              "time / resnet50 |\n|---|---|---|---|---|---|---|")
    lines = [f"| {r['name']} | {r['head']} | {r['output_stride']} | {r['params_m']:.1f} | {r['gflops']:.1f} | "
             f"{r['ms']:.0f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join([header, *lines])
