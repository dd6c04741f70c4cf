"""One optimisation step, shared by the training loop and the benchmark so both measure the same code."""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Tuple

import torch

from seg.data.transforms import normalize
from seg.engine import distributed
from seg.engine.device import autocast

LossFn = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


class TrainStep:
    """uint8 batch in, updated model out; returns the detached loss and a 0/1 non-finite flag, both on device.

    Nothing here waits for the device: images and labels are copied non-blocking from pinned memory and
    normalised on the device, and a step whose loss is not finite (on any rank) is skipped by the fused
    optimizer on the device (``found_inf``) or by the GradScaler under fp16.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                 scaler: Optional[torch.amp.GradScaler] = None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        images = normalize(images.to(self.device, non_blocking=True))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True).long()
        with autocast(self.device.type, self.amp_dtype):
            loss = self.loss_fn(self.model(images), labels)
        nonfinite = (~torch.isfinite(loss.detach())).float()
        distributed.all_reduce_sum(nonfinite)
        nonfinite = nonfinite.clamp(max=1)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.found_inf = nonfinite  # fused SGD skips the update on the device, no sync
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().float(), nonfinite
