"""Evaluation over a dataset split: one confusion matrix, shared by training validation and evaluate.py."""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from seg.data.transforms import TransformedDataset, eval_transform, normalize, pad_collate
from seg.engine import distributed
from seg.engine.inference import segment
from seg.metrics import confusion_matrix, metrics_from_confusion

Predictor = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


class Evaluation(NamedTuple):
    metrics: Dict                # the metrics.json content
    confusion: torch.Tensor      # [C, C] int64, rows: label, columns: prediction
    samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]]  # (image HxWx3, label, prediction) of the first images


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, predictor: Predictor = segment,
             batch_size: int = 1, num_workers: int = 0, amp_dtype: Optional[torch.dtype] = None,
             progress: bool = False, keep_samples: int = 0) -> Evaluation:
    """Metrics (``metrics.json`` format) and the confusion matrix of ``model`` on ``dataset``.

    Labels stay at their original resolution. Under DDP each rank evaluates its own share of the images
    (no padded duplicates) and the confusion matrices are summed, so the result equals one process's.
    The first ``keep_samples`` images this process evaluates come back with their predictions (for overlays).
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
    samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for raw_images, raw_labels in tqdm(loader, desc="eval", disable=not (progress and distributed.is_main()),
                                       dynamic_ncols=True):
        images = normalize(raw_images.to(device, non_blocking=True))
        labels = raw_labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            predictions = predictor(model, images).argmax(1)
        matrix += confusion_matrix(predictions, labels, num_classes, dataset.ignore_index)
        images_seen += images.shape[0]
        for i in range(min(keep_samples - len(samples), images.shape[0])):
            samples.append((raw_images[i].permute(1, 2, 0).numpy(), raw_labels[i].numpy(),
                            predictions[i].to(torch.uint8).cpu().numpy()))
    distributed.all_reduce_sum(matrix)
    distributed.all_reduce_sum(images_seen)
    model.train(was_training)
    metrics = metrics_from_confusion(matrix, dataset.class_names)
    metrics["num_images"] = int(images_seen)
    return Evaluation(metrics, matrix.cpu(), samples)
