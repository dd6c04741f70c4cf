"""The training data loader: augmented uint8 crops in the order a sampler streams, with workers that keep a GPU
fed."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Sampler

from seg.data.channels import InputStats, mean_pixel
from seg.data.transforms import MEAN_PIXEL, TransformedDataset, train_transform, worker_init_fn


def build_train_loader(dataset, sampler: Sampler, batch_size: int, crop_size: Union[int, Tuple[int, int]],
                       scale_range: Optional[Sequence[float]] = (0.5, 2.0), hflip: bool = True,
                       color_jitter: bool = False, num_workers: int = 2, pin_memory: bool = False,
                       seed: int = 0, stats: Optional[InputStats] = None) -> DataLoader:
    """Batches of ``(images uint8 [N, 3, H, W], masks [N, H, W])`` (uint8, int32 beyond 255 classes) for the
    ``(index, seed)`` pairs that ``sampler`` yields (see ``TransformedDataset``), so the data depend on the sampler
    alone, not on the workers. Padding is filled with the mean pixel of ``stats`` (None: ImageNet's RGB mean)."""
    transform = train_transform(crop_size, scale_range=scale_range, hflip=hflip, color_jitter=color_jitter,
                                fill=MEAN_PIXEL if stats is None else mean_pixel(stats), fill_mask=dataset.ignore_index)
    return DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size, sampler=sampler,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      worker_init_fn=worker_init_fn, drop_last=True,
                      prefetch_factor=4 if num_workers > 0 else None,
                      # A private generator: creating the loader must not consume the global RNG.
                      generator=torch.Generator().manual_seed(seed))
