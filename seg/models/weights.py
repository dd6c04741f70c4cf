"""Loading ImageNet backbone weights and whole-model weights (ours or torchvision's DeepLabV3)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from seg.errors import UserError
from seg.io import safe_load

log = logging.getLogger(__name__)

# torchvision DeepLabV3 key prefix -> ours (see seg/models/deeplab.py). Backbone keys are identical.
TORCHVISION_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("classifier.0.", "aspp."),
    ("classifier.1.", "decoder.block.0."),
    ("classifier.2.", "decoder.block.1."),
    ("classifier.4.", "classifier."),
    ("aux_classifier.", "aux_head."),
)


class WeightsUnavailableError(UserError, RuntimeError):
    pass


def load_backbone_weights(net: nn.Module, name: str, pretrained: str) -> None:
    """Load ImageNet weights (``"imagenet"``) or a local ResNet state dict (a path) into a torchvision ResNet."""
    if pretrained == "imagenet":
        state = safe_load(fetch_imagenet_weights(name), what=f"ImageNet weights for {name}")
    else:
        state = safe_load(pretrained, what=f"backbone weights (backbone.pretrained) for {name}")
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"backbone weights {pretrained} do not fit {name}: missing {missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")


def fetch_imagenet_weights(name: str) -> Path:
    """torchvision's ImageNet weights file for ``name`` in torch.hub's cache, downloaded (hash-checked) if missing.

    Training scripts call this before any other work, so a machine without network access and without the file
    stops at once with the path to put it at.
    """
    from seg.models.backbone import BACKBONES

    url = BACKBONES[name][1].url
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


def extract_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The model state dict inside one of our checkpoints, a torchvision state dict, or a DDP-saved dict."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("weights must be a state dict of tensors or a checkpoint of this project with a 'model' entry")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    if any(k.startswith("classifier.0.convs.") for k in state):  # torchvision's DeepLabV3 layout
        state = {_rename_torchvision_key(k): v for k, v in state.items()}
    return state


def _rename_torchvision_key(key: str) -> str:
    for old, new in TORCHVISION_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_weights(model: nn.Module, path_or_state_dict: Union[str, Path, Mapping]) -> LoadReport:
    """Load whatever fits: tensors with the same name and shape are copied, the rest reported, never a crash."""
    source = path_or_state_dict
    if isinstance(source, (str, Path)):
        source = safe_load(source, what="model weights")
    state = extract_state_dict(source)
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
    model.load_state_dict(fitting, strict=False)
    log.info("load_weights: %s", report.summary())
    return report
