"""The optimizer and its learning-rate schedule: SGD with backbone/head groups, poly decay with warm-up."""

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
            mult = backbone_lr_mult if part == "backbone" else head_lr_mult
            groups[key] = {"params": [], "lr": lr * mult, "weight_decay": weight_decay if decay else 0.0,
                           "name": f"{part}{'' if decay else '_no_decay'}"}
        groups[key]["params"].append(param)
    return list(groups.values())


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
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_schedule(train_cfg["iters"], train_cfg["poly_power"], train_cfg["warmup_iters"]))
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler
