"""Loading whole-model weights: this project's checkpoints, plain or DDP state dicts, torchvision's DeepLabV3 (ResNet
and MobileNetV3) and LR-ASPP."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from seg.errors import UserError
from seg.io import describe, safe_load

log = logging.getLogger(__name__)

# torchvision DeepLabV3 key prefix -> ours (see seg/models/deeplab.py). Backbone keys are identical.
TORCHVISION_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("classifier.0.", "aspp."),
    ("classifier.1.", "decoder.block.0."),
    ("classifier.2.", "decoder.block.1."),
    ("classifier.4.", "classifier."),
    ("aux_classifier.", "aux_head."),
)


EXPECTED = ("a checkpoint of this project or a torchvision segmentation state dict (deeplabv3_resnet50/101, "
            "deeplabv3_mobilenet_v3_large or lraspp_mobilenet_v3_large layout)")


class WeightsError(UserError, ValueError):
    """Weights that cannot initialise the model: not a state dict, none of its tensors fit, or (backbone weights)
    not the configured ResNet."""


@dataclass
class LoadReport:
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # present on both sides with different shapes

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("skipped (shape mismatch)", self.skipped)):
            if keys:
                parts.append(f"{label} {len(keys)}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}")
        return "; ".join(parts)


def extract_state_dict(obj, source: str = "the weights") -> Dict[str, torch.Tensor]:
    """The model state dict inside one of our checkpoints, a torchvision state dict, or a DDP-saved dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source} is {describe(obj)}, not {EXPECTED}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    # imported here: the layout module reuses this module's key map (rename_torchvision_key)
    from seg.models.layouts import torchvision_mobilenet

    if torchvision_mobilenet.recognise(state) is not None:  # deeplabv3 / lraspp_mobilenet_v3_large
        state = torchvision_mobilenet.convert(state)
    elif any(k.startswith("classifier.0.convs.") for k in state):  # torchvision's DeepLabV3 ResNet layout
        state = {rename_torchvision_key(k): v for k, v in state.items()}
    return state


def rename_torchvision_key(key: str) -> str:
    """A key of torchvision's ``DeepLabV3`` (its ``DeepLabHead`` and ``FCNHead``) -> ours; backbone keys stay."""
    for old, new in TORCHVISION_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_weights(model: nn.Module, path_or_state_dict: Union[str, Path, Mapping]) -> LoadReport:
    """Load whatever fits: tensors with the same name and shape are copied, the rest reported.

    Weights of which nothing fits (another architecture, a backbone-only file) are a ``WeightsError`` naming the
    file rather than a model left as it was initialised.
    """
    source = path_or_state_dict
    name = f"model weights {source}" if isinstance(source, (str, Path)) else "the given state dict"
    if isinstance(source, (str, Path)):
        source = safe_load(source, what="model weights")
    state = extract_state_dict(source, name)
    own = model.state_dict()
    report = LoadReport()
    fitting = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.skipped.append(key)
        else:
            fitting[key] = value
            report.loaded.append(key)
    report.missing = [k for k in own if k not in fitting]
    if not fitting:
        raise WeightsError(f"none of the {len(state)} tensors in {name} fit this model ({report.summary()}): "
                           f"expected {EXPECTED} with the same backbone")
    model.load_state_dict(fitting, strict=False)
    log.info("load_weights: %s", report.summary())
    return report
