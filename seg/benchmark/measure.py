"""The code under measurement and how it is measured (docs/benchmarks.md says what every figure means): ours (the
trainer's ``TrainStep``, ``segment``, the data loader) and torchvision's DeepLabV3 with its reference training loop.

Times: CUDA events around each call on a GPU (the host keeps queueing work, as in training), ``perf_counter`` on
the CPU; medians. Memory: CUDA ``max_memory_allocated`` since the phase began, or the process's peak RSS on the
CPU (which cannot be reset). FLOPs are counted on the meta device, so nothing is computed.
"""

import gc
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, _deeplabv3_resnet

from seg.data.channels import InputStats
from seg.data.transforms import normalize
from seg.engine.device import autocast
from seg.engine.inference import segment
from seg.engine.losses import make_loss
from seg.engine.optim import build_optimizer
from seg.engine.step import TrainStep
from seg.models.aspp import default_aspp_rates

BACKBONES = ("resnet50", "resnet101")  # torchvision has no DeepLabV3 for resnet18/34 (BasicBlock refuses dilation)
RECIPE = ("references/segmentation/train.py: float32 batch .to(device), fp16 autocast + GradScaler (--amp), "
          "SGD momentum 0.9 wd 1e-4, PolynomialLR, loss.item() per step, contiguous (NCHW) memory")
TRAIN_FLOPS_MULTIPLIER = 3  # training FLOPs per image are quoted as 3x the forward FLOPs (backward ~ 2x forward)
PEAK_TFLOPS = [  # dense (no sparsity) datasheet TFLOP/s; the first row whose words are all in the GPU's name
    ("H100 NVL", "h100 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", "h100 pcie", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 SXM", "h100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("H200 NVL", "h200 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H200 SXM", "h200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 67.0}),
    ("A100", "a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", "l40s", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("V100", "v100", {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7}),
]
# What every timed phase shares (AMP dtype None: full precision; ``peak``: the JSON's ``peak`` section; ``stats``:
# the model's input channels and normalisation).
Setup = NamedTuple("Setup", [
    ("device", torch.device), ("amp_dtype", Optional[torch.dtype]), ("channels_last", bool), ("warmup", int),
    ("steps", int), ("batch", int), ("crop", Tuple[int, int]), ("eval_batch", int), ("eval_hw", Tuple[int, int]),
    ("num_classes", int), ("ignore_index", int), ("peak", Dict), ("stats", InputStats)])


def device_info(device: torch.device) -> Dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    info = {"type": device.type, "name": cpu or platform.processor() or platform.machine(), "capability": None,
            "memory_gib": None, "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2 ** 30)
    return info


def peak_tflops(device: torch.device, amp_dtype: Optional[torch.dtype], override: Optional[float] = None,
                device_name: Optional[str] = None) -> Dict:
    cuda = device.type == "cuda"
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype) or (  # cuDNN may use TF32 by default
        "tf32" if cuda and torch.backends.cudnn.allow_tf32 else "fp32")
    if override is not None:
        return {"name": "config", "precision": precision, "tflops": float(override), "source": "config peak_tflops"}
    name = (device_name or torch.cuda.get_device_name(device) if cuda else "").lower()
    label, _, peaks = next((row for row in PEAK_TFLOPS if all(word in name for word in row[1].split())), (None,) * 3)
    return {"name": label, "precision": precision, "tflops": peaks and peaks[precision],
            "source": label and "NVIDIA datasheet, dense (no sparsity)"}


def fresh(device: torch.device) -> None:
    """Give dropped objects' memory back and restart the peak count, so a phase's memory figure is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_calls(fn: Callable[[], Any], s: Setup, warmup: Optional[int] = None, steps: Optional[int] = None,
               latency: bool = False) -> Tuple[List[float], float]:
    """Times (ms) of ``steps`` calls after ``warmup`` (default: ``s``'s counts), and the synchronised wall time (s) of
    all: CUDA events read after one final synchronisation, or (``latency``, the CPU) a synchronised clock per call."""
    sync = (lambda: torch.cuda.synchronize(s.device)) if s.device.type == "cuda" else (lambda: None)
    for _ in range(s.warmup if warmup is None else warmup):
        fn()
    sync()
    steps, begin, times = s.steps if steps is None else steps, time.perf_counter(), []
    if s.device.type == "cuda" and not latency:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        sync()
        return [start.elapsed_time(end) for start, end in events], time.perf_counter() - begin
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - tick) * 1e3)
    return times, time.perf_counter() - begin


def _throughput(times: List[float], batch: int, flops_per_image: Optional[int], s: Setup) -> Dict:
    images_per_s = batch / (float(np.median(times)) / 1e3)
    tflops = flops_per_image * images_per_s / 1e12 if flops_per_image else None
    memory = (torch.cuda.max_memory_allocated(s.device) / 2 ** 20 if s.device.type == "cuda" else  # RSS: KiB, B (mac)
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** (20 if sys.platform == "darwin" else 10))
    return {"images_per_s": images_per_s, "tflops": tflops, "peak_memory_mib": memory,
            "peak_fraction": tflops / s.peak["tflops"] if tflops and s.peak["tflops"] else None}


def fake_batch(batch: int, hw: Tuple[int, int], s: Setup) -> Tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch as the loader gives it (pinned on CUDA); labels with an ignore border like real masks."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, s.stats.channels, *hw), dtype=torch.uint8, generator=generator)
    wide = s.ignore_index > 255  # more than 255 classes: int32 labels, 65535 = ignore, as TransformedDataset gives
    labels = torch.randint(0, s.num_classes, (batch, *hw), dtype=torch.int32 if wide else torch.uint8,
                           generator=generator)
    labels[:, :2], labels[:, :, :2] = s.ignore_index, s.ignore_index
    return (images.pin_memory(), labels.pin_memory()) if s.device.type == "cuda" else (images, labels)


def train_step(model: nn.Module, train_cfg: Mapping, s: Setup) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One iteration of the trainer's loop: ``TrainStep`` set up as ``Trainer`` sets it up, then the LR schedule
    (poly over a billion iterations, so the learning rate never reaches zero while timing)."""
    optimizer, scheduler, scaler = build_optimizer(model, {**train_cfg, "iters": 10 ** 9}, s.amp_dtype, s.device.type)
    loss = make_loss(train_cfg, s.ignore_index)
    step = TrainStep(model, optimizer, loss, s.device, s.amp_dtype, s.channels_last, scaler, stats=s.stats)
    return lambda images, labels: (step(images, labels), scheduler.step())


def time_train(call: Callable[[], Any], s: Setup, flops_per_image: Optional[int]) -> Dict:
    """The ``train`` figures of ``call``, a training step on ``s.batch`` images; its first call is timed alone
    (torch.compile, cuDNN autotuning, lazy initialisation)."""
    fresh(s.device)
    first = time_calls(call, s, 0, 1, latency=True)[0][0] / 1e3
    times, wall = time_calls(call, s, max(s.warmup - 1, 0))
    p10, median, p90 = map(float, np.percentile(times, (10, 50, 90)))
    return {"step_ms": median, "step_ms_p10": p10, "step_ms_p90": p90, "wall_images_per_s": s.batch * s.steps / wall,
            "first_step_s": first, **_throughput(times, s.batch, flops_per_image, s)}


def time_inference(model: nn.Module, s: Setup, flops_per_image: Optional[int]) -> Dict:
    """``segment`` as ``evaluate`` calls it, on a uint8 batch of ``s.eval_batch`` images (throughput) and on one."""
    def run(images: torch.Tensor) -> torch.Tensor:
        with autocast(s.device.type, s.amp_dtype):
            return segment(model, normalize(images.to(s.device, non_blocking=True), s.stats))

    batch, single = fake_batch(s.eval_batch, s.eval_hw, s)[0], fake_batch(1, s.eval_hw, s)[0]
    fresh(s.device)
    with torch.inference_mode():
        times = time_calls(lambda: run(batch), s)[0]
        latency, latency_p90 = map(float, np.percentile(time_calls(lambda: run(single), s, latency=True)[0], (50, 90)))
    return {"batch_size": s.eval_batch, "batch_ms": float(np.median(times)), "latency_ms": latency,
            "latency_ms_p90": latency_p90, **_throughput(times, s.eval_batch, flops_per_image, s)}


def time_loader(loader, warmup: int, batches: int, s: Setup, step: Callable = lambda *batch: None) -> Tuple:
    """``warmup`` (at least one) then ``batches`` batches of ``loader``, each fed to ``step``: the first batch's time
    (worker start-up), the host time blocked in ``next`` over the ``batches`` and their synchronised wall time (s)."""
    iterator, waits = iter(loader), []

    def call() -> None:
        tick = time.perf_counter()
        batch = next(iterator)
        waits.append(time.perf_counter() - tick)
        step(*batch)

    wall = time_calls(call, s, warmup, batches)[1]
    return waits[0], sum(waits[warmup:]), wall


def _aspp(model: nn.Module) -> Optional[nn.Module]:
    """Ours / torchvision's DeepLabHead's ASPP (DeepLab v2's ASPP-L too); ``None`` for a head without one (LR-ASPP,
    the cascaded model)."""
    if hasattr(model, "aspp"):
        return model.aspp
    return model.classifier[0] if isinstance(model.classifier, nn.Sequential) else None


def _stages(backbone: nn.Module) -> Dict[str, List[nn.Module]]:
    """The stages an output stride strides or dilates: a ResNet's layer2-4, MobileNetV3's C2-C4 (``stages()``);
    the top-level parts of a timm encoder's feature network."""
    if hasattr(backbone, "stages"):
        return backbone.stages()
    if all(hasattr(backbone, stage) for stage in ("layer2", "layer3", "layer4")):
        return {stage: [getattr(backbone, stage)] for stage in ("layer2", "layer3", "layer4")}
    return {name: [part] for name, part in getattr(backbone, "body", backbone).named_children()}


def structure(model: nn.Module) -> Dict:
    """The ASPP rates (null without an ASPP) and the dilation of every spatial (k x k, k > 1) convolution of the
    strided or dilated stages, in order (a BasicBlock unit has two); for a timm encoder, of each part of its
    feature network that has one; the cascaded model's block5+ after them."""
    aspp = _aspp(model)
    stages = {**_stages(model.backbone),
              **{name: [block] for name, block in getattr(model, "cascade", nn.Sequential()).named_children()}}
    dilations = {stage: [m.dilation[0] for block in blocks for m in block.modules()
                         if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
                 for stage, blocks in stages.items()}
    rates = (None if aspp is None else aspp.get_rates() if hasattr(aspp, "get_rates")  # ours (DeepLab v2's: four)
             else [aspp.convs[i][0].dilation[0] for i in (1, 2, 3)])  # torchvision's
    return {"aspp_rates": rates,
            "dilations": {name: rates for name, rates in dilations.items() if rates}}


def count_flops(model: nn.Module, batch: int, hw: Tuple[int, int], backward: bool = False, channels: int = 3) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(backward):
        outputs = model(torch.zeros(batch, channels, *hw, device="meta"))
        if backward:
            sum(v.float().sum() for v in outputs.values()).backward()
    return int(counter.get_total_flops())


def describe(train_model: Callable[[], nn.Module], eval_model: Callable[[], nn.Module], s: Setup) -> Tuple[Dict, Dict]:
    """The ``model`` and ``flops`` sections of the models these build (on the meta device) for training and inference.
    FLOPs per image: forward at batch 1, forward + backward at batch 2 (torchvision's pooling cannot train on one)."""
    with torch.device("meta"):
        train, evaluation = train_model(), eval_model()
    shapes = []
    for aspp in (_aspp(train), _aspp(evaluation)):
        if aspp is not None:
            aspp.register_forward_pre_hook(lambda _m, args: shapes.append(list(args[0].shape[1:])))
    channels = s.stats.channels
    forward = count_flops(train.eval(), 1, s.crop, channels=channels)
    eval_forward = count_flops(evaluation.eval(), 1, s.eval_hw, channels=channels)
    info = {"params": sum(p.numel() for p in train.parameters()), **structure(train),
            "eval_aspp_rates": structure(evaluation)["aspp_rates"],
            "aspp_input_shape": [s.batch, *shapes[0]] if shapes else None,
            "eval_aspp_input_shape": [s.eval_batch, *shapes[1]] if shapes else None}
    flops = {"forward_per_image": forward, "train_per_image": TRAIN_FLOPS_MULTIPLIER * forward,
             "train_multiplier": TRAIN_FLOPS_MULTIPLIER, "eval_forward_per_image": eval_forward,
             "train_per_image_counted": count_flops(train.train(), 2, s.crop, True, channels) // 2}
    return info, flops


def time_micro(model: Mapping, s: Setup) -> Dict:
    """The ``micro`` section on the ASPP input shapes of ``model`` (the ``model`` section), in the AMP dtype and
    memory format. The pooling branch is brought to the feature size by ``expand`` (a broadcast view, as
    ``seg/models/aspp.py`` does) or by ``F.interpolate`` (torchvision's ``ASPPPooling``)."""
    dtype, layout = s.amp_dtype or torch.float32, torch.channels_last if s.channels_last else torch.contiguous_format

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=s.device, dtype=dtype).contiguous(memory_format=layout)

    def ms(fn: Callable, inputs: Sequence[torch.Tensor], grad: Optional[torch.Tensor] = None, params=()) -> float:
        if grad is None:
            with torch.inference_mode():
                return float(np.median(time_calls(lambda: fn(*inputs), s)[0]))
        leaves = [x.detach().requires_grad_() for x in inputs]
        return float(np.median(time_calls(lambda: torch.autograd.grad(fn(*leaves), (*leaves, *params), grad), s)[0]))

    result = {}
    for part, prefix in (("train", ""), ("eval", "eval_")):  # a 3x3 conv C -> 256; backward at the training shape
        (n, c, h, w), rows = model[f"{prefix}aspp_input_shape"], []
        x, grad = randn(n, c, h, w), randn(n, 256, h, w) if part == "train" else None
        for dilation in [1, *model[f"{prefix}aspp_rates"]]:
            conv = nn.Conv2d(c, 256, 3, padding=dilation, dilation=dilation, bias=False)
            conv.to(s.device, dtype, memory_format=layout)
            fwd, both = ms(conv, [x]), ms(conv, [x], grad, [conv.weight]) if grad is not None else None
            dense = rows[0] if rows else {"fwd_ms": fwd, "fwd_bwd_ms": both}
            rows.append({"dilation": dilation, "fwd_ms": fwd, "fwd_bwd_ms": both, "fwd_ratio": fwd / dense["fwd_ms"],
                         "fwd_bwd_ratio": both / dense["fwd_bwd_ms"] if grad is not None else None})
        result[part] = {"shape": [n, c, h, w], "dtype": str(dtype).removeprefix("torch."), "conv3x3": rows}
    n, _, h, w = model["aspp_input_shape"]
    inputs, grad = [randn(n, 4 * 256, h, w), randn(n, 256, 1, 1)], randn(n, 5 * 256, h, w)  # four branches, pooled
    pool = result["image_pool"] = {"shape": [n, 256, h, w]}
    for name, concat in (("expand", lambda others, pooled: torch.cat([others, pooled.expand(-1, -1, h, w)], 1)),
                         ("interpolate", lambda others, pooled: torch.cat([others, F.interpolate(
                             pooled, size=(h, w), mode="bilinear", align_corners=False)], 1))):
        pool[f"{name}_fwd_ms"], pool[f"{name}_fwd_bwd_ms"] = ms(concat, inputs), ms(concat, inputs, grad)
    return result


def build_torchvision_deeplabv3(backbone: str, num_classes: int, output_stride: int, aux_loss: bool,
                                rates: Optional[Sequence[int]] = None) -> nn.Module:
    """No weights: torchvision's own assembly (what ``deeplabv3_resnet50/101`` run) of its ResNet at
    ``output_stride`` (``replace_stride_with_dilation``), with the ASPP at ``rates`` (default: ours for the stride)."""
    replace = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    model = _deeplabv3_resnet(getattr(resnet, backbone)(weights=None, replace_stride_with_dilation=replace),
                              num_classes, aux_loss)
    model.classifier = DeepLabHead(2048, num_classes, atrous_rates=list(rates or default_aspp_rates(output_stride)))
    return model


def torchvision_reference_step(model: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype],
                               aux_loss: bool = False, lr: float = 0.01) -> Callable[..., float]:
    """``train_one_epoch`` of torchvision's ``references/segmentation/train.py`` (``RECIPE``), the aux head at 10x LR;
    under bf16 autocast (not a reference option) without a GradScaler."""
    parts = [(model.backbone, lr), (model.classifier, lr)] + ([(model.aux_classifier, lr * 10)] if aux_loss else [])
    optimizer = torch.optim.SGD([{"params": [p for p in part.parameters() if p.requires_grad], "lr": part_lr}
                                 for part, part_lr in parts], lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10 ** 9, power=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # disabled: plain backward/step

    def step(image: torch.Tensor, target: torch.Tensor) -> float:
        image, target = image.to(device), target.to(device)
        with autocast(device.type, amp_dtype):
            losses = {name: F.cross_entropy(x, target, ignore_index=255) for name, x in model(image).items()}
            loss = losses["out"] + 0.5 * losses["aux"] if "aux" in losses else losses["out"]
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        return loss.item()

    return step
