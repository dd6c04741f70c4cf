"""The timed phases. What is timed is what the project runs:

* training: ``seg.engine.step.TrainStep`` (normalise on the device, forward, loss, backward, fused SGD step) with
  the trainer's optimizer (``build_optimizer``: parameter groups, fused SGD, poly schedule, GradScaler for fp16),
  ``channels_last`` and ``torch.compile`` settings, on a fixed uint8 batch in pinned memory (what the loader
  gives); the loss is the trainer's (``make_loss``);
* inference: ``seg.engine.inference.segment`` under ``torch.inference_mode`` and the AMP dtype, at ``eval_size``
  and ``eval_os`` (the model is switched with ``set_output_stride``, as the paper evaluates), as
  ``seg.engine.evaluation.evaluate`` calls it;
* data: the trainer's own DataLoader (``build_train_loader``: same transform, sampler, workers, pinning, prefetch).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import nn

from seg.benchmark.schema import empty_inference, empty_train
from seg.benchmark.timing import (first_call_s, median_of, peak_memory_mib, percentile_of, reset_peak, sync,
                                  time_calls, time_latency)
from seg.engine.inference import segment
from seg.engine.sampler import ResumableSampler
from seg.engine.step import TrainStep
from seg.data.loader import build_train_loader
from seg.engine.optim import build_optimizer


def throughput(batch: int, median_ms: float, flops_per_image: Optional[int], peak: Optional[float]) -> Dict:
    """images/s of a call on ``batch`` images taking ``median_ms``, and the TFLOP/s and fraction of ``peak``."""
    images_per_s = batch / (median_ms / 1e3)
    tflops = flops_per_image * images_per_s / 1e12 if flops_per_image else None
    return {"images_per_s": images_per_s, "tflops": tflops,
            "peak_fraction": tflops / peak if tflops is not None and peak else None}


def fake_batch(batch: int, hw: Tuple[int, int], num_classes: int, device: torch.device,
                ignore_index: int = 255) -> Tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch as the loader gives it (pinned on CUDA); labels with a 255 border like real masks."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *hw), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch, *hw), dtype=torch.uint8, generator=generator)
    labels[:, :2], labels[:, :, :2] = ignore_index, ignore_index
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    return images, labels


def make_train_step(model: nn.Module, train_cfg: Mapping, loss_fn: Callable, device: torch.device,
                    amp_dtype: Optional[torch.dtype], channels_last: bool):
    """TrainStep and LR scheduler exactly as ``Trainer`` sets them up (``model`` already placed / compiled)."""
    # A schedule far longer than the benchmark, so the learning rate never reaches zero while timing.
    optimizer, scheduler, scaler = build_optimizer(model, {**train_cfg, "iters": 10 ** 9}, amp_dtype, device.type)
    step = TrainStep(model, optimizer, loss_fn, device, amp_dtype, channels_last, scaler)
    return step, scheduler


def bench_train(step_call: Callable[[], Any], device: torch.device, warmup: int, steps: int, batch: int,
                flops_per_image: Optional[int], peak: Optional[float]) -> Dict:
    result = empty_train()
    reset_peak(device)
    first = first_call_s(step_call, device)
    times, wall = time_calls(step_call, device, max(warmup - 1, 0), steps)
    median = median_of(times)
    result.update(step_ms=median, step_ms_p10=percentile_of(times, 10), step_ms_p90=percentile_of(times, 90),
                  wall_images_per_s=batch * steps / wall, first_step_s=first, peak_memory_mib=peak_memory_mib(device),
                  **throughput(batch, median, flops_per_image, peak))
    return result


def bench_inference(model: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype], eval_hw, batch: int,
                    warmup: int, steps: int, flops_per_image: Optional[int], peak: Optional[float]) -> Dict:
    """``segment`` (one whole-image pass: logits, upsampling, softmax) as ``evaluate`` runs it, at ``eval_hw``."""
    from seg.data.transforms import normalize

    result = empty_inference()
    model.eval()
    images, _ = fake_batch(batch, eval_hw, 2, device)
    single = images[:1].clone()
    if device.type == "cuda":
        single = single.pin_memory()

    def run(batch_images: torch.Tensor) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            x = normalize(batch_images.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                return segment(model, x)
        return call

    reset_peak(device)
    with torch.inference_mode():
        times, _ = time_calls(run(images), device, warmup, steps)
        latency = time_latency(run(single), device, warmup, steps)
    median = median_of(times)
    result.update(batch_size=batch, batch_ms=median, latency_ms=median_of(latency),
                  latency_ms_p90=percentile_of(latency, 90), peak_memory_mib=peak_memory_mib(device),
                  **throughput(batch, median, flops_per_image, peak))
    return result


def build_loader(train_set, batch: int, crop_hw_: Tuple[int, int], num_workers: int, train_cfg: Mapping,
                 seed: int, device: torch.device):
    """The trainer's DataLoader (same transform, sampler, workers, pinning) at the benchmark's shapes."""
    return build_train_loader(train_set, ResumableSampler(len(train_set), seed), batch, crop_hw_,
                              tuple(train_cfg["scale_range"]), train_cfg["hflip"], train_cfg["color_jitter"],
                              num_workers, pin_memory=device.type == "cuda", seed=seed)


def bench_loader(loader, batches: int, warmup_batches: int) -> Dict:
    """Samples/s of the loader alone (no model): batches after the first ``warmup_batches`` (worker start-up)."""
    iterator = iter(loader)
    tick = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - tick
    for _ in range(warmup_batches - 1):
        next(iterator)
    samples = 0
    tick = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
        samples += images.shape[0]
    elapsed = time.perf_counter() - tick
    del iterator
    return {"samples_per_s": samples / elapsed, "first_batch_s": first}


def bench_real_run(loader, step: TrainStep, scheduler, device: torch.device, warmup: int, steps: int,
                   batch: int) -> Dict:
    """The trainer's loop body (``step(*next(batches))``, ``scheduler.step()``) on the real loader.

    ``wait_share`` is the host time blocked in ``next(loader)`` over the synchronised wall time of the ``steps``
    steps: near 0 when the device is the bottleneck (the host waits in kernel launches instead), large when the
    loader cannot keep up.
    """
    iterator = iter(loader)
    for _ in range(max(warmup, 1)):
        step(*next(iterator))
        scheduler.step()
    sync(device)
    waited = 0.0
    begin = time.perf_counter()
    for _ in range(steps):
        tick = time.perf_counter()
        batch_data = next(iterator)
        waited += time.perf_counter() - tick
        step(*batch_data)
        scheduler.step()
    sync(device)
    total = time.perf_counter() - begin
    del iterator
    return {"run_steps": steps, "wait_share": waited / total, "wait_ms_per_step": waited / steps * 1e3,
            "run_images_per_s": steps * batch / total}
