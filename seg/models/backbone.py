"""Atrous ResNet backbones built from torchvision's ResNet blocks.

The network is built exactly as torchvision builds it (so ImageNet weights load unchanged) and then
re-strided in place: the strides of the later stages are replaced by dilation, and the 3x3 convolutions of
the last stage get the DeepLabv3 multi-grid rates.

Rule (DeepLabv3, section 3.2 and detectron2's DeepLab): walking through stages 2, 3, 4, a stage whose stride
would take the feature stride past ``output_stride`` keeps stride 1 and doubles the atrous rate instead.
Every unit of a dilated stage takes the new rate, the first unit included (torchvision's
``replace_stride_with_dilation`` instead keeps the previous rate in the first unit). The last stage's unit
``i`` uses ``rate * multi_grid[i]`` (the grid repeats cyclically for stages with more units than grid
entries; resnet18/34 have two units in their last stage and use the first two entries).

Setting the rates by editing the convolutions, rather than passing ``dilation`` to torchvision's
constructors, is what lets ``BasicBlock`` (resnet18/34) be dilated at all: its constructor refuses
``dilation > 1`` although its convolutions compute it correctly. It also lets a built model change its output
stride without touching a parameter.

The stem is torchvision's 7x7 convolution (``stem="standard"``) or the deep stem (``stem="deep"``) of ResNet-C
(Bag of Tricks, He et al. 2019), mmsegmentation's ``ResNetV1c`` and TensorFlow's ``resnet_v1_beta``: three 3x3
convolutions (3->32 at stride 2, 32->32, 32->64), each followed by BN and ReLU, then the same max pool. Its keys are
mmsegmentation's (``stem.0`` conv, ``stem.1`` BN, ``stem.3``, ``stem.4``, ``stem.6``, ``stem.7``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3, resnet

from seg.errors import UserError
from seg.io import describe
from seg.models.layouts import load_file, recognise
from seg.models.layouts.base import strip_prefix, tensors_only
from seg.models.weights import WeightsError, is_own_checkpoint, likely_cause

OUTPUT_STRIDES = (8, 16, 32)
STEMS = ("standard", "deep")

# name -> (torchvision constructor, ImageNet weights enum entry, channels of stage 1 / stage 3 / stage 4)
BACKBONES: Dict[str, Tuple] = {
    "resnet18": (resnet.resnet18, resnet.ResNet18_Weights.IMAGENET1K_V1, (64, 256, 512)),
    "resnet34": (resnet.resnet34, resnet.ResNet34_Weights.IMAGENET1K_V1, (64, 256, 512)),
    "resnet50": (resnet.resnet50, resnet.ResNet50_Weights.IMAGENET1K_V1, (256, 1024, 2048)),
    "resnet101": (resnet.resnet101, resnet.ResNet101_Weights.IMAGENET1K_V1, (256, 1024, 2048)),
}

# Every encoder built from a torchvision classification network (the ResNets here, MobileNetV3 in
# seg/models/mobilenet.py): name -> (ImageNet weights enum entry, prefix of the classifier's keys, which the
# segmentation models drop).
IMAGENET_WEIGHTS: Dict[str, Tuple] = {
    **{name: (entry[1], "fc.") for name, entry in BACKBONES.items()},
    "mobilenet_v3_large": (mobilenetv3.MobileNet_V3_Large_Weights.IMAGENET1K_V1, "classifier."),
    "vainf_mobilenetv2": (mobilenetv2.MobileNet_V2_Weights.IMAGENET1K_V1, "classifier."),  # seg/models/mobilenet_v2.py
}


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")


def check_stem(stem: str, pretrained: str = "none") -> None:
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {list(STEMS)}, got {stem!r}")
    if stem == "deep" and pretrained == "imagenet":
        raise ValueError("pretrained cannot be 'imagenet' with stem 'deep': torchvision has ImageNet weights for the "
                         "standard 7x7 stem only; use 'none' or the path of a ResNet state dict with stem.* keys "
                         "(e.g. mmcv's resnet50_v1c)")


def deep_stem() -> nn.Sequential:
    """Three 3x3 conv/BN/ReLU (3->32 stride 2, 32->32, 32->64): ResNet-C's stem, in mmsegmentation's layout."""
    layers: List[nn.Module] = []
    for in_channels, out_channels, stride in ((3, 32, 2), (32, 32, 1), (32, 64, 1)):
        layers += [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def check_output_stride(output_stride: int) -> int:
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride!r}")
    return int(output_stride)


def check_multi_grid(multi_grid: Optional[Sequence[int]]) -> None:
    """``None`` is no multi-grid (every unit of the last stage at the stage's rate)."""
    if multi_grid is None:
        return
    if (isinstance(multi_grid, (str, bytes)) or not multi_grid
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in multi_grid)):
        raise ValueError(f"multi_grid must be a non-empty list of positive integers, got {multi_grid!r}")


def stage_plan(output_stride: int, multi_grid: Optional[Sequence[int]], units_per_stage: Sequence[int],
               contract_dilation: bool = False, multi_grid_scaled: bool = True):
    """Stride of the first unit and the dilation of every unit for stages 2, 3 and 4.

    Returns a list of ``(stride, [dilation per unit])``, one entry per stage. Pure function: docs/models.md's
    table of dilations and the tests use it directly.

    ``contract_dilation`` runs the first unit of a dilated stage at the previous stage's rate (half the new one):
    torchvision's ``replace_stride_with_dilation``, mmsegmentation's ``contract_dilation=True`` (its D8 models) and
    VainF's DeepLabV3Plus-Pytorch build their ResNets so, and their checkpoints need it.

    ``multi_grid_scaled=False`` is mmsegmentation's multi-grid (its ``ResLayer``): the last stage's units take the
    grid's values themselves as their rates, not multiplied by the stage's rate and never contracted (its D16-MG124
    models: rates 1, 2, 4 where the paper's rule gives 2, 4, 8).
    """
    check_output_stride(output_stride)
    check_multi_grid(multi_grid)
    grid_given = multi_grid is not None
    multi_grid = multi_grid or (1,)
    plan = []
    feature_stride, rate = 4, 1  # after the stem and stage 1
    for stage_index, units in enumerate(units_per_stage):
        if feature_stride * 2 > output_stride:
            stride, rate = 1, rate * 2
        else:
            stride, feature_stride = 2, feature_stride * 2
        is_last = stage_index == len(units_per_stage) - 1
        grid = [int(multi_grid[i % len(multi_grid)]) if is_last else 1 for i in range(units)]
        if is_last and grid_given and not multi_grid_scaled:
            plan.append((stride, grid))
            continue
        dilations = [rate * g for g in grid]
        if contract_dilation and stride == 1 and rate > 1:
            dilations[0] = rate // 2 * grid[0]
        plan.append((stride, dilations))
    return plan


def _first_strided_conv(block: nn.Module) -> nn.Conv2d:
    # torchvision puts the stride in conv2 of a Bottleneck (ResNet v1.5) and conv1 of a BasicBlock.
    return block.conv2 if isinstance(block, resnet.Bottleneck) else block.conv1


def _dilated_convs(block: nn.Module, basic_conv2_dilated: bool = True) -> List[nn.Conv2d]:
    """The 3x3 convolutions that take a unit's rate: a Bottleneck's conv2; both of a BasicBlock's, or (mmsegmentation's
    ``BasicBlock``, ``basic_conv2_dilated=False``) its conv1 only."""
    if isinstance(block, resnet.Bottleneck):
        return [block.conv2]
    return [block.conv1, block.conv2] if basic_conv2_dilated else [block.conv1]


class ResNetBackbone(nn.Module):
    """ResNet trunk without pooling and fc. ``forward`` returns (stage-1, stage-3, stage-4) features."""

    def __init__(self, net: resnet.ResNet, channels: Tuple[int, int, int], output_stride: int,
                 multi_grid: Optional[Sequence[int]], contract_dilation: bool = False, multi_grid_scaled: bool = True,
                 basic_conv2_dilated: bool = True):
        super().__init__()
        if hasattr(net, "stem"):  # the deep stem (build_backbone put it in place of conv1/bn1)
            self.stem = net.stem
        else:
            self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.low_level_channels, self.aux_channels, self.out_channels = channels
        self.multi_grid = [int(g) for g in multi_grid or (1,)]
        self.grid_given = multi_grid is not None  # mmsegmentation's unscaled grid applies only where one is given
        self.contract_dilation = bool(contract_dilation)
        self.multi_grid_scaled, self.basic_conv2_dilated = bool(multi_grid_scaled), bool(basic_conv2_dilated)
        self.output_stride = 32
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        """Re-stride and re-dilate stages 2-4 in place; parameters are untouched."""
        stages = [self.layer2, self.layer3, self.layer4]
        plan = stage_plan(output_stride, self.multi_grid if self.grid_given else None, [len(s) for s in stages],
                          self.contract_dilation, self.multi_grid_scaled)
        for stage, (stride, dilations) in zip(stages, plan):
            for unit_index, (block, dilation) in enumerate(zip(stage, dilations)):
                unit_stride = stride if unit_index == 0 else 1
                _first_strided_conv(block).stride = (unit_stride, unit_stride)
                if block.downsample is not None:
                    block.downsample[0].stride = (unit_stride, unit_stride)
                for conv in _dilated_convs(block, self.basic_conv2_dilated):
                    conv.dilation = (dilation, dilation)
                    conv.padding = (dilation, dilation)
        self.output_stride = int(output_stride)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.stem(x) if hasattr(self, "stem") else self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        mid = self.layer3(self.layer2(low))
        return low, mid, self.layer4(mid)


def build_backbone(name: str, output_stride: int = 16, multi_grid: Optional[Sequence[int]] = (1, 2, 4),
                   pretrained: str = "none", contract_dilation: bool = False, stem: str = "standard",
                   multi_grid_scaled: bool = True, basic_conv2_dilated: bool = True) -> ResNetBackbone:
    check_backbone(name)
    check_stem(stem, pretrained)
    constructor, _, channels = BACKBONES[name]
    net = constructor(weights=None)
    if stem == "deep":
        del net.conv1, net.bn1
        net.stem = deep_stem()
    if pretrained not in (None, "none"):
        load_backbone_weights(net, name, pretrained)
    return ResNetBackbone(net, channels, output_stride, multi_grid, contract_dilation, multi_grid_scaled,
                          basic_conv2_dilated)


class WeightsUnavailableError(UserError, RuntimeError):
    pass


def load_backbone_weights(net: nn.Module, name: str, pretrained: str) -> None:
    """Load ImageNet weights (``"imagenet"``) or a local state dict (a path) into torchvision's network ``name``.

    Every tensor but the classifier (``fc.`` or ``classifier.``: ``IMAGENET_WEIGHTS``) must be there with its
    shape: a file that does not fit is a ``WeightsError`` saying what the file holds, never a partly initialised
    backbone.
    """
    source = fetch_imagenet_weights(name) if pretrained == "imagenet" else pretrained
    what = (f"ImageNet weights for {name}" if pretrained == "imagenet"
            else f"backbone weights for {name} (backbone.pretrained)")
    state = load_file(source, what=what)
    weights, classifier = IMAGENET_WEIGHTS[name]
    expected = (f"a torchvision {name} state dict (ImageNet classification weights, e.g. "
                f"{os.path.basename(weights.url)})" if hasattr(net, "conv1") or name not in BACKBONES else
                f"a {name} state dict with the deep stem's stem.* keys (e.g. mmcv's {name}_v1c)")
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    foreign = None if is_own_checkpoint(state) else recognise(state)
    if is_own_checkpoint(state) or foreign is not None:  # a whole segmentation model: its backbone
        whole = foreign.state if foreign else strip_prefix(state["model"], "module.")
        state = {k[len("backbone."):]: v for k, v in whole.items() if k.startswith("backbone.")}
        what = f"the backbone weights of the {foreign.layout if foreign else 'checkpoint'}"
        expected = f"a segmentation model on {name}"
    if not tensors_only(state):
        raise WeightsError(f"{source} is {describe(state)}, not {expected}")
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(classifier)}
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {list(state[k].shape)} instead of {list(own[k].shape)}" for k in own
                if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        problems = [f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if keys]
        hint = ("; it holds a whole segmentation model (backbone.* keys): use model.weights=PATH for that"
                if any(k.startswith("backbone.") for k in unexpected) else "")
        cause = likely_cause(state, own, missing + unexpected + [k for k in own if k in state and
                                                                  state[k].shape != own[k].shape])
        raise WeightsError(f"{what} {source} do not fit {name}: {'; '.join(problems)} of its {len(own)} tensors: "
                           f"expected {expected}{hint}; {cause}")
    net.load_state_dict(state, strict=False)  # strict but for the classifier, which DeepLab drops


def fetch_imagenet_weights(name: str) -> Path:
    """torchvision's ImageNet weights file for ``name`` in torch.hub's cache, downloaded (hash-checked) if missing.

    Training scripts call this before any other work, so a machine without network access and without the file
    stops at once with the path to put it at.
    """
    url = IMAGENET_WEIGHTS[name][0].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        hash_prefix = torch.hub.HASH_REGEX.search(cached.name)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix.group(1) if hash_prefix else None)
    except Exception as error:  # no network, DNS failure, HTTP error, bad hash
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached at {cached} and could not be downloaded "
            f"({type(error).__name__}): download {url} to that path (or set TORCH_HOME), "
            f"or train from scratch with backbone.pretrained=none") from None
    return cached
