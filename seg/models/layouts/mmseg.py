"""mmsegmentation's DeepLabV3 / DeepLabV3+ R18/R50/R101-D8 and R101-D16-MG124 checkpoints (mmseg 0.x and 1.x).

Their architecture (configs/_base_/models/deeplabv3_r50-d8.py, deeplabv3plus_r50-d8.py): a ``ResNetV1c`` (the deep
stem; the ``r50b`` / ``r101b`` configs' ``ResNet`` has the standard one) at output stride 8 with
``contract_dilation`` and no multi-grid, an ASPP of 512 channels at rates 12, 24, 36 joined by a 3x3
``bottleneck``, no 3x3 conv after it in DeepLabV3, depthwise-separable 3x3 convolutions in DeepLabV3+
(``DepthwiseSeparableASPPHead``: ASPP branches, bottleneck and the two ``sep_bottleneck`` convs; ``c1_bottleneck``
to 48 channels), ``Dropout2d(0.1)`` before ``conv_seg``, and optionally an ``FCNHead`` of 256 channels on
``layer3``. Each of those is a ``build_model`` argument; the backbone keys are ours, the heads' are renamed.

Widths come from the tensors: the R18-D8 configs' heads of 128 channels, their V3+ ``c1_channels`` of 12 and
auxiliary head of 64, and mmseg's ``BasicBlock``, which dilates its first 3x3 conv only (``basic_conv2_dilated``).
Strides do not: a D16-MG124 file (``strides=(1, 2, 2, 1)``, ``dilations=(1, 1, 1, 2)``, ``multi_grid=(1, 2, 4)``
whose values are the last stage's rates, ASPP 6, 12, 18) has the tensors of a D8 one. Its config does say them:
mmseg 0.x saves it in ``meta["config"]``, mmengine in ``meta["cfg"]``; where the file has it, the backbone's
``strides``, ``dilations`` and ``multi_grid`` and the head's ``dilations`` are read from it, else the D8 defaults
apply (and the loaders say the stride is not recorded).

mmsegmentation concatenates the image-pooling branch first, this project last: the input channels of the
bottleneck (and, in the separable one, the depthwise conv and its BN, which keep the concatenation's channels)
are rotated by one branch in the key map, rather than the model carrying a flag for the order.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from seg.models.layouts.base import Foreign, WeightsError, rename, strip_prefix, tensors_only
from seg.models.layouts.torchvision import layer3_blocks

# blocks in layer3 -> (backbone, name): Bottleneck (a ``conv3``) and BasicBlock ResNets
DEPTHS = {6: ("resnet50", "R50"), 23: ("resnet101", "R101")}
BASIC_DEPTHS = {2: ("resnet18", "R18"), 6: ("resnet34", "R34")}
D8 = dict(output_stride=8, multi_grid=None, aspp_rates=(12, 24, 36))  # the _base_ configs' strides and rates
ASPP_BRANCHES = 5  # image pooling, 1x1, three atrous 3x3
DEEPLABV3 = "decode_head.bottleneck.conv.weight"
DEEPLABV3PLUS = "decode_head.bottleneck.depthwise_conv.conv.weight"


def _conv_module(theirs: str, ours: str) -> List[Tuple[str, str]]:
    """mmcv ``ConvModule`` (``conv``, ``bn``) -> our conv/BN/ReLU ``Sequential`` (``0``, ``1``)."""
    return [(f"{theirs}.conv.", f"{ours}.0."), (f"{theirs}.bn.", f"{ours}.1.")]


def _separable(theirs: str, ours: str) -> List[Tuple[str, str]]:
    """mmcv ``DepthwiseSeparableConvModule`` -> ``seg.models.aspp.separable_conv_bn_relu``."""
    return _conv_module(f"{theirs}.depthwise_conv", f"{ours}.0") + _conv_module(f"{theirs}.pointwise_conv",
                                                                                 f"{ours}.1")


def _prefixes() -> List[Tuple[str, str]]:
    pairs = [("decode_head.image_pool.1.conv.", "aspp.convs.4.1."), ("decode_head.image_pool.1.bn.", "aspp.convs.4.2.")]
    pairs += _conv_module("decode_head.aspp_modules.0", "aspp.convs.0")
    for i in (1, 2, 3):
        pairs += _conv_module(f"decode_head.aspp_modules.{i}", f"aspp.convs.{i}")
        pairs += _separable(f"decode_head.aspp_modules.{i}", f"aspp.convs.{i}")
    pairs += _conv_module("decode_head.bottleneck", "aspp.project")  # 3x3 conv, BN: project.0, project.1
    pairs += _separable("decode_head.bottleneck", "aspp.project")    # project.0 depthwise, project.1 pointwise
    pairs += _conv_module("decode_head.c1_bottleneck", "decoder.reduce")
    for j in (0, 1):
        pairs += _separable(f"decode_head.sep_bottleneck.{j}", f"decoder.fuse.{j}")
    pairs += [("decode_head.conv_seg.", "classifier.")]
    pairs += _conv_module("auxiliary_head.convs.0", "aux_head")
    pairs += [("auxiliary_head.conv_seg.", "aux_head.4.")]
    return pairs


PREFIXES = _prefixes()
# The configs/model/ presets of mmsegmentation's architectures (the deep-stem ones its model zoo has).
PRESETS = {f"mmseg_{head}_{variant}" for head in ("deeplabv3", "deeplabv3plus")
           for variant in ("r18_d8", "r50_d8", "r101_d8", "r101_d16_mg124")}
# Our tensors that hold the ASPP concatenation's channels, and along which dimension.
CONCATENATED = {"aspp.project.0.weight": 1,                      # DeepLabV3: the 3x3 bottleneck conv
                "aspp.project.0.0.weight": 0,                    # DeepLabV3+: the depthwise conv ...
                **{f"aspp.project.0.1.{name}": 0 for name in ("weight", "bias", "running_mean", "running_var")},
                "aspp.project.1.0.weight": 1}                    # ... its BN, and the pointwise conv


def pooling_last(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Move the first of the five equal channel blocks (their image pooling) to the end (ours)."""
    width = tensor.shape[dim] // ASPP_BRANCHES
    return torch.cat([tensor.narrow(dim, width, tensor.shape[dim] - width), tensor.narrow(dim, 0, width)], dim)


def convert(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmsegmentation keys (``module.`` already stripped by ``recognise``) -> ours (pure: renamed keys, the
    concatenation-order rotation; no model needed)."""
    converted = rename(state, PREFIXES)
    return {key: pooling_last(value, CONCATENATED[key]) if key in CONCATENATED else value
            for key, value in converted.items()}


def class_names(obj: Mapping, num_classes: int) -> Optional[List[str]]:
    """``meta["CLASSES"]`` (mmseg 0.x) or ``meta["dataset_meta"]["classes"]`` (mmseg 1.x / mmengine)."""
    meta = obj.get("meta")
    if not isinstance(meta, Mapping):
        return None
    names = meta.get("CLASSES")
    if names is None and isinstance(meta.get("dataset_meta"), Mapping):
        names = meta["dataset_meta"].get("classes")
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _config_tuple(text: str, key: str) -> Optional[Tuple[int, ...]]:
    found = re.search(rf"\b{key}\s*=\s*[(\[]([\d,\s]*)[)\]]", text)
    return tuple(int(v) for v in found.group(1).replace(",", " ").split()) if found else None


def strides_from_config(whole: Mapping) -> Optional[Dict[str, Any]]:
    """``output_stride``, ``multi_grid`` and ``aspp_rates`` from the config text the checkpoint's ``meta`` holds (see
    the module docstring), or None where it has none. A backbone whose dilations this project's rule does not give
    for its strides is a ``WeightsError``."""
    meta = whole.get("meta")
    text = next((meta[k] for k in ("config", "cfg") if isinstance(meta, Mapping) and isinstance(meta.get(k), str)),
                None)
    start, split = (re.search(rf"\b{part}\s*=\s*dict\(", text or "") for part in ("backbone", "decode_head"))
    if start is None or split is None or split.start() < start.start():
        return None
    backbone, head = text[start.start():split.start()], text[split.start():]
    strides, dilations = _config_tuple(backbone, "strides"), _config_tuple(backbone, "dilations")
    rates = _config_tuple(head.split("auxiliary_head")[0], "dilations")
    if strides is None or dilations is None or rates is None or len(strides) != 4 or len(rates) < 2:
        return None
    output_stride = 4 * math.prod(strides)
    expected = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}.get(output_stride)
    if tuple(dilations) != expected:
        raise WeightsError(f"an mmsegmentation checkpoint whose backbone has strides {strides} and dilations "
                           f"{dilations} (its meta config): this project builds the D8 and D16 ones "
                           "((1, 2, 1, 1) with (1, 1, 2, 4); (1, 2, 2, 1) with (1, 1, 1, 2))")
    return dict(output_stride=output_stride, multi_grid=_config_tuple(backbone, "multi_grid"),
                aspp_rates=tuple(rates[1:]))


def recognise(obj: Any) -> Optional[Foreign]:
    """The ``Foreign`` record of an mmsegmentation DeepLabV3 / V3+ ResNet-D8 checkpoint (``{"meta", "state_dict",
    ...}`` as its runners save, or the bare state dict), None for any other file."""
    whole = obj if isinstance(obj, Mapping) else {}
    state = whole.get("state_dict", obj) if "state_dict" in whole else obj
    if not tensors_only(state):
        return None
    state = strip_prefix(state, "module.")
    plus = DEEPLABV3PLUS in state
    if not (plus or DEEPLABV3 in state) or "decode_head.conv_seg.weight" not in state \
            or "decode_head.aspp_modules.0.conv.weight" not in state:
        return None
    head = "DeepLabV3+" if plus else "DeepLabV3"
    blocks = layer3_blocks(state)
    basic = "backbone.layer1.0.conv3.weight" not in state
    depths = BASIC_DEPTHS if basic else DEPTHS
    if blocks not in depths:
        raise WeightsError(f"an mmsegmentation {head} checkpoint on a backbone this project does not build "
                           f"({blocks} blocks in layer3): ResNet-18, 34, 50 and 101 (e.g. R18/R50/R101-D8) are "
                           "supported")
    backbone, depth = depths[blocks]
    deep = "backbone.stem.0.weight" in state
    classifier = state["decode_head.conv_seg.weight"]
    num_classes = classifier.shape[0]
    aux = "auxiliary_head.conv_seg.weight" in state
    recorded = strides_from_config(whole)
    strides = recorded or D8
    arguments = dict(backbone=backbone, num_classes=num_classes, **strides, contract_dilation=True,
                     head="deeplabv3plus" if plus else "deeplabv3", aux_loss=aux, stem="deep" if deep else "standard",
                     aspp_channels=classifier.shape[1], aspp_projection_kernel=3, separable_convs=plus,
                     decoder_convs=2 if plus else 0, dropout=0.0, classifier_dropout=0.1)
    if strides["multi_grid"] is not None:
        arguments["multi_grid_scaled"] = False
    if plus:
        arguments["low_level_reduced"] = state["decode_head.c1_bottleneck.conv.weight"].shape[0]
    if basic:
        arguments["basic_conv2_dilated"] = False
    variant = f"D{strides['output_stride']}" + (
        f"-MG{''.join(str(g) for g in strides['multi_grid'])}" if strides["multi_grid"] else "")
    name = f"mmsegmentation {head} {depth}{'' if deep else 'b'}-{variant}" + (" (with auxiliary_head)" if aux else "")
    converted = convert(state)
    # Parts of other configs: FCNHead with more convs or concat_input, ResNetV1d's average-pool shortcut.
    unbuilt = [key for key in converted
               if key.startswith(("decode_head.", "auxiliary_head.")) or ".downsample.2." in key]
    if unbuilt:
        raise WeightsError(f"an mmsegmentation {head} {depth}-{variant} checkpoint with {len(unbuilt)} tensors of "
                           f"parts this project does not build (e.g. {', '.join(unbuilt[:2])}): its own configs' "
                           "deeplabv3(plus)_r18/r50/r101-d8 and r101-d16-mg124 are supported")
    preset = f"mmseg_{arguments['head']}_{depth.lower()}_{variant.lower().replace('-', '_')}"
    return Foreign(name, arguments, converted, class_names(whole, num_classes), stride_recorded=recorded is not None,
                   preset=preset if deep and preset in PRESETS else None)
