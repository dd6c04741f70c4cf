"""The measurements, each of the code the project runs (docs/benchmarks.md says what every figure means).

Times: CUDA events around each call on a GPU (the host keeps queueing work, as in training), ``perf_counter`` on
the CPU; medians. Memory: CUDA ``max_memory_allocated`` since the phase began, or the process's peak RSS on the
CPU (which cannot be reset). FLOPs are counted on the meta device, so nothing is computed.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seg.data.transforms import normalize
from seg.engine.device import autocast
from seg.engine.inference import segment
from seg.engine.losses import make_loss
from seg.engine.optim import build_optimizer
from seg.engine.step import TrainStep

TRAIN_FLOPS_MULTIPLIER = 3  # training FLOPs per image are quoted as 3x the forward FLOPs (backward ~ 2x forward)
# Dense (no sparsity) datasheet peaks in TFLOP/s; the first entry whose tokens are all in the device name wins.
PEAK_TFLOPS = [
    ("H100 NVL", ("h100", "nvl"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", ("h100", "pcie"), {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 SXM", ("h100",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("H200 NVL", ("h200", "nvl"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200 SXM", ("h200",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("A100", ("a100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", ("l40s",), {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("V100", ("v100",), {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7}),
]


@dataclass(frozen=True)
class Setup:
    """What every timed phase shares: device, precision, memory layout, shapes and call counts."""
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    warmup: int
    steps: int
    batch: int
    crop: Tuple[int, int]
    eval_batch: int
    eval_hw: Tuple[int, int]
    num_classes: int
    ignore_index: int
    peak: Dict  # ``peak_tflops``: the device's TFLOP/s for the fraction-of-peak figures

    @property
    def layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def device_info(device: torch.device) -> Dict:
    info = {"type": device.type, "name": None, "capability": None, "memory_gib": None,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {**info, "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": props.total_memory / 2 ** 30}
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {**info, "name": models[0] if models else platform.processor() or platform.machine()}


def lookup_peak(device_name: str) -> Optional[Tuple[str, Dict[str, Optional[float]]]]:
    name = device_name.lower()
    return next(((label, peaks) for label, tokens, peaks in PEAK_TFLOPS if all(t in name for t in tokens)), None)


def peak_tflops(device: torch.device, amp_dtype: Optional[torch.dtype], override: Optional[float] = None) -> Dict:
    """The peak for the precision convolutions run in (full precision on CUDA is TF32 when cuDNN may use it, as
    PyTorch lets it by default); nulls on the CPU and unknown GPUs unless ``override`` gives it."""
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype) or (
        "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32")
    result = {"name": None, "precision": precision, "tflops": None, "source": None}
    entry = lookup_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if override is not None:
        result.update(name="config", tflops=float(override), source="config peak_tflops")
    elif entry is not None:
        result.update(name=entry[0], tflops=entry[1][precision], source="NVIDIA datasheet, dense (no sparsity)")
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh(device: torch.device) -> None:
    """Give dropped objects' memory back and restart the peak count, so a phase's memory figure is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int,
               latency: bool = False) -> Tuple[List[float], float]:
    """Times (ms) of ``steps`` calls after ``warmup`` calls, and the synchronised wall time (s) of all. CUDA events
    are read after one final synchronisation; ``latency``: a synchronised wall clock per call instead."""
    for _ in range(warmup):
        fn()
    sync(device)
    begin, times = time.perf_counter(), []
    if device.type == "cuda" and not latency:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        sync(device)
        return [start.elapsed_time(end) for start, end in events], time.perf_counter() - begin
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        if latency:
            sync(device)
        times.append((time.perf_counter() - tick) * 1e3)
    return times, time.perf_counter() - begin


def _median_ms(fn: Callable[[], Any], s: Setup, grad: bool = True) -> float:
    with torch.inference_mode(not grad):
        return float(np.median(time_calls(fn, s.device, s.warmup, s.steps)[0]))


def _throughput(batch: int, median_ms: float, flops_per_image: Optional[int], s: Setup) -> Dict:
    images_per_s = batch / (median_ms / 1e3)
    tflops = flops_per_image * images_per_s / 1e12 if flops_per_image else None
    return {"images_per_s": images_per_s, "tflops": tflops,
            "peak_fraction": tflops / s.peak["tflops"] if tflops and s.peak["tflops"] else None}


def fake_batch(batch: int, hw: Tuple[int, int], s: Setup) -> Tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch as the loader gives it (pinned on CUDA); labels with an ignore border like real masks."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *hw), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, s.num_classes, (batch, *hw), dtype=torch.uint8, generator=generator)
    labels[:, :2], labels[:, :, :2] = s.ignore_index, s.ignore_index
    return (images.pin_memory(), labels.pin_memory()) if s.device.type == "cuda" else (images, labels)


def train_step(model: nn.Module, train_cfg: Mapping, s: Setup) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One iteration of the trainer's loop: ``TrainStep`` set up as ``Trainer`` sets it up, then the LR schedule
    (poly over a billion iterations, so the learning rate never reaches zero while timing)."""
    optimizer, scheduler, scaler = build_optimizer(model, {**train_cfg, "iters": 10 ** 9}, s.amp_dtype, s.device.type)
    step = TrainStep(model, optimizer, make_loss(train_cfg, s.ignore_index), s.device, s.amp_dtype, s.channels_last,
                     scaler)
    return lambda images, labels: (step(images, labels), scheduler.step())


def time_train(call: Callable[[], Any], s: Setup, flops_per_image: Optional[int]) -> Dict:
    """The ``train`` figures of ``call``, a training step on ``s.batch`` images; its first call is timed alone
    (torch.compile, cuDNN autotuning, lazy initialisation)."""
    fresh(s.device)
    first = time_calls(call, s.device, 0, 1, latency=True)[0][0] / 1e3
    times, wall = time_calls(call, s.device, max(s.warmup - 1, 0), s.steps)
    median = float(np.median(times))
    return {"step_ms": median, "step_ms_p10": float(np.percentile(times, 10)),
            "step_ms_p90": float(np.percentile(times, 90)), "wall_images_per_s": s.batch * s.steps / wall,
            "first_step_s": first, "peak_memory_mib": peak_memory_mib(s.device),
            **_throughput(s.batch, median, flops_per_image, s)}


def time_inference(model: nn.Module, s: Setup, flops_per_image: Optional[int]) -> Dict:
    """``segment`` (one whole-image pass: logits, upsampling, softmax) as ``evaluate`` calls it, on a uint8 batch of
    ``s.eval_batch`` images of ``s.eval_hw`` (throughput) and on one image (latency)."""
    def run(images: torch.Tensor) -> torch.Tensor:
        x = normalize(images.to(s.device, non_blocking=True))
        with autocast(s.device.type, s.amp_dtype):
            return segment(model, x)

    batch, single = fake_batch(s.eval_batch, s.eval_hw, s)[0], fake_batch(1, s.eval_hw, s)[0]
    fresh(s.device)
    with torch.inference_mode():
        times, _ = time_calls(lambda: run(batch), s.device, s.warmup, s.steps)
        latency, _ = time_calls(lambda: run(single), s.device, s.warmup, s.steps, latency=True)
    median = float(np.median(times))
    return {"batch_size": s.eval_batch, "batch_ms": median, "latency_ms": float(np.median(latency)),
            "latency_ms_p90": float(np.percentile(latency, 90)), "peak_memory_mib": peak_memory_mib(s.device),
            **_throughput(s.eval_batch, median, flops_per_image, s)}


def time_loader(loader, warmup: int, batches: int, s: Setup, step: Callable = lambda *batch: None) -> Tuple:
    """``warmup`` (at least one) then ``batches`` batches of ``loader``, each fed to ``step``: the first batch's time
    (worker start-up), the host time blocked in ``next`` over the ``batches`` and their synchronised wall time (s)."""
    iterator, waits = iter(loader), []

    def call() -> None:
        tick = time.perf_counter()
        batch = next(iterator)
        waits.append(time.perf_counter() - tick)
        step(*batch)

    wall = time_calls(call, s.device, warmup, batches)[1]
    return waits[0], sum(waits[warmup:]), wall


def _aspp(model: nn.Module) -> nn.Module:
    return model.aspp if hasattr(model, "aspp") else model.classifier[0]  # ours / torchvision's DeepLabHead


def aspp_rates(model: nn.Module) -> List[int]:
    return [_aspp(model).convs[i][0].dilation[0] for i in (1, 2, 3)]


def conv3x3_dilations(backbone: nn.Module) -> Dict[str, List[int]]:
    """Dilation of every 3x3 convolution of stages 2-4, in order (a BasicBlock unit has two)."""
    return {stage: [m.dilation[0] for m in getattr(backbone, stage).modules() if
                    isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)] for stage in ("layer2", "layer3", "layer4")}


def _flops(model: nn.Module, batch: int, hw: Tuple[int, int], backward: bool = False) -> int:
    """FLOPs of ``model`` (on the meta device) on ``batch`` images: 2 per multiply-add of convolutions and matrix
    products (``FlopCounterMode``); BatchNorm, activations, interpolation and the loss are not counted."""
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        outputs = model(torch.zeros(batch, 3, *hw, device="meta"))
        if backward:
            sum(v.float().sum() for v in outputs.values()).backward()
    return int(counter.get_total_flops())


def describe(train_model: Callable[[], nn.Module], eval_model: Callable[[], nn.Module], s: Setup) -> Tuple[Dict, Dict]:
    """The ``model`` and ``flops`` sections of the models these build for training and inference, counted on the
    meta device: per image, forward at batch 1 in eval mode, forward + backward at batch 2 in train mode
    (torchvision's image pooling cannot train on one image)."""
    with torch.device("meta"):
        train, evaluation = train_model(), eval_model()
    shapes = []
    for model in (train, evaluation):
        _aspp(model).register_forward_pre_hook(lambda _m, args: shapes.append(list(args[0].shape[1:])))
    forward, eval_forward = _flops(train.eval(), 1, s.crop), _flops(evaluation.eval(), 1, s.eval_hw)
    info = {"params": sum(p.numel() for p in train.parameters()), "aspp_rates": aspp_rates(train),
            "eval_aspp_rates": aspp_rates(evaluation), "dilations": conv3x3_dilations(train.backbone),
            "aspp_input_shape": [s.batch, *shapes[0]], "eval_aspp_input_shape": [s.eval_batch, *shapes[1]]}
    flops = {"forward_per_image": forward, "train_per_image": TRAIN_FLOPS_MULTIPLIER * forward,
             "train_multiplier": TRAIN_FLOPS_MULTIPLIER, "eval_forward_per_image": eval_forward,
             "train_per_image_counted": _flops(train.train(), 2, s.crop, backward=True) // 2}
    return info, flops


def _randn(s: Setup, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=s.device, dtype=dtype).contiguous(memory_format=s.layout)


def _fwd_bwd_ms(fn: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor, s: Setup, backward: bool = True,
                params: Sequence[torch.Tensor] = ()) -> Tuple[float, Optional[float]]:
    """Median ms of ``fn(*inputs)`` forward only (inference mode) and, with ``backward``, forward + backward."""
    forward, leaves = _median_ms(lambda: fn(*inputs), s, grad=False), [x.detach().requires_grad_() for x in inputs]
    if not backward:
        return forward, None
    return forward, _median_ms(lambda: torch.autograd.grad(fn(*leaves), (*leaves, *params), grad), s)


def time_conv3x3(shape: Sequence[int], rates: Sequence[int], s: Setup, dtype: torch.dtype, backward: bool) -> List:
    """A 3x3 conv (C -> 256) at dilation 1 and at each ASPP rate on the ASPP input shape; ratios to dilation 1."""
    x, grad, rows = _randn(s, dtype, *shape), _randn(s, dtype, shape[0], 256, *shape[2:]), []
    for dilation in [1, *rates]:
        conv = nn.Conv2d(shape[1], 256, 3, padding=dilation, dilation=dilation, bias=False)
        conv.to(device=s.device, dtype=dtype, memory_format=s.layout)
        fwd, both = _fwd_bwd_ms(conv, [x], grad, s, backward, [conv.weight])
        dense = rows[0] if rows else {"fwd_ms": fwd, "fwd_bwd_ms": both}
        rows.append({"dilation": dilation, "fwd_ms": fwd, "fwd_bwd_ms": both, "fwd_ratio": fwd / dense["fwd_ms"],
                     "fwd_bwd_ratio": both / dense["fwd_bwd_ms"] if backward else None})
    return rows


def time_image_pool(shape: Sequence[int], s: Setup, dtype: torch.dtype) -> Dict:
    """The pooling branch brought to the feature size and concatenated with the four others: ``expand`` (a
    broadcast view, as ``seg/models/aspp.py`` does) vs bilinear ``F.interpolate`` (torchvision's ``ASPPPooling``)."""
    n, _, h, w = shape
    inputs = [_randn(s, dtype, n, 4 * 256, h, w), _randn(s, dtype, n, 256, 1, 1)]  # four branches, pooled
    grad = _randn(s, dtype, n, 5 * 256, h, w)
    upsample = {"expand": lambda p: p.expand(-1, -1, h, w),
                "interpolate": lambda p: F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)}
    result = {"shape": [n, 256, h, w]}
    for name, up in upsample.items():
        times = _fwd_bwd_ms(lambda others, pooled: torch.cat([others, up(pooled)], 1), inputs, grad, s)
        result[f"{name}_fwd_ms"], result[f"{name}_fwd_bwd_ms"] = times
    return result
