"""What recognising another project's weights file yields: the architecture it needs and its tensors in our keys.

Each peer layout is one module beside this one with a ``recognise(obj) -> Optional[Foreign]`` (``obj`` is what
``seg.io.safe_load`` returned: the peer's whole saved object) that answers None for files that are not its own,
and a pure key/shape map, as timm's ``checkpoint_filter_fn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch

from seg.errors import UserError


class WeightsError(UserError, ValueError):
    """Weights that cannot initialise the model: not a state dict, a part of the model they leave uninitialised,
    a file of another project this one does not build, or (backbone weights) not the configured backbone."""


@dataclass
class Foreign:
    layout: str                        # what the file is, for the load report: "VainF DeepLabV3+ ResNet-101"
    arguments: Dict[str, Any]          # build_model keyword arguments (num_classes included) of the peer's model
    state: Dict[str, torch.Tensor]     # the weights in this project's keys and shapes
    class_names: Optional[List[str]] = None  # when the file records them
    stride_recorded: bool = False      # False: output_stride is the peer's default (the file does not say; loaders
    #                                    say so, since a model trained at another stride needs os=)
    preset: Optional[str] = None       # the configs/model/ preset that builds this architecture


def tensors_only(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Keys without ``prefix`` where every key has it (``module.``: DataParallel / DDP saves)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def rename(state: Mapping[str, torch.Tensor], prefixes) -> Dict[str, torch.Tensor]:
    """Keys renamed by the first matching ``(their prefix, our prefix)`` pair; other keys unchanged."""
    renamed = {}
    for key, value in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed
