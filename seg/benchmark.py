"""Performance benchmark: training and inference throughput, memory, FLOPs, data loading, atrous micro-benchmarks.

``run_benchmark(config, run_dir)`` takes a ``configs/benchmark.yaml``-shaped configuration (an OmegaConf config or
a plain dict), prints a table and writes every figure to a JSON file (``output``, relative to ``run_dir``).
Nothing here imports Hydra; ``scripts/benchmark.py`` is the thin entry point.

What is timed is what the project runs:

* training: ``seg.engine.step.TrainStep`` (normalise on the device, forward, loss, backward, fused SGD step) with
  the trainer's parameter groups (``param_groups``), momentum buffers, poly schedule, GradScaler (fp16 only),
  ``channels_last`` and ``torch.compile`` settings, on a fixed uint8 batch in pinned memory (what the loader
  gives); the loss is the trainer's (``segmentation_loss`` on ``out`` plus ``aux_weight`` x ``aux``);
* inference: ``seg.engine.inference.segment`` under ``torch.inference_mode`` and the AMP dtype, at ``eval_size``
  and ``eval_os`` (the model is switched with ``set_output_stride``, as the paper evaluates), as
  ``seg.engine.evaluation.evaluate`` calls it;
* data: the trainer's own DataLoader (``build_train_loader``: same transform, sampler, workers, pinning, prefetch).

Timing: after ``warmup`` calls, every one of ``steps`` calls is timed with CUDA events on a GPU (device time
between the call's first and last kernel, no host synchronisation inside the loop) or ``time.perf_counter`` on
the CPU, and the median is reported; "wall" throughputs divide the images by a synchronised wall clock around
all timed steps. Latency (batch 1) is a synchronised wall clock per call.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg.config import (AMP_MODES, DEVICES, ConfigError, choice, crop_hw, dataset_kwargs, model_kwargs, number,
                        to_plain, validate_model)
from seg.engine.inference import segment
from seg.engine.sampler import ResumableSampler
from seg.engine.step import TrainStep
from seg.engine.device import resolve_amp, resolve_device
from seg.engine.trainer import build_optimizer, build_train_loader
from seg.engine.trainer import make_loss as trainer_make_loss
from seg.errors import UserError
from seg.models import OUTPUT_STRIDES, build_model
from seg.models.aspp import default_aspp_rates

log = logging.getLogger("seg.benchmark")

SCHEMA = "seg.benchmark/1"
COMPARE_MODES = ("torchvision",)
TORCHVISION_BACKBONES = ("resnet50", "resnet101")
# Training FLOPs per image are quoted as this multiple of the forward FLOPs (backward ~ 2x forward).
TRAIN_FLOPS_MULTIPLIER = 3
DEFAULT_COUNTS = {"cuda": (10, 50), "cpu": (2, 5)}  # (warmup, steps) when the config leaves them null

# Dense (no sparsity) tensor-core / FP32 peaks in TFLOP/s from NVIDIA's datasheets. Matched against
# torch.cuda.get_device_name() in order: the first entry whose every token is in the name wins.
PEAK_TFLOPS: List[Tuple[str, Tuple[str, ...], Dict[str, Optional[float]]]] = [
    ("H100 NVL", ("h100", "nvl"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", ("h100", "pcie"), {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 SXM", ("h100",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("H200 NVL", ("h200", "nvl"), {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200 SXM", ("h200",), {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("A100", ("a100",), {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", ("l40s",), {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("V100", ("v100",), {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7}),
]
PEAK_SOURCE = "NVIDIA datasheet, dense (no sparsity)"


# --- configuration ----------------------------------------------------------------------------------------------

def rewrite_argv(argv: Sequence[str]) -> List[str]:
    """Accept ``--compare torchvision`` / ``--compare=torchvision`` (argparse style) as Hydra's ``compare=...``."""
    out, i = [argv[0]] if argv else [], 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--compare":
            has_value = i + 1 < len(argv) and not argv[i + 1].startswith("-") and "=" not in argv[i + 1]
            out.append(f"compare={argv[i + 1] if has_value else 'torchvision'}")
            i += 2 if has_value else 1
            continue
        if arg.startswith("--compare="):
            arg = "compare=" + arg.split("=", 1)[1]
        out.append(arg)
        i += 1
    return out


def _size_hw(value, key: str) -> Tuple[int, int]:
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        raise ConfigError(f"{key} must be a positive integer or [height, width], got {value!r}")
    return (sides[0], sides[-1])


def _optional_count(value, key: str, minimum: int) -> None:
    if value is not None:
        number(value, key, minimum=minimum, strict=False, integer=True)


def validate_benchmark(cfg: Mapping) -> None:
    """Check every key before any work starts (naming the key and the allowed values)."""
    validate_model(cfg)
    choice(cfg["device"], "device", DEVICES)
    choice(cfg["amp"], "amp", AMP_MODES)
    choice(cfg["channels_last"], "channels_last", ("auto", True, False))
    choice(cfg["compile"], "compile", (True, False))
    choice(cfg.get("micro", True), "micro", (True, False))
    compare = cfg.get("compare")
    choice(compare, "compare", (None, *COMPARE_MODES))
    choice(cfg["eval_os"], "eval_os", OUTPUT_STRIDES)
    number(cfg["batch_size"], "batch_size", integer=True)
    _optional_count(cfg.get("eval_batch_size"), "eval_batch_size", 1)
    _optional_count(cfg.get("warmup"), "warmup", 0)
    _optional_count(cfg.get("steps"), "steps", 1)
    _optional_count(cfg.get("cpu_threads"), "cpu_threads", 1)
    number(cfg["num_workers"], "num_workers", strict=False, integer=True)
    number(cfg["data_steps"], "data_steps", strict=False, integer=True)
    if cfg.get("peak_tflops") is not None:
        number(cfg["peak_tflops"], "peak_tflops")
    _size_hw(cfg["crop_size"], "crop_size")
    _size_hw(cfg["eval_size"], "eval_size")
    if compare == "torchvision":
        if cfg["backbone"]["name"] not in TORCHVISION_BACKBONES:
            raise ConfigError(
                f"compare=torchvision supports backbone {list(TORCHVISION_BACKBONES)}, got "
                f"{cfg['backbone']['name']!r}: torchvision has no DeepLabV3 for resnet18/34, and its BasicBlock "
                "refuses dilation > 1, so no torchvision-built atrous resnet18/34 exists to compare with")
        if cfg["model"]["head"] != "deeplabv3":
            raise ConfigError(f"compare=torchvision needs model.head=deeplabv3 (torchvision has no DeepLabv3+), "
                              f"got {cfg['model']['head']!r}")
    if cfg["data_steps"] > 0 and cfg["dataset"].get("root") == "???":
        raise ConfigError("dataset.root is required for the data-loader figures: set dataset.root=... "
                          "(or data_steps=0 to skip them)")


# --- small utilities --------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    """Return the memory of dropped objects to the device, so the next peak-memory figure starts clean."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mib(device: torch.device) -> float:
    """CUDA: ``torch.cuda.max_memory_allocated`` since the last reset. CPU: the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes on macOS, KiB on Linux


def _median(values: Sequence[float]) -> Optional[float]:
    return float(np.median(values)) if len(values) else None


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if len(values) else None


def _dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return str(dtype).replace("torch.", "") if dtype is not None else None


def _ratio(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    if ours is None or theirs is None or theirs == 0:
        return None
    return float(ours) / float(theirs)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> Tuple[List[float], float]:
    """Per-call times (ms) of ``steps`` calls after ``warmup`` calls, and the synchronised wall time (s) of all.

    CUDA: a pair of events around every call, read after one final synchronisation, so the host keeps queueing
    work as it would in training. CPU: ``time.perf_counter`` around every call.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        begin = time.perf_counter()
        for start, end in zip(starts, ends):
            start.record()
            fn()
            end.record()
        _sync(device)
        wall = time.perf_counter() - begin
        return [start.elapsed_time(end) for start, end in zip(starts, ends)], wall
    times = []
    begin = time.perf_counter()
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tick) * 1e3)
    return times, time.perf_counter() - begin


def time_latency(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> List[float]:
    """Synchronised wall-clock time (ms) of each call: what one request waits for."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - tick) * 1e3)
    return times


def device_info(device: torch.device) -> Dict:
    info = {"type": device.type, "name": None, "capability": None, "memory_gib": None,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    memory_gib=props.total_memory / 2 ** 30)
    else:
        info["name"] = _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def versions() -> Dict:
    import torchvision

    try:
        from importlib.metadata import version

        seg_version = version("seg")
    except Exception:  # noqa: BLE001 - not installed (PYTHONPATH checkout)
        seg_version = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "seg": seg_version}


def peak_tflops(device: torch.device, amp_dtype: Optional[torch.dtype], override: Optional[float] = None) -> Dict:
    """The device's peak for the precision the convolutions run in, or nulls (CPU, unknown GPU).

    Full precision on CUDA counts as TF32 when cuDNN may use it (``torch.backends.cudnn.allow_tf32``, PyTorch's
    default), FP32 otherwise.
    """
    if amp_dtype is torch.bfloat16:
        precision = "bf16"
    elif amp_dtype is torch.float16:
        precision = "fp16"
    elif device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    else:
        precision = "fp32"
    result = {"name": None, "precision": precision, "tflops": None, "source": None}
    if override is not None:
        return {**result, "name": "config", "tflops": float(override), "source": "config peak_tflops"}
    if device.type != "cuda":
        return result
    name = torch.cuda.get_device_name(device)
    entry = lookup_peak(name)
    if entry is not None:
        result.update(name=entry[0], tflops=entry[1].get(precision), source=PEAK_SOURCE)
    return result


def lookup_peak(device_name: str) -> Optional[Tuple[str, Dict[str, Optional[float]]]]:
    lowered = device_name.lower()
    for label, tokens, figures in PEAK_TFLOPS:
        if all(token in lowered for token in tokens):
            return label, figures
    return None


# --- models -----------------------------------------------------------------------------------------------------

def conv3x3_dilations(backbone: nn.Module) -> Dict[str, List[int]]:
    """Dilation of every 3x3 convolution of stages 2-4, in order (a BasicBlock unit has two)."""
    result = {}
    for stage in ("layer2", "layer3", "layer4"):
        result[stage] = [m.dilation[0] for m in getattr(backbone, stage).modules()
                         if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    return result


def _aspp_module(model: nn.Module) -> nn.Module:
    return model.aspp if hasattr(model, "aspp") else model.classifier[0]  # ours / torchvision's DeepLabHead


def aspp_rates(model: nn.Module) -> List[int]:
    aspp = _aspp_module(model)
    return [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)]


def build_torchvision_deeplabv3(backbone: str, num_classes: int, output_stride: int, aux_loss: bool,
                                rates: Optional[Sequence[int]] = None) -> nn.Module:
    """torchvision's DeepLabV3 at ``output_stride``, built by torchvision's own code path.

    torchvision's ``deeplabv3_resnet50/101`` is OS8 by construction (``replace_stride_with_dilation=[False, True,
    True]``, ASPP rates 12, 24, 36); other strides rebuild the same thing with torchvision's ResNet
    (``replace_stride_with_dilation`` for the stride), ``IntermediateLayerGetter``, ``DeepLabHead`` with the
    rates for the stride and ``FCNHead`` as the auxiliary head. No weights are loaded.
    """
    from torchvision.models import resnet
    from torchvision.models import segmentation
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCNHead

    if backbone not in TORCHVISION_BACKBONES:
        raise UserError(f"torchvision has no DeepLabV3 for {backbone!r} (only {list(TORCHVISION_BACKBONES)}); "
                        "its BasicBlock (resnet18/34) refuses dilation > 1")
    rates = list(rates) if rates else default_aspp_rates(output_stride)
    if output_stride == 8 and rates == [12, 24, 36]:
        builder = getattr(segmentation, f"deeplabv3_{backbone}")
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)
    replace = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    net = getattr(resnet, backbone)(weights=None, replace_stride_with_dilation=replace)
    return_layers = {"layer4": "out", **({"layer3": "aux"} if aux_loss else {})}
    body = IntermediateLayerGetter(net, return_layers=return_layers)
    head = DeepLabHead(2048, num_classes, atrous_rates=rates)
    aux = FCNHead(1024, num_classes) if aux_loss else None
    return DeepLabV3(body, head, aux)


def count_flops(factory: Callable[[], nn.Module], input_hw: Tuple[int, int], backward: bool = False,
                output_stride: Optional[int] = None) -> Dict:
    """FLOPs of one image for the model ``factory()`` builds, counted on the meta device (no compute, no memory).

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of convolutions and matrix
    products; BatchNorm, activations, interpolation and the loss are not counted. Returns ``forward`` (eval
    mode, batch 1), ``forward_backward`` (train mode, per image of a batch of 2: torchvision's image pooling
    cannot train on one image; null unless ``backward``) and ``aspp_input`` (the ASPP input shape at batch 1).
    ``output_stride`` switches our model with ``set_output_stride`` first.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = factory()
    if output_stride is not None:
        meta.set_output_stride(output_stride)
    meta.eval()
    shapes: List[List[int]] = []
    hook = _aspp_module(meta).register_forward_pre_hook(lambda _m, args: shapes.append(list(args[0].shape)))
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta(torch.zeros(1, 3, *input_hw, device="meta"))
        result = {"forward": int(counter.get_total_flops()), "forward_backward": None, "aspp_input": shapes[0]}
        if backward:
            meta.train()
            counter = FlopCounterMode(display=False)
            with counter:
                outputs = meta(torch.zeros(2, 3, *input_hw, device="meta"))
                sum(v.float().sum() for v in outputs.values()).backward()
            result["forward_backward"] = int(counter.get_total_flops()) // 2
    finally:
        hook.remove()
    return result


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- phases -----------------------------------------------------------------------------------------------------

def _empty_train() -> Dict:
    return {"step_ms": None, "step_ms_p10": None, "step_ms_p90": None, "images_per_s": None,
            "wall_images_per_s": None, "first_step_s": None, "peak_memory_mib": None, "tflops": None,
            "peak_fraction": None}


def _empty_inference() -> Dict:
    return {"batch_size": None, "batch_ms": None, "images_per_s": None, "latency_ms": None, "latency_ms_p90": None,
            "peak_memory_mib": None, "tflops": None, "peak_fraction": None}


def _empty_data() -> Dict:
    return {"dataset": None, "num_workers": None, "batches": None, "samples_per_s": None, "first_batch_s": None,
            "run_steps": None, "wait_share": None, "wait_ms_per_step": None, "run_images_per_s": None}


def _empty_micro() -> Dict:
    return {"train": {"shape": None, "dtype": None, "conv3x3": None},
            "eval": {"shape": None, "dtype": None, "conv3x3": None},
            "image_pool": {"shape": None, "expand_fwd_ms": None, "interpolate_fwd_ms": None,
                           "expand_fwd_bwd_ms": None, "interpolate_fwd_bwd_ms": None}}


def _empty_torchvision() -> Dict:
    return {"model": None, "builder": None, "recipe": None, "params": None, "aspp_rates": None, "eval_aspp_rates": None,
            "dilations": None, "flops": _empty_flops(), "train": _empty_train(),
            "train_same_step": {"step_ms": None, "images_per_s": None}, "inference": _empty_inference()}


def _empty_flops() -> Dict:
    return {"forward_per_image": None, "train_per_image": None, "train_multiplier": TRAIN_FLOPS_MULTIPLIER,
            "train_per_image_counted": None, "eval_forward_per_image": None}


RATIO_KEYS = ("train_step_ms", "train_images_per_s", "train_wall_images_per_s", "train_peak_memory_mib",
              "same_step_images_per_s", "inference_batch_ms", "inference_images_per_s", "latency_ms",
              "inference_peak_memory_mib", "forward_flops_per_image", "eval_forward_flops_per_image", "params")


def _fill_train(result: Dict, times: List[float], wall: float, first_step_s: float, batch: int, steps: int,
                memory: float, flops_per_image: Optional[int], peak: Optional[float]) -> None:
    median = _median(times)
    images_per_s = batch / (median / 1e3)
    tflops = flops_per_image * images_per_s / 1e12 if flops_per_image else None
    result.update(step_ms=median, step_ms_p10=_percentile(times, 10), step_ms_p90=_percentile(times, 90),
                  images_per_s=images_per_s, wall_images_per_s=batch * steps / wall, first_step_s=first_step_s,
                  peak_memory_mib=memory, tflops=tflops,
                  peak_fraction=tflops / peak if tflops is not None and peak else None)


def _first_call_s(fn: Callable[[], Any], device: torch.device) -> float:
    """One call, synchronised: includes torch.compile, cuDNN autotuning and lazy initialisation."""
    _sync(device)
    tick = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - tick


def _fake_batch(batch: int, hw: Tuple[int, int], num_classes: int, device: torch.device,
                ignore_index: int = 255) -> Tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch as the loader gives it (pinned on CUDA); labels with a 255 border like real masks."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *hw), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch, *hw), dtype=torch.uint8, generator=generator)
    labels[:, :2], labels[:, :, :2] = ignore_index, ignore_index
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    return images, labels


def make_loss(train_cfg: Mapping, ignore_index: int) -> Callable:
    """The trainer's loss for this configuration."""
    return trainer_make_loss(train_cfg["loss"], ignore_index, train_cfg["bootstrap_fraction"],
                             train_cfg["aux_weight"])


def make_train_step(model: nn.Module, train_cfg: Mapping, loss_fn: Callable, device: torch.device,
                    amp_dtype: Optional[torch.dtype], channels_last: bool):
    """TrainStep and LR scheduler exactly as ``Trainer`` sets them up (``model`` already placed / compiled)."""
    # A schedule far longer than the benchmark, so the learning rate never reaches zero while timing.
    optimizer, scheduler, scaler = build_optimizer(model, {**train_cfg, "iters": 10 ** 9}, amp_dtype, device.type)
    step = TrainStep(model, optimizer, loss_fn, device, amp_dtype, channels_last, scaler)
    return step, scheduler


def _place(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def bench_train(step_call: Callable[[], Any], device: torch.device, warmup: int, steps: int, batch: int,
                flops_per_image: Optional[int], peak: Optional[float]) -> Dict:
    result = _empty_train()
    _reset_peak(device)
    first = _first_call_s(step_call, device)
    times, wall = time_calls(step_call, device, max(warmup - 1, 0), steps)
    _fill_train(result, times, wall, first, batch, steps, _peak_memory_mib(device), flops_per_image, peak)
    return result


def bench_inference(model: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype], eval_hw, batch: int,
                    warmup: int, steps: int, flops_per_image: Optional[int], peak: Optional[float]) -> Dict:
    """``segment`` (one whole-image pass: logits, upsampling, softmax) as ``evaluate`` runs it, at ``eval_hw``."""
    from seg.data.transforms import normalize

    result = _empty_inference()
    model.eval()
    images, _ = _fake_batch(batch, eval_hw, 2, device)
    single = images[:1].clone()
    if device.type == "cuda":
        single = single.pin_memory()

    def run(batch_images: torch.Tensor) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            x = normalize(batch_images.to(device, non_blocking=True))
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                return segment(model, x)
        return call

    _reset_peak(device)
    with torch.inference_mode():
        times, _ = time_calls(run(images), device, warmup, steps)
        latency = time_latency(run(single), device, warmup, steps)
    median = _median(times)
    images_per_s = batch / (median / 1e3)
    tflops = flops_per_image * images_per_s / 1e12 if flops_per_image else None
    result.update(batch_size=batch, batch_ms=median, images_per_s=images_per_s, latency_ms=_median(latency),
                  latency_ms_p90=_percentile(latency, 90), peak_memory_mib=_peak_memory_mib(device), tflops=tflops,
                  peak_fraction=tflops / peak if tflops is not None and peak else None)
    return result


def build_loader(train_set, batch: int, crop_hw_: Tuple[int, int], num_workers: int, train_cfg: Mapping,
                 seed: int, device: torch.device):
    """The trainer's DataLoader (same transform, sampler, workers, pinning) at the benchmark's shapes."""
    cfg = {**train_cfg, "crop_size": list(crop_hw_), "num_workers": num_workers}
    return build_train_loader(train_set, ResumableSampler(len(train_set), seed), cfg, batch, device.type == "cuda",
                              seed)


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
    _sync(device)
    waited = 0.0
    begin = time.perf_counter()
    for _ in range(steps):
        tick = time.perf_counter()
        batch_data = next(iterator)
        waited += time.perf_counter() - tick
        step(*batch_data)
        scheduler.step()
    _sync(device)
    total = time.perf_counter() - begin
    del iterator
    return {"run_steps": steps, "wait_share": waited / total, "wait_ms_per_step": waited / steps * 1e3,
            "run_images_per_s": steps * batch / total}


def bench_conv3x3(shape: Sequence[int], rates: Sequence[int], device: torch.device, dtype: torch.dtype,
                  channels_last: bool, warmup: int, steps: int, backward: bool) -> List[Dict]:
    """A 3x3 conv (C -> 256) at dilation 1 and at each ASPP rate, on the ASPP input shape."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    rows = []
    for dilation in [1, *rates]:
        conv = nn.Conv2d(shape[1], 256, 3, padding=dilation, dilation=dilation, bias=False)
        conv = conv.to(device=device, dtype=dtype, memory_format=memory_format)
        with torch.inference_mode():
            forward, _ = time_calls(lambda: conv(x), device, warmup, steps)
        row = {"dilation": dilation, "fwd_ms": _median(forward), "fwd_bwd_ms": None}
        if backward:
            xg = x.detach().requires_grad_(True)
            grad = torch.randn(shape[0], 256, *shape[2:], device=device, dtype=dtype).contiguous(
                memory_format=memory_format)

            def fwd_bwd():
                return torch.autograd.grad(conv(xg), (xg, conv.weight), grad)

            both, _ = time_calls(fwd_bwd, device, warmup, steps)
            row["fwd_bwd_ms"] = _median(both)
        rows.append(row)
        del conv
    dense = rows[0]
    for row in rows:
        row["fwd_ratio"] = _ratio(row["fwd_ms"], dense["fwd_ms"])
        row["fwd_bwd_ratio"] = _ratio(row["fwd_bwd_ms"], dense["fwd_bwd_ms"])
    return rows


def bench_image_pool(shape: Sequence[int], device: torch.device, dtype: torch.dtype, channels_last: bool,
                     warmup: int, steps: int) -> Dict:
    """The pooling branch brought back to the feature size and concatenated with the other four branches:
    ``expand`` (a broadcast view, as ``seg/models/aspp.py`` does) vs bilinear ``F.interpolate`` from 1x1
    (torchvision's ``ASPPPooling``)."""
    n, _, h, w = shape
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    others = torch.randn(n, 4 * 256, h, w, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    pooled = torch.randn(n, 256, 1, 1, device=device, dtype=dtype)
    grad = torch.randn(n, 5 * 256, h, w, device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def expand(p):
        return torch.cat([others_, p.expand(-1, -1, h, w)], dim=1)

    def interpolate(p):
        return torch.cat([others_, F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)], dim=1)

    result = {"shape": [n, 256, h, w]}
    for name, fn in (("expand", expand), ("interpolate", interpolate)):
        others_ = others
        with torch.inference_mode():
            forward, _ = time_calls(lambda: fn(pooled), device, warmup, steps)
        others_ = others.detach().requires_grad_(True)
        pooled_g = pooled.detach().requires_grad_(True)
        both, _ = time_calls(lambda: torch.autograd.grad(fn(pooled_g), (others_, pooled_g), grad), device,
                             warmup, steps)
        result[f"{name}_fwd_ms"], result[f"{name}_fwd_bwd_ms"] = _median(forward), _median(both)
    return result


# --- torchvision's reference recipe ---------------------------------------------------------------------------

def torchvision_reference_step(model: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype],
                               lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 1e-4,
                               aux_loss: bool = False):
    """``train_one_epoch`` of torchvision's ``references/segmentation/train.py``.

    Float32 normalised batch copied with ``.to(device)`` (the reference's loader does not pin memory), autocast
    with a GradScaler when fp16 (its ``--amp``), ``criterion`` = CE(out) + 0.5 CE(aux), ``optimizer.zero_grad()``
    before backward, plain SGD (momentum 0.9, weight decay 1e-4; the aux head at 10x LR), ``PolynomialLR``
    stepped every iteration and ``loss.item()`` for the metric logger (one host synchronisation per step).
    bf16 (not a reference option) autocasts in bf16 without a scaler.
    """
    groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad]},
              {"params": [p for p in model.classifier.parameters() if p.requires_grad]}]
    if aux_loss:
        groups.append({"params": [p for p in model.aux_classifier.parameters() if p.requires_grad], "lr": lr * 10})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10 ** 9, power=0.9)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None

    def criterion(inputs, target):
        losses = {name: F.cross_entropy(x, target, ignore_index=255) for name, x in inputs.items()}
        return losses["out"] if len(losses) == 1 else losses["out"] + 0.5 * losses["aux"]

    def step(image: torch.Tensor, target: torch.Tensor) -> float:
        image, target = image.to(device), target.to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            output = model(image)
            loss = criterion(output, target)
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        return loss.item()

    return step


def _reference_batch(images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """What the reference's loader yields: float32 normalised images and int64 targets, in pageable memory."""
    from seg.data.transforms import normalize

    return normalize(images.cpu()).contiguous(), labels.cpu().long()


# --- the benchmark ----------------------------------------------------------------------------------------------

def run_benchmark(config: Any, run_dir: Optional[Path] = None, echo: bool = True) -> Dict:
    """Run every measurement for ``config`` (``configs/benchmark.yaml`` layout); return and write the results.

    ``cpu_threads`` (if set) applies ``torch.set_num_threads`` for the run and is restored afterwards.
    """
    cfg = to_plain(config, throw_on_missing=False)
    validate_benchmark(cfg)
    threads = torch.get_num_threads()
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg["cpu_threads"]))
    try:
        return _run(cfg, run_dir, echo)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: Dict, run_dir: Optional[Path], echo: bool) -> Dict:
    device_type = resolve_device(cfg["device"])
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    amp_dtype = resolve_amp(cfg["amp"], device_type, key="amp")
    channels_last = device_type == "cuda" if cfg["channels_last"] == "auto" else bool(cfg["channels_last"])
    default_warmup, default_steps = DEFAULT_COUNTS[device_type]
    warmup = default_warmup if cfg.get("warmup") is None else int(cfg["warmup"])
    steps = default_steps if cfg.get("steps") is None else int(cfg["steps"])
    batch = int(cfg["batch_size"])
    eval_batch = int(cfg.get("eval_batch_size") or batch)
    crop = crop_hw(tuple(_size_hw(cfg["crop_size"], "crop_size")))
    eval_hw = _size_hw(cfg["eval_size"], "eval_size")
    train_cfg = cfg["train"]
    dataset_cfg = cfg["dataset"]
    ignore_index = int(dataset_cfg.get("ignore_index", 255))
    compare = cfg.get("compare")
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer: fixed shapes
    torch.manual_seed(int(cfg["seed"]))

    data = _empty_data()
    train_set = None
    if cfg["data_steps"] > 0:
        from seg.data import build_dataset

        train_set = build_dataset(**dataset_kwargs(dataset_cfg))
        num_classes = train_set.num_classes
    else:
        num_classes = dataset_cfg.get("num_classes")
        if not isinstance(num_classes, int):
            from seg.data import build_dataset

            num_classes = build_dataset(**dataset_kwargs(dataset_cfg)).num_classes
    peak = peak_tflops(device, amp_dtype, cfg.get("peak_tflops"))
    settings = {
        "backbone": cfg["backbone"]["name"], "os": cfg["os"], "head": cfg["model"]["head"],
        "aux_loss": bool(cfg["model"]["aux_loss"]), "batch_size": batch, "crop_size": list(crop),
        "num_classes": num_classes, "amp": cfg["amp"], "amp_dtype": _dtype_name(amp_dtype),
        "channels_last": channels_last, "compile": bool(cfg["compile"]), "warmup": warmup,
        "steps": steps, "eval_size": list(eval_hw), "eval_os": cfg["eval_os"], "eval_batch_size": eval_batch,
        "timer": "cuda_events" if device_type == "cuda" else "perf_counter",
        "memory": "cuda_max_memory_allocated" if device_type == "cuda" else "process_peak_rss",
        "tf32": bool(device_type == "cuda" and torch.backends.cudnn.allow_tf32),
    }
    log.info("benchmark: %s", settings)

    # Data loader alone, before any model exists.
    if train_set is not None:
        loader = build_loader(train_set, batch, crop, cfg["num_workers"], train_cfg, int(cfg["seed"]), device)
        data.update(dataset=dataset_cfg["name"], num_workers=cfg["num_workers"], batches=cfg["data_steps"],
                    **bench_loader(loader, cfg["data_steps"], max(1, cfg["num_workers"])))
        del loader
        _free(device)

    # Our model: FLOPs, training step, real run, inference.
    kwargs = model_kwargs(cfg, num_classes, pretrained="none")
    flops = _empty_flops()
    train_count = count_flops(lambda: build_model(**kwargs), crop, backward=True)
    eval_count = count_flops(lambda: build_model(**kwargs), eval_hw, output_stride=cfg["eval_os"])
    flops.update(forward_per_image=train_count["forward"], train_per_image=TRAIN_FLOPS_MULTIPLIER *
                 train_count["forward"], train_per_image_counted=train_count["forward_backward"],
                 eval_forward_per_image=eval_count["forward"])
    model = build_model(**kwargs)
    model_info = {"params": _num_params(model), "aspp_rates": aspp_rates(model),
                  "dilations": conv3x3_dilations(model.backbone),
                  "aspp_input_shape": [batch, *train_count["aspp_input"][1:]],
                  "eval_aspp_input_shape": [eval_batch, *eval_count["aspp_input"][1:]], "eval_aspp_rates": None}

    base = _place(model, device, channels_last)
    trained = torch.compile(base) if cfg["compile"] else base
    base.train()
    step, scheduler = make_train_step(trained, train_cfg, make_loss(train_cfg, ignore_index), device, amp_dtype,
                                      channels_last)
    images, labels = _fake_batch(batch, crop, num_classes, device, ignore_index)

    def our_step():
        step(images, labels)
        scheduler.step()

    train = bench_train(our_step, device, warmup, steps, batch, flops["train_per_image"], peak["tflops"])
    if train_set is not None:
        loader = build_loader(train_set, batch, crop, cfg["num_workers"], train_cfg, int(cfg["seed"]), device)
        data.update(bench_real_run(loader, step, scheduler, device, warmup, steps, batch))
        del loader
    del step, scheduler, trained
    _free(device)
    base.set_output_stride(cfg["eval_os"])
    model_info["eval_aspp_rates"] = aspp_rates(base)
    inference = bench_inference(base, device, amp_dtype, eval_hw, eval_batch, warmup, steps,
                                flops["eval_forward_per_image"], peak["tflops"])
    del base, model
    _free(device)

    # Micro-benchmarks on the real ASPP input shapes.
    micro = _empty_micro()
    if cfg.get("micro", True):
        dtype = amp_dtype or torch.float32
        dtype_name = _dtype_name(dtype)
        shape = model_info["aspp_input_shape"]
        micro["train"] = {"shape": shape, "dtype": dtype_name, "conv3x3": bench_conv3x3(
            shape, model_info["aspp_rates"], device, dtype, channels_last, warmup, steps, backward=True)}
        eval_shape = model_info["eval_aspp_input_shape"]
        micro["eval"] = {"shape": eval_shape, "dtype": dtype_name, "conv3x3": bench_conv3x3(
            eval_shape, model_info["eval_aspp_rates"], device, dtype, channels_last, warmup, steps, backward=False)}
        micro["image_pool"] = bench_image_pool(shape, device, dtype, channels_last, warmup, steps)
        _free(device)

    torchvision_result = None
    ratios = None
    if compare == "torchvision":
        torchvision_result = bench_torchvision(cfg, device, amp_dtype, channels_last, num_classes, crop, eval_hw,
                                               batch, eval_batch, warmup, steps, images, labels, peak, ignore_index,
                                               model_info)
        ratios = compute_ratios(train, inference, flops, model_info, torchvision_result, device)
    del images, labels
    _free(device)

    result = {
        "schema": SCHEMA,
        "device": device_info(device),
        "versions": versions(),
        "config": cfg,
        "settings": settings,
        "model": model_info,
        "flops": flops,
        "peak": peak,
        "train": train,
        "inference": inference,
        "data": data,
        "micro": micro,
        "torchvision": torchvision_result,
        "ratios": ratios,
        "output": None,
    }
    if cfg.get("output"):
        path = Path(cfg["output"])
        if not path.is_absolute():
            path = Path(run_dir or ".") / path
        path.parent.mkdir(parents=True, exist_ok=True)
        result["output"] = str(path)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if echo:
        print(format_table(result))
    return result


def bench_torchvision(cfg: Mapping, device: torch.device, amp_dtype, channels_last: bool, num_classes: int, crop,
                      eval_hw, batch: int, eval_batch: int, warmup: int, steps: int, images: torch.Tensor,
                      labels: torch.Tensor, peak: Mapping, ignore_index: int, ours: Mapping) -> Dict:
    """torchvision's DeepLabV3 at the same output stride, ASPP rates, shapes and AMP mode."""
    backbone, aux_loss = cfg["backbone"]["name"], bool(cfg["model"]["aux_loss"])
    result = _empty_torchvision()
    def factory(output_stride: int, rates: Sequence[int]) -> Callable[[], nn.Module]:
        return lambda: build_torchvision_deeplabv3(backbone, num_classes, output_stride, aux_loss, rates)

    train_count = count_flops(factory(cfg["os"], ours["aspp_rates"]), crop, backward=True)
    eval_forward = count_flops(factory(cfg["eval_os"], ours["eval_aspp_rates"]), eval_hw)["forward"]
    result["flops"].update(forward_per_image=train_count["forward"], train_per_image=TRAIN_FLOPS_MULTIPLIER *
                           train_count["forward"], train_per_image_counted=train_count["forward_backward"],
                           eval_forward_per_image=eval_forward)
    model = factory(cfg["os"], ours["aspp_rates"])()
    eval_model = factory(cfg["eval_os"], ours["eval_aspp_rates"])()
    official = cfg["os"] == 8 and ours["aspp_rates"] == [12, 24, 36]
    result.update(
        model=f"deeplabv3_{backbone}",
        builder=(f"torchvision.models.segmentation.deeplabv3_{backbone}" if official else
                 f"torchvision.models.{backbone}(replace_stride_with_dilation=...) + IntermediateLayerGetter + "
                 "DeepLabHead + FCNHead"),
        recipe="references/segmentation/train.py: float32 batch .to(device), fp16 autocast + GradScaler (--amp), "
               "SGD momentum 0.9 wd 1e-4, PolynomialLR, loss.item() per step, contiguous (NCHW) memory",
        params=_num_params(model), aspp_rates=aspp_rates(model), eval_aspp_rates=aspp_rates(eval_model),
        dilations=conv3x3_dilations(model.backbone))

    # 1. torchvision's model, trained the way its reference script does.
    model.to(device).train()
    reference_step = torchvision_reference_step(model, device, amp_dtype, aux_loss=aux_loss)
    ref_images, ref_labels = _reference_batch(images, labels)
    result["train"] = bench_train(lambda: reference_step(ref_images, ref_labels), device, warmup, steps, batch,
                                  result["flops"]["train_per_image"], peak["tflops"])
    del reference_step, ref_images, ref_labels
    _free(device)

    # 2. The same model under our TrainStep and memory format: what is left is the model itself.
    model.zero_grad(set_to_none=True)  # the reference leaves the last step's gradients allocated
    _place(model, device, channels_last)
    step, scheduler = make_train_step(model, cfg["train"], make_loss(cfg["train"], ignore_index), device, amp_dtype,
                                      channels_last)

    def same_step():
        step(images, labels)
        scheduler.step()

    same = bench_train(same_step, device, warmup, steps, batch, None, None)
    result["train_same_step"] = {"step_ms": same["step_ms"], "images_per_s": same["images_per_s"]}
    del step, scheduler, model
    _free(device)

    # 3. Inference: same resolution, output stride, ASPP rates, AMP and `segment` call; torchvision's memory format.
    eval_model.to(device)
    result["inference"] = bench_inference(eval_model, device, amp_dtype, eval_hw, eval_batch, warmup, steps,
                                          eval_forward, peak["tflops"])
    del eval_model
    _free(device)
    return result


def compute_ratios(train: Mapping, inference: Mapping, flops: Mapping, model_info: Mapping, tv: Mapping,
                   device: torch.device) -> Dict:
    """ours / torchvision for each figure. Memory ratios are null on the CPU: peak RSS cannot be reset between
    the two models in one process, so the second figure includes the first."""
    cuda = device.type == "cuda"
    return {
        "train_step_ms": _ratio(train["step_ms"], tv["train"]["step_ms"]),
        "train_images_per_s": _ratio(train["images_per_s"], tv["train"]["images_per_s"]),
        "train_wall_images_per_s": _ratio(train["wall_images_per_s"], tv["train"]["wall_images_per_s"]),
        "train_peak_memory_mib": _ratio(train["peak_memory_mib"], tv["train"]["peak_memory_mib"]) if cuda else None,
        "same_step_images_per_s": _ratio(train["images_per_s"], tv["train_same_step"]["images_per_s"]),
        "inference_batch_ms": _ratio(inference["batch_ms"], tv["inference"]["batch_ms"]),
        "inference_images_per_s": _ratio(inference["images_per_s"], tv["inference"]["images_per_s"]),
        "latency_ms": _ratio(inference["latency_ms"], tv["inference"]["latency_ms"]),
        "inference_peak_memory_mib": (_ratio(inference["peak_memory_mib"], tv["inference"]["peak_memory_mib"])
                                      if cuda else None),
        "forward_flops_per_image": _ratio(flops["forward_per_image"], tv["flops"]["forward_per_image"]),
        "eval_forward_flops_per_image": _ratio(flops["eval_forward_per_image"], tv["flops"]["eval_forward_per_image"]),
        "params": _ratio(model_info["params"], tv["params"]),
    }


# --- output -----------------------------------------------------------------------------------------------------

def _fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def format_table(result: Mapping) -> str:
    """The human-readable summary printed on stdout."""
    s, dev, tv, ratios = result["settings"], result["device"], result["torchvision"], result["ratios"]
    train, inf, data, flops, peak = (result["train"], result["inference"], result["data"], result["flops"],
                                     result["peak"])
    memory_note = "CUDA max_memory_allocated" if s["memory"] == "cuda_max_memory_allocated" else \
        "process peak RSS, cumulative"
    lines = [
        f"DeepLabV3 benchmark: {s['backbone']} OS{s['os']} {s['head']}, batch {s['batch_size']}, crop "
        f"{s['crop_size'][0]}x{s['crop_size'][1]}, {s['num_classes']} classes",
        f"device {dev['name']} ({dev['type']}), amp {s['amp_dtype'] or 'off'}, channels_last "
        f"{str(s['channels_last']).lower()}, compile {str(s['compile']).lower()}, warmup {s['warmup']}, "
        f"steps {s['steps']} (medians; timer {s['timer']})",
        f"inference: {s['eval_size'][0]}x{s['eval_size'][1]} at OS{s['eval_os']}, batch {s['eval_batch_size']}; "
        f"peak: {peak['name'] or 'unknown'} {peak['precision']} {_fmt(peak['tflops'], 1)} TFLOP/s",
    ]
    rows: List[Tuple[str, Optional[float], Optional[float], Optional[float], int]] = []

    def row(label, ours, theirs=None, ratio=None, digits=2):
        rows.append((label, ours, theirs, ratio, digits))

    tv_train = tv["train"] if tv else {}
    tv_inf = tv["inference"] if tv else {}
    tv_flops = tv["flops"] if tv else {}
    r = ratios or {}
    row("train step ms (median)", train["step_ms"], tv_train.get("step_ms"), r.get("train_step_ms"))
    row("train images/s", train["images_per_s"], tv_train.get("images_per_s"), r.get("train_images_per_s"), 1)
    row("train images/s (wall)", train["wall_images_per_s"], tv_train.get("wall_images_per_s"),
        r.get("train_wall_images_per_s"), 1)
    if tv:
        row("train images/s, torchvision model in our TrainStep", train["images_per_s"],
            tv["train_same_step"]["images_per_s"],
            r.get("same_step_images_per_s"), 1)
    row("train first step s (compile/autotune)", train["first_step_s"], tv_train.get("first_step_s"))
    row(f"train peak memory MiB ({memory_note})", train["peak_memory_mib"], tv_train.get("peak_memory_mib"),
        r.get("train_peak_memory_mib"), 0)
    row("train TFLOP/s (3x forward)", train["tflops"], tv_train.get("tflops"), None, 3)
    row("train fraction of peak", train["peak_fraction"], tv_train.get("peak_fraction"), None, 3)
    row("inference batch ms (median)", inf["batch_ms"], tv_inf.get("batch_ms"), r.get("inference_batch_ms"))
    row("inference images/s", inf["images_per_s"], tv_inf.get("images_per_s"), r.get("inference_images_per_s"), 1)
    row("inference latency ms (batch 1)", inf["latency_ms"], tv_inf.get("latency_ms"), r.get("latency_ms"))
    row("inference peak memory MiB", inf["peak_memory_mib"], tv_inf.get("peak_memory_mib"),
        r.get("inference_peak_memory_mib"), 0)
    row("inference TFLOP/s", inf["tflops"], tv_inf.get("tflops"), None, 3)
    row("inference fraction of peak", inf["peak_fraction"], tv_inf.get("peak_fraction"), None, 3)
    gflops = lambda v: v / 1e9 if v is not None else None  # noqa: E731
    row("forward GFLOPs / image (train crop)", gflops(flops["forward_per_image"]),
        gflops(tv_flops.get("forward_per_image")), r.get("forward_flops_per_image"), 1)
    row("fwd+bwd GFLOPs / image (counted)", gflops(flops["train_per_image_counted"]),
        gflops(tv_flops.get("train_per_image_counted")), None, 1)
    row("forward GFLOPs / image (eval size, eval OS)", gflops(flops["eval_forward_per_image"]),
        gflops(tv_flops.get("eval_forward_per_image")), r.get("eval_forward_flops_per_image"), 1)
    row("params (M)", result["model"]["params"] / 1e6, tv["params"] / 1e6 if tv else None, r.get("params"), 2)
    if data["samples_per_s"] is not None:
        row(f"data loader samples/s ({data['dataset']}, {data['num_workers']} workers, no model)",
            data["samples_per_s"], digits=1)
        row("real run: share of step time waiting for data", data["wait_share"], digits=3)
        row("real run images/s (loader + TrainStep)", data["run_images_per_s"], digits=1)

    width = max(len(label) for label, *_ in rows) + 2
    header = f"{'figure':<{width}}{'ours':>14}"
    if tv:
        header += f"{'torchvision':>14}{'ours/tv':>10}"
    lines += ["", header, "-" * len(header)]
    for label, ours, theirs, ratio, digits in rows:
        line = f"{label:<{width}}{_fmt(ours, digits):>14}"
        if tv:
            line += f"{_fmt(theirs, digits):>14}{_fmt(ratio, 3):>10}"
        lines.append(line)

    micro = result["micro"]
    if micro["train"]["conv3x3"]:
        for part, what in (("train", "training shape, fwd / fwd+bwd"), ("eval", "inference shape, fwd")):
            shape = micro[part]["shape"]
            cells = []
            for r in micro[part]["conv3x3"]:
                cell = f"d{r['dilation']} {_fmt(r['fwd_ms'], 3)}"
                if r["fwd_bwd_ms"] is not None:
                    cell += f" / {_fmt(r['fwd_bwd_ms'], 3)}"
                if r["dilation"] != 1:
                    cell += f" (x{_fmt(r['fwd_ratio'])}" + (
                        f" / x{_fmt(r['fwd_bwd_ratio'])})" if r["fwd_bwd_ratio"] is not None else ")")
                cells.append(cell)
            lines += ["" if part == "train" else None,
                      f"3x3 conv {shape[1]}->256 on {'x'.join(map(str, shape))} ({what}, ms, x dilation 1): "
                      + "; ".join(cells)]
        lines = [line for line in lines if line is not None]
        pool = micro["image_pool"]
        lines.append(f"image pooling 1x1 -> {pool['shape'][2]}x{pool['shape'][3]} + concat (fwd / fwd+bwd, ms): "
                     f"expand {_fmt(pool['expand_fwd_ms'], 3)} / {_fmt(pool['expand_fwd_bwd_ms'], 3)}; "
                     f"interpolate {_fmt(pool['interpolate_fwd_ms'], 3)} / "
                     f"{_fmt(pool['interpolate_fwd_bwd_ms'], 3)}")
    if tv:
        ours = result["model"]
        lines += ["", f"torchvision: {tv['builder']}",
                  f"ASPP rates {tv['aspp_rates']} (ours {ours['aspp_rates']}); layer4 dilations "
                  f"{tv['dilations']['layer4']} (ours {ours['dilations']['layer4']})"]
    if result.get("output"):
        lines += ["", f"results: {result['output']}"]
    return "\n".join(lines)
