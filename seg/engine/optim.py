"""The optimizer and its learning-rate schedule: SGD with backbone/head groups, poly decay with warm-up.

The schedule is a pure function of the iteration and the ``train.*`` keys, so a resumed run rebuilds it from the
current configuration: a changed ``train.lr`` or ``train.iters`` applies from the resume iteration on.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from seg.engine.device import unwrap


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float,
                 head_lr_mult: float) -> List[Dict]:
    """Backbone and head groups with their LR multipliers; no weight decay on BatchNorm and biases."""
    groups: Dict = {}
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        decay = param.ndim > 1
        key = (part, decay)
        if key not in groups:
            name = f"{part}{'' if decay else '_no_decay'}"
            groups[key] = {"params": [], "name": name,
                           **_group_settings(name, lr, weight_decay, backbone_lr_mult, head_lr_mult)}
        groups[key]["params"].append(param)
    return list(groups.values())


def _group_settings(name: str, lr: float, weight_decay: float, backbone_lr_mult: float,
                    head_lr_mult: float) -> Dict:
    """The base LR and weight decay of the group called ``name`` (``backbone``, ``head_no_decay``, ...)."""
    mult = backbone_lr_mult if name.startswith("backbone") else head_lr_mult
    return {"lr": lr * mult, "weight_decay": 0.0 if name.endswith("_no_decay") else weight_decay}


def poly_schedule(iters: int, power: float, warmup_iters: int) -> Callable[[int], float]:
    """The factor on the base LR at an iteration: ``(1 - iteration / iters) ** power``, ramped over the warm-up."""
    def factor(iteration: int) -> float:
        poly = max(0.0, 1.0 - iteration / iters) ** power
        if warmup_iters and iteration < warmup_iters:
            return poly * (iteration + 1) / warmup_iters
        return poly
    return factor


def _fresh_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Zero momentum buffers up front: fused SGD leaves them uninitialised if the first step is skipped."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)


def build_optimizer(model: nn.Module, train_cfg: Mapping, amp_dtype: Optional[torch.dtype],
                    device_type: str) -> Tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR,
                                               torch.amp.GradScaler]:
    """Fused SGD with the backbone/head groups, the poly schedule and a GradScaler (enabled for fp16 only).

    ``train_cfg`` holds the ``train.*`` keys: lr, momentum, weight_decay, backbone_lr_mult, head_lr_mult, iters,
    poly_power, warmup_iters.
    """
    optimizer = torch.optim.SGD(
        param_groups(model, train_cfg["lr"], train_cfg["weight_decay"], train_cfg["backbone_lr_mult"],
                     train_cfg["head_lr_mult"]),
        lr=train_cfg["lr"], momentum=train_cfg["momentum"], fused=True)
    _fresh_momentum(optimizer)
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    return optimizer, _poly_scheduler(optimizer, train_cfg, iteration=0), scaler


def resume_optimizer(optimizer: torch.optim.SGD, state: Mapping, train_cfg: Mapping,
                     iteration: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Load a checkpoint's optimizer ``state`` (its momentum buffers) under the *current* hyper-parameters.

    Every group gets the current ``train.lr`` times its multiplier, ``train.momentum`` and ``train.weight_decay``
    (0 for the no-decay groups), and the returned schedule is rebuilt from the current ``train.iters``,
    ``train.warmup_iters`` and ``train.poly_power`` at ``iteration`` (steps done): the lr of every later step is
    what a run started with these values would use there.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        settings = _group_settings(group["name"], train_cfg["lr"], train_cfg["weight_decay"],
                                   train_cfg["backbone_lr_mult"], train_cfg["head_lr_mult"])
        group.update(settings, initial_lr=settings["lr"], momentum=train_cfg["momentum"])
    return _poly_scheduler(optimizer, train_cfg, iteration)


def _poly_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Mapping,
                    iteration: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR at ``iteration``: each group's lr is its ``initial_lr`` times ``poly_schedule(...)(iteration)``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_schedule(train_cfg["iters"], train_cfg["poly_power"], train_cfg["warmup_iters"]),
        last_epoch=iteration - 1)
