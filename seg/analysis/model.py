"""Read the real convolution sequence of a built DeepLab model and analyse it.

The main path is walked from the modules themselves, so the analysis follows whatever strides and dilations
the model actually has (after ``set_output_stride`` too): the stem conv and max-pool, then every residual
unit's own convolutions (``conv1``, ``conv2``, ``conv3``) in order, skipping the ``downsample`` shortcut
(shortcuts never change where the holes are, see ``seg.analysis.coverage``). The cascaded model's block5+
(``cascade.block5`` ...) continue the path; its 1x1 classifier changes nothing. DeepLab v2's ASPP-L branches are
read as the ASPP's are.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from torch import nn

from seg.analysis.coverage import coverage_profile, coverage_summary, receptive_field
from seg.analysis.feature_map import valid_taps
from seg.analysis.layers import Layer
from seg.analysis.report import describe_stack, hdc_for, same_grid_segment

STAGES = ("layer1", "layer2", "layer3", "layer4")


def _square(value, what: str, name: str) -> int:
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"{name}: only square windows are analysed, {what} is {value}")
        value = value[0]
    return int(value)


def layer_from_module(module: nn.Module, name: str) -> Layer:
    """A ``Layer`` from an ``nn.Conv2d`` or ``nn.MaxPool2d`` (its kernel, dilation, stride and padding)."""
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        raise TypeError(f"{name}: expected nn.Conv2d or nn.MaxPool2d, got {type(module).__name__}")
    return Layer(*(_square(getattr(module, attr), attr, name)
                   for attr in ("kernel_size", "dilation", "stride", "padding")), name=name)


def main_path_layers(model: nn.Module) -> List[Layer]:
    """Stem conv1 (or the deep stem's three convs) and max-pool, then every unit's conv1/conv2/(conv3), named by
    module path, in forward order (torchvision's blocks register their convolutions in the order they run); the
    cascaded model's blocks after the backbone's."""
    backbone = model.backbone
    stem = (backbone.stem.named_children() if hasattr(backbone, "stem") else [("conv1", backbone.conv1)])
    prefix = "backbone.stem." if hasattr(backbone, "stem") else "backbone."
    layers = [layer_from_module(conv, prefix + name) for name, conv in stem if isinstance(conv, nn.Conv2d)]
    layers.append(layer_from_module(backbone.maxpool, "backbone.maxpool"))
    stages = [(f"backbone.{stage}", getattr(backbone, stage)) for stage in STAGES]
    cascade = getattr(model, "cascade", nn.Sequential())
    stages += [(f"cascade.{name}", block) for name, block in cascade.named_children()]
    for path, stage in stages:
        for unit_index, unit in enumerate(stage):
            layers += [layer_from_module(child, f"{path}.{unit_index}.{child_name}")
                       for child_name, child in unit.named_children() if isinstance(child, nn.Conv2d)]
    return layers


def stage_of(layer: Layer) -> str:
    part = layer.name.split(".")[1]
    return part if part in STAGES or layer.name.startswith("cascade.") else "stem"


def _stages(layers: Sequence[Layer], rows: Sequence[Dict]) -> List[Dict]:
    """Per stage: layer count, its spatial (kernel, dilation) pairs, stride, and RF and size after it."""
    summary: Dict[str, Dict] = {}
    for layer, row in zip(layers, rows):
        entry = summary.setdefault(stage_of(layer), {"stage": stage_of(layer), "layers": 0, "spatial": [],
                                                     "stride": 1})
        entry["layers"] += 1
        entry["stride"] *= layer.stride
        if layer.kernel > 1:
            entry["spatial"].append([layer.kernel, layer.dilation])
        entry["receptive_field"], entry["output_size"] = row["receptive_field"], row["output_size"]
    return list(summary.values())


def _dilated_stage(name: str, layers: List[Layer]) -> Optional[Dict]:
    """HDC and coverage of a dilated stage's k x k convs on their own grid (after the stage's stride, if any)."""
    segment = same_grid_segment(layers)
    hdc = hdc_for(segment)
    if hdc is None:
        return None
    note = None
    if not hdc["checks"]["common_factor"]["ok"]:
        note = ("the model sets a dilated stage's rates to its stage rate (the strides replaced by dilation up "
                "to it), times model.multi_grid in the last stage; a stage rate above 1 divides every rate "
                "whatever model.multi_grid is, so rates like the suggestions need per-unit dilations")
    return {"stage": name, "rates": hdc["rates"], "coverage": coverage_summary(coverage_profile(segment)),
            "hdc": hdc, "note": note}


def _aspp_branches(model: nn.Module, backbone_layers: List[Layer], feature_size: int) -> List[Dict]:
    """Every ASPP conv branch after the backbone path (RF, holes, taps inside the map); pooling is global. None for
    the cascaded model (no ASPP); DeepLab v2's branches are single convolutions."""
    branches = []
    for index, branch in enumerate(model.aspp.convs if hasattr(model, "aspp") else []):
        name, first = next((n, m) for n, m in branch.named_modules()
                           if isinstance(m, (nn.Conv2d, nn.AdaptiveAvgPool2d)))
        if isinstance(first, nn.AdaptiveAvgPool2d):
            branches.append({"branch": index, "kind": "image_pooling", "kernel": None, "rate": None,
                             "receptive_field": None, "holes": None, "valid_taps": None})
            continue
        layer = layer_from_module(first, f"aspp.convs.{index}{'.' + name if name else ''}")
        path = [*backbone_layers, layer]
        branches.append({"branch": index, "kind": "conv", "kernel": layer.kernel, "rate": layer.dilation,
                         "receptive_field": receptive_field(path),
                         "holes": coverage_summary(coverage_profile(path))["holes"],
                         "valid_taps": valid_taps(feature_size, layer)})
    return branches


def head_of(model: nn.Module) -> str:
    """``model.head`` of a built model (the report's wording depends on it)."""
    from seg.models.cascade import CascadeDeepLab
    from seg.models.deeplab import DeepLabV3PlusDecoder
    from seg.models.deeplabv2 import DeepLabV2

    if isinstance(model, (CascadeDeepLab, DeepLabV2)):
        return "cascade" if isinstance(model, CascadeDeepLab) else "deeplabv2"
    return "deeplabv3plus" if isinstance(getattr(model, "decoder", None), DeepLabV3PlusDecoder) else "deeplabv3"


def analyse_model(model: nn.Module, name: str = "model", input_size: int = 513,
                  feature_size: Optional[int] = None) -> Dict:
    """Analysis of a built model's backbone path and ASPP branches for a square input of ``input_size``.

    ``feature_size`` (the ASPP input map) defaults to the backbone's output size for ``input_size``: 33 for
    513 at output stride 16, 65 at 8.
    """
    layers = main_path_layers(model)
    stack = describe_stack(layers, input_size)
    feature_size = feature_size or stack["layers"][-1]["output_size"]
    by_stage: Dict[str, List[Layer]] = {}
    for layer in layers:
        by_stage.setdefault(stage_of(layer), []).append(layer)
    dilated = [_dilated_stage(stage, stage_layers) for stage, stage_layers in by_stage.items()
               if any(layer.dilation > 1 for layer in stage_layers)]
    dilated = [stage for stage in dilated if stage is not None]
    aspp = _aspp_branches(model, layers, feature_size)
    return {
        "mode": "model",
        "model": {"backbone": name, "output_stride": model.output_stride, "head": head_of(model),
                  "cascade_blocks": len(getattr(model, "cascade", ())),
                  "multi_grid": list(model.backbone.multi_grid),
                  "aspp_rates": [b["rate"] for b in aspp if b["kind"] == "conv" and b["kernel"] > 1]},
        "input_size": input_size,
        "feature_size": feature_size,
        **stack,
        "stages": _stages(layers, stack["layers"]),
        "dilated_stages": dilated,
        "aspp": aspp,
    }


def analyse_config(backbone: str, output_stride: int = 16, multi_grid: Sequence[int] = (1, 2, 4),
                   aspp_rates: Optional[Sequence[int]] = None, input_size: int = 513,
                   feature_size: Optional[int] = None, head: str = "deeplabv3", cascade_blocks: int = 3) -> Dict:
    """Build the model a config describes (random weights, two classes) and analyse it.

    Only the built-in ResNets: the walk of the main path reads their units' convolutions (timm encoders,
    MobileNetV3 and other networks have no such fixed layout).
    """
    from seg.models import BACKBONES, build_model

    if backbone not in BACKBONES:
        raise ValueError(f"the receptive-field analysis covers only the built-in ResNets ({', '.join(BACKBONES)}), "
                         f"not {backbone!r} (MobileNetV3 and timm encoders included)")

    model = build_model(backbone, num_classes=2, output_stride=output_stride, multi_grid=multi_grid,
                        aspp_rates=aspp_rates, head=head, cascade_blocks=cascade_blocks)
    return analyse_model(model, backbone, input_size, feature_size)
