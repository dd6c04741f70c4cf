"""Confusion-matrix segmentation metrics, the way the VOC / Cityscapes papers report them.

One confusion matrix is accumulated over a whole split (rows: label, columns: prediction); every metric
is derived from it at the end, so per-image averaging never enters. Pixels labelled ``ignore_index``
never count. mIoU is the mean over classes whose union (label or prediction) is non-empty.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``[num_classes, num_classes]`` int64 counts; rows are labels, columns predictions (on their device)."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
    label = label.long()
    valid = label != ignore_index
    label = label[valid]
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}, "
                         f"found {int(label.min())}..{int(label.max())}")
    index = label * num_classes + prediction[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(matrix: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Dict:
    """mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and per-class IoU (fractions).

    A class with an empty union has IoU ``None``: it is left out of the mean instead of counting as 0 or 1.
    Mean accuracy averages over classes present in the labels; fwIoU weights IoU by label frequency.
    """
    m = matrix.double().cpu()
    num_classes = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    true_positive = m.diag()
    label_count = m.sum(1)
    union = label_count + m.sum(0) - true_positive
    total = m.sum()
    present = union > 0
    iou = torch.where(present, true_positive / union.clamp(min=1), torch.zeros_like(union))
    in_labels = label_count > 0
    accuracy = true_positive / label_count.clamp(min=1)
    frequency = label_count / total.clamp(min=1)
    return {
        "mIoU": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else 0.0,
        "mean_acc": float(accuracy[in_labels].mean()) if in_labels.any() else 0.0,
        "fwIoU": float((frequency * iou).sum()),
        "per_class_iou": {name: (float(iou[i]) if present[i] else None) for i, name in enumerate(names)},
    }
