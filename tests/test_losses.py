"""Losses against hand-computed values: Dice, focal, class weights, and the ignore index in each."""

import math

import pytest
import torch
import torch.nn.functional as F

from seg.engine.losses import dice_loss, focal_loss, segmentation_loss


def _uniform_batch(num_classes=2):
    """3 pixels, every one with softmax (1/4, 3/4) over 2 classes; labels 1, 0 and ignore."""
    logits = torch.zeros(1, num_classes, 1, 3)
    logits[0, 1] = math.log(3.0)
    if num_classes > 2:
        logits[0, 2:] = -1e4  # classes with no probability mass
    labels = torch.tensor([[[1, 0, 255]]])
    return logits, labels


def test_dice_by_hand():
    logits, labels = _uniform_batch()
    # class 0: intersection 1/4 (the pixel labelled 0), sum of p0 over the 2 labelled pixels 1/2, 1 label pixel
    dice0 = (2 * 0.25 + 1) / (0.5 + 1 + 1)
    # class 1: intersection 3/4, sum of p1 3/2, 1 label pixel
    dice1 = (2 * 0.75 + 1) / (1.5 + 1 + 1)
    assert float(dice_loss(logits, labels)) == pytest.approx(1 - (dice0 + dice1) / 2)
    weights = torch.tensor([1.0, 3.0])
    assert float(dice_loss(logits, labels, class_weights=weights)) == pytest.approx(
        ((1 - dice0) * 1 + (1 - dice1) * 3) / 4)
    # the ignored pixel's logits do not matter; a class absent from the labels is left out
    changed = logits.clone()
    changed[0, :, 0, 2] = torch.tensor([5.0, -5.0])
    assert float(dice_loss(changed, labels)) == pytest.approx(float(dice_loss(logits, labels)))
    three, _ = _uniform_batch(3)
    assert float(dice_loss(three, labels)) == pytest.approx(1 - (dice0 + dice1) / 2, abs=1e-6)


def test_focal_by_hand_and_as_weighted_cross_entropy():
    logits, labels = _uniform_batch()
    # p_t = 3/4 for the pixel labelled 1, 1/4 for the pixel labelled 0
    expected = ((1 / 4) ** 2 * -math.log(3 / 4) + (3 / 4) ** 2 * -math.log(1 / 4)) / 2
    assert float(focal_loss(logits, labels, gamma=2.0)) == pytest.approx(expected)
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[0, 0] = 255
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    for w in (None, weights):
        reference = F.cross_entropy(logits, labels, weight=w, ignore_index=255)
        assert float(focal_loss(logits, labels, class_weights=w, gamma=0.0)) == pytest.approx(float(reference))


def test_kinds_honour_weights_and_ignore():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 8))
    labels[:, :2] = 255
    weights = torch.tensor([0.2, 1.0, 3.0])
    with torch.no_grad():
        ce = F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
        assert float(segmentation_loss(logits, labels, "ce", class_weights=weights)) == pytest.approx(float(ce))
        both = segmentation_loss(logits, labels, "ce+dice", class_weights=weights)
        assert float(both) == pytest.approx(float(ce + dice_loss(logits, labels, class_weights=weights)))
    for kind in ("ce", "bootstrap", "dice", "ce+dice", "focal"):
        loss = segmentation_loss(logits, labels, kind, class_weights=weights)
        assert torch.isfinite(loss) and loss > 0, kind
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad[:, :, :2].abs().max() == 0, kind  # ignored pixels get no gradient
    with pytest.raises(ValueError, match="kind must be one of ce, bootstrap, dice, ce\\+dice, focal, got 'lovasz'"):
        segmentation_loss(logits, labels, "lovasz")
