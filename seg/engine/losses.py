"""Segmentation losses on logits already at label resolution."""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce", ignore_index: int = 255,
                      bootstrap_fraction: float = 0.25) -> torch.Tensor:
    """Cross-entropy over non-ignored pixels, or its bootstrapped form.

    ``bootstrap`` averages the loss over only the hardest ``bootstrap_fraction`` of the batch's pixels
    (ignored pixels never count), the hard-pixel bootstrapping of the DeepLabv3 paper (section 4.2); the
    pixel count is fixed by the batch shape, so no host synchronisation is needed.
    """
    if kind == "ce":
        return F.cross_entropy(logits, labels, ignore_index=ignore_index)
    pixel_loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none").flatten()
    valid = (labels != ignore_index).flatten()
    k = max(1, int(pixel_loss.numel() * bootstrap_fraction))
    hardest = torch.where(valid, pixel_loss, torch.full_like(pixel_loss, -1.0)).topk(k).values
    kept = hardest >= 0
    return (hardest * kept).sum() / kept.sum().clamp(min=1)


def make_loss(train_cfg: Mapping, ignore_index: int) -> Callable[[Mapping[str, torch.Tensor], torch.Tensor],
                                                                   torch.Tensor]:
    """``outputs, labels -> loss``: ``train.loss`` on the main output plus ``train.aux_weight`` times the
    auxiliary head's."""
    kind, bootstrap_fraction, aux_weight = train_cfg["loss"], train_cfg["bootstrap_fraction"], train_cfg["aux_weight"]

    def loss_fn(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss = segmentation_loss(outputs["out"].float(), labels, kind, ignore_index, bootstrap_fraction)
        if "aux" in outputs and aux_weight > 0:
            loss = loss + aux_weight * segmentation_loss(outputs["aux"].float(), labels, kind, ignore_index,
                                                         bootstrap_fraction)
        return loss

    return loss_fn
