"""VainF/DeepLabV3Plus-Pytorch: the dict its ``main.py`` saves and its plain state dict (ResNet-50/101, MobileNetV2).

From its source (``network/modeling.py``, ``network/_deeplab.py``, ``main.py``): a torchvision ResNet built with
``replace_stride_with_dilation`` ([False, False, True] at output stride 16, its default; [False, True, True] at 8),
so the first unit of a dilated stage runs at the previous rate and there is no multi-grid; ASPP rates 6, 12, 18
at 16 (12, 24, 36 at 8), 256 channels, dropout 0.1; DeepLabV3 is torchvision's head; DeepLabV3+ reduces layer1 to
48 channels and has ONE 3x3 conv on ``cat([low_level, aspp])`` (ours concatenates ASPP first: the conv's input
channels are permuted). ``main.py`` saves ``{"cur_itrs", "model_state", "optimizer_state", "scheduler_state",
"best_score"}``; the file records neither the output stride nor the class names.

Its MobileNetV2 (``_segm_mobilenet``) is the encoder of ``seg/models/mobilenet_v2.py``: VainF's
``low_level_features`` (``features[0:4]``) and ``high_level_features`` (``features[4:-1]``; slicing an
``nn.Sequential`` keeps the indices, so its keys are ``high_level_features.4`` .. ``.17``) are its children ``0``-``3``
and ``4``-``17``; the heads are the ResNets' with 320 and 24 input channels.

``main.py --separable_conv`` (DeepLabV3+ only: ``convert_to_separable_conv(model.classifier)``) replaces each 3x3
conv of the head (the ASPP's atrous branches, the decoder's conv) by ``AtrousSeparableConvolution``: ``body.0``
depthwise, ``body.1`` pointwise, no bias, no BN between, the original BN and ReLU after: this project's separable
convs with ``depthwise_bn_relu=False`` (smp's form), keys ``.body.`` dropped.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from seg.models.layouts.base import Foreign, WeightsError, rename, strip_prefix, tensors_only
from seg.models.layouts.torchvision import DEPTHS, layer3_blocks

V3_PREFIXES = (
    ("classifier.classifier.0.", "aspp."),
    ("classifier.classifier.1.", "decoder.block.0."),
    ("classifier.classifier.2.", "decoder.block.1."),
    ("classifier.classifier.4.", "classifier."),
)
V3PLUS_PREFIXES = (
    ("classifier.aspp.", "aspp."),
    ("classifier.project.", "decoder.reduce."),
    ("classifier.classifier.0.", "decoder.fuse.0.0."),
    ("classifier.classifier.1.", "decoder.fuse.0.1."),
    ("classifier.classifier.3.", "classifier."),
)
MOBILENET_PREFIXES = (*((f"backbone.low_level_features.{i}.", f"backbone.{i}.") for i in range(4)),
                      *((f"backbone.high_level_features.{i}.", f"backbone.{i}.") for i in range(4, 18)))
MOBILENET = "vainf_mobilenetv2"  # seg.models.mobilenet_v2.NAME (not imported: that module imports the layouts)
MOBILENET_KEY = "backbone.high_level_features.17.conv.3.weight"  # its last block's pw-linear BN (320 channels)
SEPARABLE_KEY = "classifier.classifier.0.body.0.weight"  # main.py --separable_conv: the decoder's depthwise conv
# VainF's other backbones, by a key prefix only theirs have (network/backbone/xception.py, hrnetv2.py)
UNBUILT_BACKBONES = (("backbone.block12.", "Xception"), ("backbone.transition1.", "HRNetV2"))
LOW_LEVEL_REDUCED = 48
DEFAULT_OUTPUT_STRIDE = 16  # main.py --output_stride


def model_state(obj: Any) -> Optional[Mapping[str, torch.Tensor]]:
    """The state dict inside what VainF's code saved: ``main.py``'s dict, or a plain state dict."""
    if isinstance(obj, Mapping) and tensors_only(obj.get("model_state")):
        return obj["model_state"]
    return obj if tensors_only(obj) else None


def convert(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """VainF keys (``module.`` already stripped by ``recognise``) -> ours, the v3+ decoder's input order swapped."""
    if MOBILENET_KEY in state:
        state = rename(state, MOBILENET_PREFIXES)
    if "classifier.project.0.weight" not in state:
        return rename(state, V3_PREFIXES)
    separable = SEPARABLE_KEY in state
    converted = rename({key.replace(".body.", "."): value for key, value in state.items()}, V3PLUS_PREFIXES)
    # the tensors over the decoder's input channels, VainF's [low-level 48 | ASPP 256], ours [ASPP | low-level]:
    # the conv's input channels, or the depthwise conv's channels and the pointwise conv's input channels
    joined = {"decoder.fuse.0.0.0.weight": 0, "decoder.fuse.0.0.1.weight": 1} if separable else {
        "decoder.fuse.0.0.weight": 1}
    for key, dim in joined.items():
        low, aspp = converted[key].split([LOW_LEVEL_REDUCED, converted[key].shape[dim] - LOW_LEVEL_REDUCED], dim)
        converted[key] = torch.cat([aspp, low], dim)
    return converted


def recognise(obj: Any) -> Optional[Foreign]:
    state = model_state(obj)
    if state is None:
        return None
    state = strip_prefix(state, "module.")
    plus = "classifier.project.0.weight" in state and "classifier.classifier.3.weight" in state
    v3 = "classifier.classifier.0.convs.0.0.weight" in state and "classifier.classifier.4.weight" in state
    mobilenet = MOBILENET_KEY in state
    backbone = MOBILENET if mobilenet else DEPTHS.get(layer3_blocks(state))
    if not (plus or v3):
        return None
    if backbone is None:
        found = next((name for prefix, name in UNBUILT_BACKBONES if any(k.startswith(prefix) for k in state)), None)
        if found is None:
            return None
        raise WeightsError(f"a VainF DeepLabV3{'+' if plus else ''} {found} file: this project builds VainF's models "
                           "on ResNet-50/101 and MobileNetV2 only (docs/peers.md)")
    classifier = state["classifier.classifier.3.weight" if plus else "classifier.classifier.4.weight"]
    arguments = dict(backbone=backbone, num_classes=classifier.shape[0], output_stride=DEFAULT_OUTPUT_STRIDE,
                     multi_grid=None, contract_dilation=not mobilenet, aspp_rates=(6, 12, 18),
                     head="deeplabv3plus" if plus else "deeplabv3", decoder_convs=1 if plus else None)
    separable = plus and SEPARABLE_KEY in state
    if separable:
        arguments.update(separable_convs=True, depthwise_bn_relu=False)
    saved_by = "main.py checkpoint" if "model_state" in obj else "state dict"
    encoder = "MobileNetV2" if mobilenet else backbone.replace("resnet", "ResNet-")
    name = f"VainF DeepLabV3{'+' if plus else ''} {encoder}{' --separable_conv' if separable else ''} ({saved_by})"
    # the separable variant has no preset of its own: the plain one with model.separable_convs=true
    # model.depthwise_bn_relu=false (docs/peers.md)
    preset = None if separable else f"vainf_{arguments['head']}_{'mobilenet' if mobilenet else backbone}"
    return Foreign(name, arguments, convert(state), preset=preset)
