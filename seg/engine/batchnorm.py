"""BatchNorm control for training: momentum, frozen BatchNorm (the paper's second stage) and a frozen backbone.

A frozen BatchNorm keeps its running statistics and its affine parameters for the whole run. Its statistics stay
fixed only in eval mode, and every ``model.train()`` (the loop's start, the end of each evaluation) would put it
back in training mode, so each frozen module's own ``train`` is replaced by one that keeps it in eval mode: the
module stays frozen whoever calls ``train()``. Its parameters stop requiring gradients, which keeps them out of
the optimizer (``seg.engine.optim.param_groups`` skips them) and out of DDP's gradient reduction: DDP needs no
``find_unused_parameters`` for a frozen part, since it only tracks parameters that require gradients.
"""

from __future__ import annotations

import logging
import types
from typing import List, Optional

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."  # the encoder's parameters (as seg.engine.optim's backbone group)


def batchnorms(model: nn.Module) -> List[nn.Module]:
    """Every BatchNorm of ``model``: torch's 1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d (all ``_BatchNorm``)."""
    return [module for module in model.modules() if isinstance(module, _BatchNorm)]


def set_momentum(model: nn.Module, momentum: Optional[float]) -> int:
    """Set every BatchNorm's running-statistics momentum (None: leave torch's default, 0.1); returns the count.

    torch's momentum is the weight of the new batch: ``running = (1 - momentum) * running + momentum * batch``.
    TensorFlow's (and the DeepLab paper's) ``decay`` is the weight of the old value: decay 0.9997 is momentum 0.0003.
    """
    modules = batchnorms(model)
    if momentum is not None:
        for module in modules:
            module.momentum = float(momentum)
    return len(modules)


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train`` of a frozen BatchNorm: always eval mode."""
    return nn.Module.train(module, False)


def freeze(module: nn.Module) -> None:
    """Fix one BatchNorm's statistics (eval mode, now and after any later ``train()``) and affine parameters."""
    for parameter in module.parameters(recurse=False):
        parameter.requires_grad_(False)
    module.train = types.MethodType(_stay_in_eval, module)
    module.eval()


def is_frozen(module: nn.Module) -> bool:
    return getattr(module.train, "__func__", None) is _stay_in_eval


def configure(model: nn.Module, momentum: Optional[float] = None, freeze_bn: bool = False,
              freeze_backbone: bool = False) -> None:
    """Apply ``model.bn_momentum``, ``train.freeze_bn`` and ``train.freeze_backbone`` to a model before the optimizer
    and DDP see it (after any SyncBatchNorm conversion, which would drop the frozen modules' ``train``).

    ``freeze_backbone``: the encoder's parameters stop requiring gradients and its BatchNorms are frozen, so the
    head is fine-tuned on fixed features.
    """
    count = set_momentum(model, momentum)
    if momentum is not None:
        log.info("BatchNorm momentum %g on %d layers (running stats decay %g)", momentum, count, 1 - momentum)
    frozen = 0
    if freeze_backbone:
        backbone = model.get_submodule(BACKBONE_PREFIX.rstrip("."))
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        for module in batchnorms(backbone):
            freeze(module)
            frozen += 1
        log.info("train.freeze_backbone: %d backbone parameter tensors fixed, its %d BatchNorm layers in eval mode",
                 len(list(backbone.parameters())), frozen)
    if freeze_bn:
        modules = [module for module in batchnorms(model) if not is_frozen(module)]
        for module in modules:
            freeze(module)
        log.info("train.freeze_bn: %d BatchNorm layers frozen (eval-mode statistics, fixed affine parameters)",
                 len(modules) + frozen)
