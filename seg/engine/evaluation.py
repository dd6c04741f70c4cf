"""Evaluation over a dataset split: one confusion matrix, shared by training validation and evaluate.py."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from seg.data.transforms import TransformedDataset, eval_transform, normalize, pad_collate
from seg.engine import distributed
from seg.engine.inference import segment
from seg.metrics import confusion_matrix, metrics_from_confusion

Predictor = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, predictor: Predictor = segment,
             batch_size: int = 1, num_workers: int = 0, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False) -> Tuple[Dict, torch.Tensor]:
    """Metrics (``metrics.json`` format) and the confusion matrix of ``model`` on ``dataset``.

    Labels stay at their original resolution. Under DDP each rank evaluates its own share of the images
    (no padded duplicates) and the confusion matrices are summed, so the result equals one process's.
    """
    was_training = model.training
    model.eval()
    num_classes = dataset.num_classes
    indices = distributed.shard(list(range(len(dataset))))
    loader = DataLoader(Subset(TransformedDataset(dataset, eval_transform()), indices), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=pad_collate, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    images_seen = torch.zeros((), dtype=torch.int64, device=device)
    for images, labels in tqdm(loader, desc="eval", disable=not (progress and distributed.is_main()),
                               dynamic_ncols=True):
        images = normalize(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            scores = predictor(model, images)
        matrix += confusion_matrix(scores.argmax(1), labels, num_classes, dataset.ignore_index)
        images_seen += images.shape[0]
    distributed.all_reduce_sum(matrix)
    distributed.all_reduce_sum(images_seen)
    model.train(was_training)
    metrics = metrics_from_confusion(matrix, dataset.class_names)
    metrics["num_images"] = int(images_seen)
    return metrics, matrix.cpu()
