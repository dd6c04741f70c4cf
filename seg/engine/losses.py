"""Segmentation losses on logits already at label resolution.

Every loss leaves pixels labelled ``ignore_index`` out and takes optional per-class weights (``[C]`` on the logits'
device); nothing here reads a value back to the host, so a training step never waits for the device.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from seg.config import LOSSES


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "ce", ignore_index: int = 255,
                      bootstrap_fraction: float = 0.25, class_weights: Optional[torch.Tensor] = None,
                      focal_gamma: float = 2.0) -> torch.Tensor:
    """``kind``: ``ce`` (cross-entropy), ``bootstrap``, ``dice``, ``ce+dice`` (their sum) or ``focal``.

    ``bootstrap`` averages the loss over only the hardest ``bootstrap_fraction`` of the batch's pixels
    (ignored pixels never count), the hard-pixel bootstrapping of the DeepLabv3 paper (section 4.2); the
    pixel count is fixed by the batch shape, so no host synchronisation is needed.
    With ``class_weights`` cross-entropy and focal loss are weighted means over pixels (torch's convention: each
    pixel counts with its class's weight), Dice a weighted mean over classes.
    """
    if kind == "ce":
        return F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_index)
    if kind == "bootstrap":
        return bootstrapped_ce(logits, labels, ignore_index, bootstrap_fraction, class_weights)
    if kind == "dice":
        return dice_loss(logits, labels, ignore_index, class_weights)
    if kind == "ce+dice":
        return (F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_index)
                + dice_loss(logits, labels, ignore_index, class_weights))
    if kind == "focal":
        return focal_loss(logits, labels, ignore_index, class_weights, focal_gamma)
    raise ValueError(f"kind must be one of {', '.join(LOSSES)}, got {kind!r}")


def bootstrapped_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, fraction: float = 0.25,
                    class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    pixel_loss = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=ignore_index,
                                 reduction="none").flatten()
    valid = (labels != ignore_index).flatten()
    k = max(1, int(pixel_loss.numel() * fraction))
    hardest = torch.where(valid, pixel_loss, torch.full_like(pixel_loss, -1.0)).topk(k).values
    kept = hardest >= 0
    return (hardest * kept).sum() / kept.sum().clamp(min=1)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
              class_weights: Optional[torch.Tensor] = None, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` per class over the whole batch (softmax probabilities against one-hot labels), averaged
    over the classes present in the batch's labels (weighted by ``class_weights``).

    Classes absent from the labels are left out, as in segmentation_models_pytorch's DiceLoss: their Dice would
    only measure the small probabilities spread over them. Ignored pixels count in neither term.
    """
    num_classes = logits.shape[1]
    valid = labels != ignore_index
    probabilities = logits.softmax(1) * valid.unsqueeze(1)
    target = F.one_hot(labels.masked_fill(~valid, 0), num_classes).permute(0, 3, 1, 2) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    target_sum = target.sum(dims).to(probabilities.dtype)
    intersection = (probabilities * target).sum(dims)
    dice = (2 * intersection + smooth) / (probabilities.sum(dims) + target_sum + smooth)
    weights = (target_sum > 0).to(probabilities.dtype)
    if class_weights is not None:
        weights = weights * class_weights
    return ((1 - dice) * weights).sum() / weights.sum().clamp(min=1e-12)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
               class_weights: Optional[torch.Tensor] = None, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``-(1 - p_t) ** gamma * log p_t``, with the class weights as the alpha
    balance; ``gamma = 0`` is (weighted) cross-entropy exactly."""
    valid = labels != ignore_index
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")  # 0 on ignored pixels
    loss = (1 - torch.exp(-ce)).pow(gamma) * ce
    weights = valid.to(loss.dtype)
    if class_weights is not None:
        weights = weights * class_weights[labels.masked_fill(~valid, 0)]
    return (loss * weights).sum() / weights.sum().clamp(min=1e-12)


def make_loss(train_cfg: Mapping, ignore_index: int, class_weights: Optional[torch.Tensor] = None
              ) -> Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """``outputs, labels -> loss``: ``train.loss`` on the main output plus ``train.aux_weight`` times the
    auxiliary head's; ``class_weights`` (``[C]``, on the training device) weight both."""
    options = dict(kind=train_cfg["loss"], ignore_index=ignore_index, class_weights=class_weights,
                   bootstrap_fraction=train_cfg["bootstrap_fraction"], focal_gamma=train_cfg.get("focal_gamma", 2.0))
    aux_weight = train_cfg["aux_weight"]

    def loss_fn(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss = segmentation_loss(outputs["out"].float(), labels, **options)
        if "aux" in outputs and aux_weight > 0:
            loss = loss + aux_weight * segmentation_loss(outputs["aux"].float(), labels, **options)
        return loss

    return loss_fn
