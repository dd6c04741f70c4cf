"""segmentation_models_pytorch (smp) ``DeepLabV3`` / ``DeepLabV3Plus`` on a ResNet or timm encoder: a plain state
dict, or the folder ``save_pretrained`` writes (``config.json`` + ``model.safetensors``).

From smp 0.6's source (decoders/deeplabv3, encoders/resnet.py, encoders/_base.py, encoders/timm_universal.py,
base/heads.py): a ResNet encoder is torchvision's ResNet (keys ``encoder.*``, no ``fc``) dilated by
``make_dilated``, which gives every conv of a dilated stage the full rate (no contraction, no multi-grid); a
``tu-<model>`` encoder is timm's ``features_only`` network (``encoder.model.*``), ``TimmBackbone``'s ``body``. The
ASPP has rates 12, 24, 36 at either stride, 256 channels and dropout 0.5; its separable branches
(``decoder_aspp_separable``: ``aspp_separable``) are ``SeparableConv2d`` (depthwise then pointwise, no BN between:
``depthwise_bn_relu=False``). DeepLabV3 (default output stride 8) has one 3x3 conv/BN/ReLU after the ASPP
(``decoder.conv``/``bn``; ``decoder.0-2`` in older smp). DeepLabV3Plus (default 16, separable ASPP) has a
separable 3x3 conv/BN/ReLU on the ASPP output (``decoder.aspp.1-3``), upsamples it to stride 4 with
``align_corners=True``, reduces the stride-4 map to 48 channels (``block1``) and fuses ``cat([aspp, high-res])``
with one separable 3x3 conv (``block2``), the order ours has. Both heads are a 1x1 conv upsampled by
``nn.Upsample(align_corners=True)``, which for input sizes smp accepts (divisible by the output stride) equals
interpolating to the input size with ``align_corners=True``. A plain state dict records neither the output stride,
the rates nor a timm encoder's name: smp's defaults are taken, ``os=`` overrides the stride (the rates then scale,
as for every model here; smp keeps them fixed, so a file trained at another stride loads right from its folder,
which records both), and a timm encoder needs the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from seg.errors import MissingFileError
from seg.io import UnsafeFileError
from seg.models.layouts.base import Foreign, WeightsError, rename, strip_prefix, tensors_only
from seg.models.layouts.torchvision import layer3_blocks
from seg.models.spec import TIMM_PREFIX

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"  # what save_pretrained writes
V3_PREFIXES = (("encoder.", "backbone."), ("decoder.aspp.", "aspp."), ("decoder.conv.", "decoder.block.0."),
               ("decoder.bn.", "decoder.block.1."), ("segmentation_head.0.", "classifier."),
               # smp before its decoder was scriptable: decoder = Sequential(ASPP, conv, BN, ReLU)
               ("decoder.0.", "aspp."), ("decoder.1.", "decoder.block.0."), ("decoder.2.", "decoder.block.1."))
V3PLUS_PREFIXES = (("encoder.", "backbone."), ("decoder.aspp.0.", "aspp."), ("decoder.aspp.1.", "decoder.aspp_conv.0."),
                   ("decoder.aspp.2.", "decoder.aspp_conv.1."), ("decoder.block1.", "decoder.reduce."),
                   ("decoder.block2.0.", "decoder.fuse.0.0."), ("decoder.block2.1.", "decoder.fuse.0.1."),
                   ("segmentation_head.0.", "classifier."))
# smp's defaults (DeepLabV3 / DeepLabV3Plus.__init__)
DEFAULTS = {"deeplabv3": dict(encoder_output_stride=8, upsampling=None),
            "deeplabv3plus": dict(encoder_output_stride=16, upsampling=4)}
DEFAULT_RATES, DEFAULT_DROPOUT = (12, 24, 36), 0.5
MODEL_CLASSES = {"DeepLabV3": "deeplabv3", "DeepLabV3Plus": "deeplabv3plus"}
TIMM_KEYS = ("encoder.model.", "backbone.body.")  # smp's TimmUniversalEncoder.model -> TimmBackbone.body


@dataclass
class PretrainedFolder:
    """What smp's ``save_pretrained`` wrote: its ``config.json`` (the model's ``__init__`` arguments and
    ``_model_class``) and the tensors of ``model.safetensors``."""
    config: Dict[str, Any]
    state: Dict[str, torch.Tensor]


def is_pretrained_path(path: Union[str, Path]) -> bool:
    return Path(path).is_dir() or str(path).endswith(".safetensors")


def read_pretrained(path: Union[str, Path], what: str = "model weights") -> Any:
    """A ``PretrainedFolder`` from a ``save_pretrained`` folder, or from its ``model.safetensors`` with the
    ``config.json`` beside it; the bare tensors of a ``.safetensors`` file without one.

    Any other folder is not a weights file: ``MissingFileError`` saying which folder is read.
    """
    path = Path(path)
    folder, weights = (path, path / WEIGHTS_FILE) if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        raise MissingFileError(f"{what} {path} is a folder without {WEIGHTS_FILE}: the one folder read as weights "
                               f"is what smp's save_pretrained writes ({CONFIG_FILE} + {WEIGHTS_FILE}); pass a "
                               "weights file otherwise" if path.is_dir() else f"{what} not found: {path}")
    try:
        from safetensors.torch import load_file as load_safetensors
    except ImportError:
        raise UnsafeFileError(f"reading {weights} needs the safetensors package: pip install safetensors") from None
    try:
        state = load_safetensors(str(weights), device="cpu")
    except Exception as error:  # junk, truncated, not safetensors
        raise UnsafeFileError(f"cannot read {what} {weights} as a safetensors file ({type(error).__name__}: "
                              f"{str(error)[:120]})") from None
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        if path.is_dir():
            raise MissingFileError(f"{what} {path} has {WEIGHTS_FILE} but no {CONFIG_FILE} (smp's save_pretrained "
                                   "writes both): pass the .safetensors file itself to read it as a state dict")
        return state
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise UnsafeFileError(f"cannot read {config_path} as JSON: {error}") from None
    if not isinstance(config, dict):
        raise UnsafeFileError(f"{config_path} is not a JSON object of model arguments (smp's save_pretrained)")
    return PretrainedFolder(config, state)


def resnet_name(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """resnet18/34/50/101 from the encoder's keys (layer3's blocks, and Bottleneck's conv3), None otherwise."""
    if "encoder.layer4.0.conv1.weight" not in state or "encoder.conv1.weight" not in state:
        return None
    conv2 = state.get("encoder.layer1.0.conv2.weight")
    if conv2 is None or conv2.shape[0] != conv2.shape[1]:
        return None  # grouped convolutions: ResNeXt
    bottleneck = "encoder.layer1.0.conv3.weight" in state
    return {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50",
            (23, True): "resnet101"}.get((layer3_blocks(state, "encoder.layer3."), bottleneck))


def timm_name(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], title: str) -> str:
    """``"timm:<model>"`` for smp's ``tu-<model>`` encoder (keys ``encoder.model.*``, timm's ``features_only``
    network: ``TimmBackbone``'s ``body``), named by the folder's config; any other encoder is a ``WeightsError``."""
    encoder = str(config.get("encoder_name", ""))
    timm = any(key.startswith("encoder.model.") for key in state)
    if timm and encoder.startswith("tu-"):
        return TIMM_PREFIX + encoder[len("tu-"):]
    if timm:
        raise WeightsError(f"an {title} file on a timm encoder (encoder.model.* keys), whose name a plain state "
                           "dict does not record: load the folder smp's save_pretrained writes (its config.json "
                           "names the encoder)")
    raise WeightsError(f"an {title} file on {encoder or 'its encoder'}, which this project does not read yet: smp "
                       "files on resnet18/34/50/101 and on timm encoders (tu-<timm model>) are supported")


def timm_keys(state: Mapping[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
    """smp builds timm's default feature network; for a model timm extracts with hooks (``FeatureHookNet``, e.g.
    xception65: top-level ``Sequential`` children flattened, ``stem.0`` -> ``stem_0``) ``TimmBackbone`` builds timm's
    ``getter`` extractor instead, with the model's own keys under ``model.``: those keys are mapped onto it."""
    from seg.models.timm_backbone import extractor  # here: timm_backbone imports the layouts

    if extractor(name) != "getter":
        return dict(state)
    prefix = TIMM_KEYS[0]
    return {prefix + "model." + re.sub(r"^([A-Za-z]+)_(\d+)\.", r"\1.\2.", key[len(prefix):])
            if key.startswith(prefix) else key: value for key, value in state.items()}


def model_state(obj: Any):
    """``(state dict, config or None)`` of an smp file: a ``PretrainedFolder`` or a plain state dict."""
    if isinstance(obj, PretrainedFolder):
        return obj.state, obj.config
    return (obj, None) if tensors_only(obj) else (None, None)


def recognise(obj: Any) -> Optional[Foreign]:
    state, config = model_state(obj)
    if state is None:
        return None
    model_class = (config or {}).get("_model_class")
    if isinstance(obj, PretrainedFolder) and model_class not in MODEL_CLASSES:
        raise WeightsError(f"a save_pretrained folder of {f'an smp {model_class}' if model_class else 'a model'} "
                           f"(its {CONFIG_FILE}): of smp's models this project builds "
                           f"{' and '.join(MODEL_CLASSES)}")
    state = strip_prefix(state, "module.")
    if "segmentation_head.0.weight" not in state:
        return None
    plus = "decoder.block1.0.weight" in state
    if not (plus or "decoder.aspp.convs.0.0.weight" in state or "decoder.0.convs.0.0.weight" in state):
        return None
    head = "deeplabv3plus" if plus else "deeplabv3"
    title = f"smp DeepLabV3{'Plus' if plus else ''}"
    config = dict(config or {})
    if model_class is not None and MODEL_CLASSES.get(model_class) != head:
        return None
    backbone = resnet_name(state) or timm_name(state, config, title)
    timm = backbone.startswith(TIMM_PREFIX)
    encoder = f"tu-{backbone[len(TIMM_PREFIX):]}" if timm else backbone
    settings = {**DEFAULTS[head], "decoder_atrous_rates": DEFAULT_RATES, "decoder_aspp_dropout": DEFAULT_DROPOUT,
                "encoder_depth": 5, "in_channels": 3, **config}
    separable = any(key.startswith(("decoder.aspp.convs.1.0.0.", "decoder.aspp.0.convs.1.0.0.",
                                    "decoder.0.convs.1.0.0.")) for key in state)
    unbuilt = [f"{name}={settings[name]}" for name, wanted in
               (("encoder_depth", 5), ("in_channels", 3), ("upsampling", DEFAULTS[head]["upsampling"]))
               if settings[name] != wanted]
    if any(key.startswith("classification_head.") for key in state):
        unbuilt.append("aux_params (a classification head)")
    if unbuilt:
        raise WeightsError(f"an {title} {encoder} file with {', '.join(unbuilt)}, which this project does not "
                           "build: depth 5, 3 input channels, the default upsampling and no aux_params are supported")
    classifier = state["segmentation_head.0.weight"]
    arguments = dict(backbone=backbone, num_classes=classifier.shape[0],
                     output_stride=int(settings["encoder_output_stride"]), multi_grid=None, contract_dilation=False,
                     aspp_rates=tuple(int(r) for r in settings["decoder_atrous_rates"]), head=head,
                     dropout=float(settings["decoder_aspp_dropout"]), decoder_convs=1,
                     aspp_channels=classifier.shape[1], separable_convs=plus, depthwise_bn_relu=False,
                     aspp_conv=plus, align_corners=True, aspp_separable=None if separable == plus else separable)
    saved_by = "save_pretrained folder" if isinstance(obj, PretrainedFolder) else "state dict"
    if timm:
        state = timm_keys(state, backbone[len(TIMM_PREFIX):])
    converted = rename(state, (TIMM_KEYS, *(V3PLUS_PREFIXES if plus else V3_PREFIXES)))
    return Foreign(f"{title} {encoder} ({saved_by})", arguments, converted, stride_recorded=config != {},
                   preset=None if timm else f"smp_{head}_{backbone}")
