"""Augmentation pipelines (albumentations), seeded sample access, batching and normalisation.

Samples stay uint8 from disk to the device: the pipelines never normalise, batches are uint8 (four times less
to copy into pinned memory and over PCIe), and ``normalize`` turns them into float on the device.

Masks are only ever resized with nearest neighbour and padded with the ignore index (255, or 65535 for the uint16
masks of more than 255 classes), never 0. uint16 masks become int32 tensors (torch 2.4 has few uint16 kernels).
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.util  # noqa: F401  its exit hook registered before ours, which therefore runs first
import os
import random
import signal
import threading
from typing import Optional, Sequence, Tuple, Union

# albumentations asks PyPI for a newer version on import (in every data-loader worker and DDP rank, and with a
# timeout when offline) unless this is set.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402

from seg.data.base import IGNORE_INDEX, WIDE_IGNORE_INDEX  # noqa: E402
from seg.data.channels import IMAGENET_MEAN, IMAGENET_STD, InputStats, default_stats, mean_pixel  # noqa: E402

# The mean image colour as uint8 RGB: what padded image pixels are filled with (they normalise to about zero).
MEAN_PIXEL = tuple(round(m * 255) for m in IMAGENET_MEAN)


def train_transform(crop_size: Union[int, Sequence[int]], scale_range: Optional[Sequence[float]] = (0.5, 2.0),
                    hflip: bool = True, color_jitter: bool = False,
                    fill: Sequence[float] = MEAN_PIXEL, fill_mask: int = IGNORE_INDEX) -> A.Compose:
    """Random scale (one factor for both sides), pad to the crop with ``fill`` / ``fill_mask`` (the dataset's
    ignore index), random crop, flip, jitter.

    ``crop_size`` is an int or ``(height, width)``; ``scale_range=None`` disables rescaling. Padding goes to the
    bottom and right, as in torchvision's reference.
    """
    height, width = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    steps = []
    if scale_range is not None:
        low, high = (float(v) for v in scale_range)
        steps.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    steps += [
        A.PadIfNeeded(height, width, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=tuple(fill),
                      fill_mask=fill_mask),
        A.RandomCrop(height, width),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02, p=0.8))
    return A.Compose(steps, mask_interpolation=cv2.INTER_NEAREST)


def eval_transform() -> A.Compose:
    """Identity: evaluation sees the image as it is and the label at its original resolution."""
    return A.Compose([])


class TransformedDataset(Dataset):
    """``dataset`` with ``transform`` applied; samples come out as ``(image uint8 [3, H, W], mask [H, W])`` (images
    of other channel counts ``[C, H, W]``, float32 from files deeper than 8 bits), the mask
    uint8 (up to 255 classes) or int32 (uint16 masks: more than 255 classes, 65535 = ignore).

    ``ds[(index, seed)]`` seeds the transform with ``seed`` first, so the augmentation of a sample depends only on
    ``(index, seed)``: not on the worker process, on the number of workers or on what was drawn before. This is
    what makes resuming a run exactly and 0-vs-N-worker runs identical. ``ds[index]`` draws the seed from Python's
    ``random`` module, which ``worker_init_fn`` seeds differently in every worker.
    """

    def __init__(self, dataset, transform: Optional[A.Compose] = None):
        self.dataset = dataset
        self.transform = transform if transform is not None else eval_transform()

    @property
    def class_names(self):
        return self.dataset.class_names

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def palette(self) -> np.ndarray:
        return self.dataset.palette

    @property
    def ignore_index(self) -> int:
        return self.dataset.ignore_index

    def sample_id(self, index: int) -> str:
        return self.dataset.sample_id(index)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, random.getrandbits(32))
        image, mask = self.dataset[int(index)]
        self.transform.set_random_seed(int(seed))
        out = self.transform(image=image, mask=mask)
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        mask = out["mask"]
        return image, torch.from_numpy(np.ascontiguousarray(mask if mask.dtype == np.uint8 else mask.astype(np.int32)))


def pad_collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack samples into ``(images uint8 [N, 3, H, W], masks [N, H, W])`` (masks uint8, or int32 with 65535 as
    ignore).

    Samples of different sizes (evaluation at original resolution) are placed top-left and padded to the largest
    height and width: images with ``MEAN_PIXEL``, masks with the ignore index so that padding never counts in the
    metrics.
    """
    images, masks = zip(*batch)
    if len({image.dtype for image in images}) > 1:  # 8-bit and deeper files in one batch: all on the float scale
        images = tuple(image.float() for image in images)
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    if all(image.shape[1:] == (height, width) for image in images):
        return torch.stack(images), torch.stack(masks)
    channels = images[0].shape[0]
    fill = MEAN_PIXEL if channels == 3 else mean_pixel(InputStats(channels, *default_stats(channels)))
    padded_images = torch.tensor(fill, dtype=images[0].dtype).view(1, channels, 1, 1).repeat(
        len(images), 1, height, width)
    ignore = IGNORE_INDEX if masks[0].dtype == torch.uint8 else WIDE_IGNORE_INDEX
    padded_masks = torch.full((len(masks), height, width), ignore, dtype=masks[0].dtype)
    for i, (image, mask) in enumerate(zip(images, masks)):
        padded_images[i, :, : image.shape[1], : image.shape[2]] = image
        padded_masks[i, : mask.shape[0], : mask.shape[1]] = mask
    return padded_images, padded_masks


@functools.lru_cache(maxsize=None)
def _mean_std_255(device: torch.device, mean: Tuple[float, ...] = IMAGENET_MEAN,
                  std: Tuple[float, ...] = IMAGENET_STD) -> Tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` on ``device``, scaled to [0, 255]; made once per device so that normalising a batch
    never copies constants from the host (on CUDA such a copy would stall every training step)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1).mul(255).to(device)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1).mul(255).to(device)
    return mean_t, std_t


def normalize(images: torch.Tensor, stats: Optional[InputStats] = None) -> torch.Tensor:
    """uint8 (or float in [0, 255]) images ``[..., C, H, W]`` -> float32 ``(x / 255 - mean) / std``, with the
    per-channel ``stats`` (default: RGB with ImageNet's statistics).

    Runs on the tensor's device and keeps its memory format (channels_last stays channels_last).
    """
    mean, std = _mean_std_255(images.device) if stats is None else _mean_std_255(images.device, stats.mean,
                                                                                  stats.std)
    return (images.float() - mean) / std


def leave_stop_signals_to_the_main_process(worker_id: int = 0) -> None:
    """In a data-loader worker: ignore SIGINT, SIGTERM and SIGUSR1. Ctrl-C reaches every process of the terminal's
    group and SLURM signals every process of a job step, but the main process decides (it finishes the step and
    saves, ``seg.engine.interrupt``) and shuts the workers down; a worker dying on its own would print a traceback
    and fail the main process's next batch."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def _end_ignoring_workers() -> None:
    """At the main process's exit, kill its daemonic children (data-loader workers) that are still alive.

    multiprocessing's own exit hook would SIGTERM them and wait for them; a worker that ignores SIGTERM (above) and
    idles on its queue, as after an error raised from the loader, would keep the process from ever exiting.
    """
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if workers and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report each as "killed by signal"
        for child in workers:
            child.kill()


atexit.register(_end_ignoring_workers)


def worker_init_fn(worker_id: int) -> None:
    """Per data-loader worker: no OpenCV threads (the workers are the parallelism), and distinct numpy/random seeds.

    ``torch.initial_seed()`` in a worker is the loader's base seed plus the worker id, so the seeds differ between
    workers and between epochs.
    """
    cv2.setNumThreads(0)
    leave_stop_signals_to_the_main_process()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
