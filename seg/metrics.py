"""Confusion-matrix segmentation metrics, the way the VOC / Cityscapes papers report them.

One confusion matrix is accumulated over a whole split (rows: label, columns: prediction); every metric
is derived from it at the end, so per-image averaging never enters. Pixels labelled ``ignore_index``
never count. mIoU is the mean over classes whose union (label or prediction) is non-empty; a split without a
single labelled pixel has no summary metrics (``None``, JSON ``null``) rather than zeros.

Per class, from the same matrix: IoU ``TP / (TP + FP + FN)``, precision ``TP / (TP + FP)``, recall
``TP / (TP + FN)`` and Dice (F1) ``2 TP / (2 TP + FP + FN)``. Classes can be left out of the means
(``exclude``, e.g. background in a task that reports the foreground classes only), never out of the per-class
results.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import torch

log = logging.getLogger(__name__)


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts; rows are labels, columns predictions (on their device)."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
    label = label.long()
    valid = label != ignore_index
    label, prediction = label[valid], prediction[valid].long()
    if label.numel():
        # Both ranges in one host synchronisation: an out-of-range value would land in another class's cell.
        low, high, predicted_low, predicted_high = torch.stack(
            [label.min(), label.max(), prediction.min(), prediction.max()]).tolist()
        if low < 0 or high >= num_classes:
            raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}, found {low}..{high}")
        if predicted_low < 0 or predicted_high >= num_classes:
            raise ValueError(f"predicted classes must be in [0, {num_classes}), found "
                             f"{predicted_low}..{predicted_high}")
    index = label * num_classes + prediction
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def check_exclude(exclude, class_names: Optional[Sequence[str]] = None) -> None:
    """Raise a ``ValueError`` starting with ``exclude`` unless it is a list of names (of ``class_names``, if given)."""
    if isinstance(exclude, str) or not isinstance(exclude, (list, tuple)) or not all(
            isinstance(name, str) for name in exclude):
        raise ValueError(f"exclude must be a list of class names, e.g. [background], got {exclude!r}")
    unknown = [name for name in exclude if class_names is not None and name not in class_names]
    if unknown:
        raise ValueError(f"exclude names {unknown} that are not classes of the dataset: {list(class_names)}")


def metrics_from_confusion(matrix: torch.Tensor, class_names: Optional[Sequence[str]] = None,
                           exclude: Sequence[str] = ()) -> Dict:
    """mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU, per-class IoU, and per-class precision,
    recall and Dice with their mean mDice (fractions).

    A class with an empty union has ``None`` everywhere: it is left out of the means instead of counting as 0 or
    1. Within the union, a ratio whose denominator is empty (precision of a class never predicted, recall of a
    class only predicted) is 0, as scikit-learn's ``zero_division=0``. Mean accuracy averages over classes present
    in the labels; fwIoU weights IoU by label frequency over all classes. ``exclude`` (class names) leaves classes
    out of mIoU, mDice and mean accuracy; pixel accuracy and fwIoU still count every pixel. Without any labelled
    pixel (every label is the ignore value) there is nothing to measure: mIoU, pixel_acc, mean_acc, fwIoU and mDice
    are ``None``, with a warning.
    """
    m = matrix.double().cpu()
    num_classes = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    check_exclude(exclude, names)
    kept = torch.tensor([name not in exclude for name in names], dtype=torch.bool)
    true_positive = m.diag()
    label_count = m.sum(1)
    union = label_count + m.sum(0) - true_positive
    total = m.sum()
    predicted_count = m.sum(0)
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
    in_labels = label_count > 0
    accuracy = true_positive / label_count.clamp(min=1)
    frequency = label_count / total.clamp(min=1)
    precision = true_positive / predicted_count.clamp(min=1)
    dice = 2 * true_positive / (label_count + predicted_count).clamp(min=1)

    def mean(values: torch.Tensor, where: torch.Tensor) -> float:
        where = where & kept
        return float(values[where].mean()) if where.any() else 0.0

    def per_class(values: torch.Tensor) -> Dict:
        return {name: (float(values[i]) if present[i] else None) for i, name in enumerate(names)}

    summary = {
        "mIoU": mean(iou, present),
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else 0.0,
        "mean_acc": mean(accuracy, in_labels),
        "fwIoU": float((frequency * iou).sum()),
        "per_class_iou": per_class(iou),
        "mDice": mean(dice, present),
        "per_class_dice": per_class(dice),
        "per_class_precision": per_class(precision),
        "per_class_recall": per_class(accuracy),
        "excluded_classes": [name for name in names if name in exclude],
    }
    if total == 0:
        log.warning("no labelled pixels in the evaluated images (every label is the ignore value): mIoU, pixel_acc, "
                    "mean_acc, fwIoU and mDice are null")
        summary.update(dict.fromkeys(SUMMARY_KEYS))
    return summary


# The metrics that average over labelled pixels: ``None`` when there are none.
SUMMARY_KEYS = ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice")
