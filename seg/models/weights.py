"""Loading whole-model weights: this project's checkpoints, plain or DDP state dicts, and other projects' files
(``seg.models.layouts``: torchvision, VainF, ...).

A load never leaves part of the network silently at its random initialisation: every tensor of the backbone,
the ASPP and the decoder must come from the file. Two gaps are allowed and reported: a classifier (main or
auxiliary) for another number of classes (fine-tuning on a new dataset) and an auxiliary head the file lacks
(it only serves training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from seg.io import describe
from seg.models.channels import adapt_input_conv
from seg.models.layouts import Foreign, load_file, recognise
from seg.models.layouts.base import WeightsError, strip_prefix, tensors_only
from seg.models.spec import CONFIG_KEYS, config_from_arguments, config_key

log = logging.getLogger(__name__)

EXPECTED = ("a checkpoint of this project, a state dict of this project's model, or a segmentation file of torchvision "
            "(deeplabv3_resnet50/101, deeplabv3/lraspp_mobilenet_v3_large), VainF/DeepLabV3Plus-Pytorch, "
            "mmsegmentation or smp (see docs/peers.md)")
CLASSIFIERS = ("classifier.", "aux_head.")  # sized by the number of classes


@dataclass
class LoadReport:
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # present on both sides with different shapes
    adapted: List[str] = field(default_factory=list)  # RGB first-conv filters adapted to the model's input channels
    layout: str = "this project"                      # what the file was: "VainF DeepLabV3+ ResNet-101 (...)"

    def summary(self) -> str:
        parts = [f"{self.layout}: loaded {len(self.loaded)} of {len(self.loaded) + len(self.missing)} tensors"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("skipped (shape mismatch)", self.skipped)):
            if keys:
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}")
        if self.adapted:
            parts.append(f"{self.adapted[0]} adapted from RGB to the model's input channels (timm's rule)")
        return "; ".join(parts)


# ResNet by (blocks per stage, bottleneck blocks): what a file's backbone keys say it was trained with.
RESNETS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
           ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}
HEADS = {"decoder.reduce.": "deeplabv3plus", "decoder.block.": "deeplabv3", "classifier.cbr.": "lraspp",
         "cascade.": "cascade", "aspp.convs.0.weight": "deeplabv2",  # v2's branches are bare convs (v3's: .0.0.)
         "context.": "context"}
UNET = "model=unet_dilated"  # the dilated U-Net: its own encoder (backbone.blocks.*) and decoder
SHOWN = 3  # differing tensors a message names


def describe_mismatch(file: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Optional[str]:
    """How the tensors of a file differ from a model's (None: every name and shape matches), in one line: how many
    differ, the first few with both shapes, and the likely cause with the option that matches it.

    Every path that puts a file's tensors into a model words its refusal with this (resume, evaluate, predict,
    export through ``load_exact``; ``model.weights`` through ``load_weights``; ``backbone.pretrained``).
    """
    reshaped = [k for k in own if k in file and file[k].shape != own[k].shape]
    missing = [k for k in own if k not in file]
    unexpected = [k for k in file if k not in own]
    if not (reshaped or missing or unexpected):
        return None
    parts = []
    if reshaped:
        shown = ", ".join(f"{k} {list(file[k].shape)} in the file, {list(own[k].shape)} in the model"
                          for k in reshaped[:SHOWN])
        parts.append(f"{len(reshaped)} of another shape ({shown}{', ...' if len(reshaped) > SHOWN else ''})")
    for label, keys in (("missing from the file", missing), ("not in the model", unexpected)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:SHOWN])}{', ...' if len(keys) > SHOWN else ''})")
    differ = len(reshaped) + len(missing) + len(unexpected)
    return f"{differ} tensors differ: {'; '.join(parts)}; {likely_cause(file, own, reshaped + missing + unexpected)}"


def likely_cause(file: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], differing: List[str]) -> str:
    """What the differing tensors point at (another number of classes, backbone, head or auxiliary head), with
    the config keys of the file's architecture."""
    head, own_head, backbone = _head_of(file), _head_of(own), _backbone_of(file)
    if UNET in (head, own_head) and head != own_head:  # nothing but the classifier's names in common
        options = " ".join(option for option in (backbone, head) if option)
        return f"likely another model ({options or 'not the dilated U-Net'})"
    causes = []
    if any(_in_backbone(k, file) for k in differing):
        if backbone and backbone != _backbone_of(own):
            causes.append(f"another backbone ({backbone})")
        else:
            causes.append("another backbone (backbone=<the one the file was trained with>)")
    if any(k.startswith(("aspp.", "decoder.", "classifier.cbr.", "cascade.", "context.")) for k in differing) and \
            head and head != own_head:
        causes.append(f"another head ({head})")
    classes = [k for k in differing if k.startswith("classifier.") and k in file and k in own]
    if classes and all(file[k].shape[1:] == own[k].shape[1:] for k in classes):
        causes.append(f"another number of classes (the file has {file[classes[0]].shape[0]}: "
                      f"dataset.num_classes={file[classes[0]].shape[0]})")
    aux = [k for k in differing if k.startswith("aux_head.")]
    if aux and not any(k.startswith("aux_head.") for k in own):
        causes.append("an auxiliary head (model.aux_loss=true)")
    elif aux and not any(k.startswith("aux_head.") for k in file):
        causes.append("no auxiliary head (model.aux_loss=false)")
    if not causes:
        return "likely another architecture: configure the one the file was trained with"
    return f"likely {' and '.join(causes)}"


def _head_of(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The options of the head (or model) a state dict's keys describe; None for anything else."""
    if any(k.startswith("backbone.blocks.") for k in state):
        return UNET
    head = next((name for prefix, name in HEADS.items() if any(k.startswith(prefix) for k in state)), None)
    if head == "context" and "context.0.weight" in state and "classifier.weight" in state:
        width = "basic" if state["context.0.weight"].shape[0] == state["classifier.weight"].shape[0] else "large"
        return f"model.head=context model.context={width}"
    return head and f"model.head={head}"


def _in_backbone(key: str, state: Mapping) -> bool:
    """Backbone tensors: ``backbone.*`` in a whole model, every key in a backbone-only file."""
    return key.startswith("backbone.") or not any(k.startswith("backbone.") for k in state)


def _backbone_of(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``backbone=resnetN`` (with ``backbone.stem=deep`` for a deep stem) that a state dict's ResNet keys
    describe; None for anything else."""
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
    blocks = tuple(len({k[len(f"{prefix}layer{i}."):].split(".")[0] for k in state
                        if k.startswith(f"{prefix}layer{i}.")}) for i in range(1, 5))
    name = RESNETS.get((blocks, f"{prefix}layer1.0.conv3.weight" in state))
    if name is None:
        return None
    deep = any(k.startswith(f"{prefix}stem.") for k in state)
    return f"backbone={name}" + (" backbone.stem=deep" if deep else "")


def load_exact(model: nn.Module, state: Mapping[str, torch.Tensor], source, what: str = "the model") -> None:
    """Load every tensor of ``state`` into ``model`` (a strict load), or raise a one-line ``WeightsError`` naming
    ``source``, ``what`` the model is and what differs (``describe_mismatch``) instead of torch's size-mismatch
    traceback."""
    problem = describe_mismatch(state, model.state_dict())
    if problem:
        raise WeightsError(f"{source} does not fit {what}: {problem}")
    model.load_state_dict(state)


def is_own_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "config" in obj


def read_weights(obj: Any, source: str = "the weights") -> Tuple[Dict[str, torch.Tensor], Optional[Foreign]]:
    """``(state dict in our keys, the foreign layout or None)`` from what a weights file held."""
    if is_own_checkpoint(obj) or (isinstance(obj, Mapping) and tensors_only(obj.get("model"))):
        return strip_prefix(obj["model"], "module."), None
    foreign = recognise(obj)
    if foreign is not None:
        return foreign.state, foreign
    if tensors_only(obj):
        return strip_prefix(obj, "module."), None
    raise WeightsError(f"{source} is {describe(obj)}, not {EXPECTED}")


def architecture_keys(arguments: Mapping[str, Any]) -> str:
    """The config keys that build the architecture ``arguments`` describe, as command-line overrides."""
    config = config_from_arguments(arguments)
    overrides = ["backbone.source=timm"] if config["backbone"].get("source") == "timm" else []
    listed = ["backbone", "output_stride", "head", "decoder_convs", "multi_grid", "contract_dilation", "aspp_rates"]
    # and every other key the peer's architecture sets to another value than the default
    listed += [argument for argument, (_, _, default) in CONFIG_KEYS.items()
               if argument not in listed and argument in arguments and arguments[argument] != default]
    for argument in listed:
        section, key, _ = CONFIG_KEYS[argument]
        value = config[section][key] if section else config[key]
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        overrides.append(f"{config_key(argument)}={text.replace(' ', '')}")
    return " ".join(overrides)


def load_weights(model: nn.Module, path_or_state_dict: Union[str, Path, Mapping]) -> LoadReport:
    """Copy every tensor of the file into the model (by name and shape), or raise a ``WeightsError``.

    A model that takes other than 3 input channels (``dataset.channels``) takes an RGB file's first convolution
    adapted by timm's rule (``seg.models.channels``), as its ImageNet weights are: RGB weights fine-tune on grayscale
    or multispectral data.

    Allowed gaps (see the module docstring) are reported; any other tensor of the model the file does not fill,
    or any tensor of the file the model has no place for, is an error naming the file and, for another project's
    file, the config keys of the architecture it needs.
    """
    source = path_or_state_dict
    name = f"model weights {source}" if isinstance(source, (str, Path)) else "the given state dict"
    if isinstance(source, (str, Path)):
        source = load_file(source, what="model weights")
    state, foreign = read_weights(source, name)
    own = model.state_dict()
    report = LoadReport(layout=foreign.layout if foreign else "this project")
    fitting = {}
    first_conv = next((key for key, value in own.items() if value.dim() == 4), None)
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif key == first_conv and _rgb_filters_for(value, own[key]):
            fitting[key] = adapt_input_conv(own[key].shape[1], value)  # RGB weights into a dataset.channels model
            report.loaded.append(key)
            report.adapted.append(key)
        elif own[key].shape != value.shape:
            report.skipped.append(key)
        else:
            fitting[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in fitting]
    _check_complete(report, state, own, name, foreign)
    model.load_state_dict(fitting, strict=False)
    log.info("load_weights: %s", report.summary())
    return report


def _rgb_filters_for(value: torch.Tensor, own: torch.Tensor) -> bool:
    """``value`` is the RGB version of the model's first convolution ``own``, which takes other channels."""
    return (value.dim() == 4 and value.shape[1] == 3 and own.shape[1] != 3
            and value.shape[0] == own.shape[0] and value.shape[2:] == own.shape[2:])


def _allowed_gap(key: str, state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> bool:
    if key.startswith("aux_head.") and not any(k.startswith("aux_head.") for k in state):
        return True  # the file has no auxiliary head: it only serves training
    return key.startswith(CLASSIFIERS) and key in state and state[key].shape[1:] == own[key].shape[1:]


def _check_complete(report: LoadReport, state, own, name: str, foreign: Optional[Foreign]) -> None:
    if not report.loaded:
        raise WeightsError(f"none of the {len(state)} tensors in {name} fit this model ({report.summary()}): "
                           f"expected {EXPECTED} with the same backbone; "
                           f"{likely_cause(state, own, report.missing + report.unexpected + report.skipped)}")
    gaps = [k for k in report.missing if not _allowed_gap(k, state, own)]
    extra = [k for k in report.unexpected if not k.startswith("aux_head.")]
    if not gaps and not extra:
        return
    parts = sorted({k.split(".")[0] for k in gaps + extra})
    problem = f"{name} do not fit this model's {', '.join(parts)}: {describe_mismatch(state, own)}"
    if foreign is not None:
        preset = f"model={foreign.preset} (it sets " if foreign.preset else "the architecture it was trained with ("
        raise WeightsError(f"{problem}: the file is a {foreign.layout}; train with {preset}"
                           f"{architecture_keys(foreign.arguments)}), or take only its backbone with "
                           "backbone.pretrained=PATH")
    raise WeightsError(f"{problem}: configure the architecture the file was trained with, or take only its "
                       "backbone with backbone.pretrained=PATH")
