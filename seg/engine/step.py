"""One optimisation step, shared by the training loop and the benchmark so both measure the same code."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Mapping, Optional, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel

from seg.data.channels import InputStats
from seg.data.transforms import normalize
from seg.engine import distributed
from seg.engine.device import autocast

LossFn = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]
Batch = Tuple[torch.Tensor, torch.Tensor]


class TrainStep:
    """uint8 batch in, updated model out; returns the detached loss and a 0/1 non-finite flag, both on device.

    Nothing here waits for the device: images and labels are copied non-blocking from pinned memory and
    normalised on the device, and a step whose loss is not finite (on any rank) is skipped by the fused
    optimizer on the device (``found_inf``) or by the GradScaler under fp16.

    With ``accumulate=N`` (``train.accumulate``) one step is one optimizer update from N micro-batches: each loss is
    scaled by 1/N, so the summed gradients are the mean over the micro-batches (the gradient of the N times larger
    batch where the micro-batches have equally many labelled pixels), the GradScaler unscales, steps and updates
    once, and DDP reduces the gradients once, on the last micro-batch (``no_sync`` before). A non-finite loss in any
    micro-batch skips the whole update.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 device: torch.device, amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                 scaler: Optional[torch.amp.GradScaler] = None, accumulate: int = 1,
                 stats: Optional[InputStats] = None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.device, self.amp_dtype, self.channels_last = device, amp_dtype, channels_last
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.accumulate = accumulate
        self.stats = stats  # the input's normalisation (None: RGB, ImageNet's)
        self.ddp = _ddp(model)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 rest: Optional[Iterator[Batch]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One update from ``(images, labels)`` and, with ``accumulate=N``, the next N - 1 batches of ``rest``;
        returns the mean loss of the micro-batches and the non-finite flag."""
        loss_sum = torch.zeros((), device=self.device)
        nonfinite = torch.zeros((), device=self.device)
        for index in range(self.accumulate):
            if index:
                images, labels = next(rest)
            last = index == self.accumulate - 1
            with contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync():
                loss = self._backward(images, labels)
            nonfinite = torch.maximum(nonfinite, (~torch.isfinite(loss)).float())
            loss_sum += loss.float()
        distributed.all_reduce_sum(nonfinite)
        nonfinite = nonfinite.clamp(max=1)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.found_inf = nonfinite  # fused SGD skips the update on the device, no sync
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum / self.accumulate, nonfinite

    def _backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward and backward of one micro-batch (gradients add up); returns its detached, unscaled loss."""
        images = normalize(images.to(self.device, non_blocking=True), self.stats)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True).long()
        with autocast(self.device.type, self.amp_dtype):
            loss = self.loss_fn(self.model(images), labels)
        scaled = loss / self.accumulate if self.accumulate > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()


def _ddp(model: torch.nn.Module) -> Optional[DistributedDataParallel]:
    """The DDP wrapper of ``model`` (also under torch.compile), whose ``no_sync`` skips a gradient reduction."""
    model = getattr(model, "_orig_mod", model)
    return model if isinstance(model, DistributedDataParallel) else None
