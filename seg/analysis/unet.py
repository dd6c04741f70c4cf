"""Receptive field of the dilated U-Net (``model=unet_dilated``) along its deepest path.

The deepest path (every encoder stage, then every decoder step) has the largest receptive field; the skips reach
less far. ``seg.analysis.layers.Layer`` has integer strides only, and the formula ``1 + sum d (k - 1) jump`` does not
hold across the decoder's 2x2 transposed convolutions: an output pixel of one reads exactly one input pixel, o // 2,
so two neighbours share an input and which pixels a 3x3 window after it reaches depends on the position's phase.
The walk here follows the pixels back exactly, layer by layer, for one period of output positions, and reports the
smallest and largest receptive field (284 and 300 pixels for the dilated U-Net; 188 and 204 without its dilation).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Dict, List, Optional, Sequence

from torch import nn


def _rows(model: nn.Module) -> List[Dict]:
    """(name, kind, kernel, dilation) of the deepest path's sliding-window layers, in forward order."""
    encoder, rows = model.backbone, []
    for index, stage in enumerate(encoder.blocks):
        if index:
            rows.append({"name": "backbone.pool", "kind": "max-pool", "kernel": 2, "dilation": 1, "stride": 2})
        rows += [{"name": f"backbone.blocks.{index}.{name}", "kind": "conv", "kernel": conv.kernel_size[0],
                  "dilation": conv.dilation[0], "stride": conv.stride[0]}
                 for name, conv in stage.named_children() if isinstance(conv, nn.Conv2d)]
    for index, step in enumerate(model.decoder):
        rows.append({"name": f"decoder.{index}.up", "kind": "up-conv", "kernel": step.up.kernel_size[0],
                     "dilation": 1, "stride": Fraction(1, step.up.stride[0])})
        rows += [{"name": f"decoder.{index}.convs.{name}", "kind": "conv", "kernel": conv.kernel_size[0],
                  "dilation": conv.dilation[0], "stride": conv.stride[0]}
                 for name, conv in step.convs.named_children() if isinstance(conv, nn.Conv2d)]
    rows.append({"name": "classifier", "kind": "conv", "kernel": 1, "dilation": 1, "stride": 1})
    return rows


def _extent(rows: Sequence[Dict], position: int) -> int:
    """Input pixels (1-D extent) that output ``position`` of the last of ``rows`` depends on, walked back exactly:
    a max-pool output j reads 2j and 2j + 1, an up-conv output o reads o // 2, a conv at dilation d reads i + d t."""
    reach = {position}
    for row in reversed(rows):
        if row["kind"] == "max-pool":
            reach = {2 * j + k for j in reach for k in range(row["kernel"])}
        elif row["kind"] == "up-conv":
            reach = {o // row["kernel"] for o in reach}
        else:
            half = row["kernel"] // 2
            reach = {i + row["dilation"] * t for i in reach for t in range(-half, half + 1)}
    return max(reach) - min(reach) + 1


def analyse_unet_model(model: nn.Module, input_size: Optional[int] = None) -> Dict:
    """Per layer of the deepest path: receptive field (smallest and largest over output positions) and jump after it
    (input pixels), and its map size for a square input of ``input_size`` (resized up to a multiple of 16 as the
    model does). After an up-convolution the receptive field depends on the position's phase (modulo 16 at the
    output): each position is walked back exactly, one period of positions far from the borders."""
    jump, rows = Fraction(1), _rows(model)
    size = None if input_size is None else model.working_size(input_size, input_size)[0]
    for index, row in enumerate(rows):
        jump *= row["stride"]
        extents = [_extent(rows[:index + 1], 1024 + phase) for phase in range(model.output_stride)]
        if size is not None:
            size = size * 2 if row["kind"] == "up-conv" else size // row["stride"]
        row.update(receptive_field=max(extents), receptive_field_min=min(extents), jump=float(jump), size=size,
                   stride=float(row["stride"]))
    stages = [{"stage": f"stage{index + 1}", "receptive_field": next(r for r in reversed(rows) if r["name"].startswith(
        f"backbone.blocks.{index}."))["receptive_field"]} for index in range(len(model.backbone.blocks))]
    return {"mode": "unet", "widths": list(model.widths), "input_size": input_size, "layers": rows,
            "stages": stages, "receptive_field": rows[-1]["receptive_field"],
            "receptive_field_min": rows[-1]["receptive_field_min"], "output_stride": model.output_stride}


def analyse_unet_config(widths: Optional[Sequence[int]] = None, input_size: Optional[int] = 512) -> Dict:
    """Build ``model=unet_dilated`` (random weights, two classes; ``widths`` None: 64..1024) and analyse it."""
    from seg.models import build_model

    model = build_model("unet", 2, multi_grid=None, head="unet_dilated",
                        unet_widths=None if widths is None else tuple(widths))
    return analyse_unet_model(model, input_size)


def format_unet_report(report: Dict) -> List[str]:
    sized = report["input_size"] is not None
    widths = "-".join(str(w) for w in report["widths"])
    lines = [f"dilated U-Net {widths}, output stride {report['output_stride']}"
             + (f"; input {report['input_size']}x{report['input_size']}" if sized else ""),
             f"deepest path: {len(report['layers'])} layers (encoder, bottleneck, decoder; skips reach less far)",
             f"{'layer':<28}{'kind':>9}{'k':>3}{'d':>4}{'RF':>10}{'jump':>7}" + (f"{'size':>6}" if sized else "")]
    for row in report["layers"]:
        rf = (f"{row['receptive_field']}" if row["receptive_field_min"] == row["receptive_field"]
              else f"{row['receptive_field_min']}-{row['receptive_field']}")
        lines.append(f"{row['name']:<28}{row['kind']:>9}{row['kernel']:>3}{row['dilation']:>4}{rf:>10}"
                     f"{row['jump']:>7g}" + (f"{row['size']:>6}" if sized else ""))
    stages = ", ".join(f"{s['stage']} {s['receptive_field']}" for s in report["stages"])
    lines += [f"receptive field after each encoder stage: {stages}",
              f"receptive field of the output: {report['receptive_field_min']}x{report['receptive_field_min']} to "
              f"{report['receptive_field']}x{report['receptive_field']} input pixels (by the position's phase "
              f"modulo {report['output_stride']})"]
    return lines
