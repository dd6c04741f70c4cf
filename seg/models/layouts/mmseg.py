"""mmsegmentation's DeepLabV3 / DeepLabV3+ R50/R101-D8 checkpoints (mmseg 0.x and 1.x).

Their architecture (configs/_base_/models/deeplabv3_r50-d8.py, deeplabv3plus_r50-d8.py): a ``ResNetV1c`` (the deep
stem; the ``r50b`` / ``r101b`` configs' ``ResNet`` has the standard one) at output stride 8 with
``contract_dilation`` and no multi-grid, an ASPP of 512 channels at rates 12, 24, 36 joined by a 3x3
``bottleneck``, no 3x3 conv after it in DeepLabV3, depthwise-separable 3x3 convolutions in DeepLabV3+
(``DepthwiseSeparableASPPHead``: ASPP branches, bottleneck and the two ``sep_bottleneck`` convs; ``c1_bottleneck``
to 48 channels), ``Dropout2d(0.1)`` before ``conv_seg``, and optionally an ``FCNHead`` of 256 channels on
``layer3``. Each of those is a ``build_model`` argument; the backbone keys are ours, the heads' are renamed.

mmsegmentation concatenates the image-pooling branch first, this project last: the input channels of the
bottleneck (and, in the separable one, the depthwise conv and its BN, which keep the concatenation's channels)
are rotated by one branch in the key map, rather than the model carrying a flag for the order.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from seg.models.layouts.base import Foreign, WeightsError, rename, strip_prefix, tensors_only
from seg.models.layouts.torchvision import layer3_blocks

DEPTHS = {6: ("resnet50", "R50"), 23: ("resnet101", "R101")}  # blocks in layer3
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
    if blocks not in DEPTHS or "backbone.layer1.0.conv3.weight" not in state:
        raise WeightsError(f"an mmsegmentation {head} checkpoint on a backbone this project does not build "
                           f"({blocks} blocks in layer3): ResNet-50 and ResNet-101 (R50/R101-D8) are supported")
    backbone, depth = DEPTHS[blocks]
    deep = "backbone.stem.0.weight" in state
    classifier = state["decode_head.conv_seg.weight"]
    num_classes = classifier.shape[0]
    aux = "auxiliary_head.conv_seg.weight" in state
    arguments = dict(backbone=backbone, num_classes=num_classes, output_stride=8, multi_grid=None,
                     contract_dilation=True, aspp_rates=(12, 24, 36), head="deeplabv3plus" if plus else "deeplabv3",
                     aux_loss=aux, stem="deep" if deep else "standard", aspp_channels=classifier.shape[1],
                     aspp_projection_kernel=3, separable_convs=plus, decoder_convs=2 if plus else 0, dropout=0.0,
                     classifier_dropout=0.1)
    name = f"mmsegmentation {head} {depth}{'' if deep else 'b'}-D8" + (" (with auxiliary_head)" if aux else "")
    converted = convert(state)
    # Parts of other configs: FCNHead with more convs or concat_input, ResNetV1d's average-pool shortcut.
    unbuilt = [key for key in converted
               if key.startswith(("decode_head.", "auxiliary_head.")) or ".downsample.2." in key]
    if unbuilt:
        raise WeightsError(f"an mmsegmentation {head} {depth}-D8 checkpoint with {len(unbuilt)} tensors of parts this "
                           f"project does not build (e.g. {', '.join(unbuilt[:2])}): its own configs' "
                           "deeplabv3(plus)_r50/r101-d8 are supported")
    preset = f"mmseg_{arguments['head']}_{depth.lower()}_d8" if deep else None
    return Foreign(name, arguments, converted, class_names(whole, num_classes), stride_recorded=False, preset=preset)
