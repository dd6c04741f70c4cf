"""Segmentation losses on logits already at label resolution."""

from __future__ import annotations

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
