"""``compare=torchvision``: torchvision's DeepLabV3 built by torchvision's own code path, trained as its reference
script trains it, and benchmarked with the same phases, shapes and AMP mode as ours."""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet, segmentation
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from seg.benchmark.measure import Setup, describe, fake_batch, time_inference, time_train, train_step
from seg.data.transforms import normalize
from seg.engine.device import autocast, place
from seg.models.aspp import default_aspp_rates

BACKBONES = ("resnet50", "resnet101")  # torchvision has no DeepLabV3 for resnet18/34 (BasicBlock refuses dilation)
RECIPE = ("references/segmentation/train.py: float32 batch .to(device), fp16 autocast + GradScaler (--amp), "
          "SGD momentum 0.9 wd 1e-4, PolynomialLR, loss.item() per step, contiguous (NCHW) memory")


def build_torchvision_deeplabv3(backbone: str, num_classes: int, output_stride: int, aux_loss: bool,
                                rates: Optional[Sequence[int]] = None) -> nn.Module:
    """torchvision's DeepLabV3 at ``output_stride``, no weights loaded: ``deeplabv3_resnet50/101`` itself at OS8 with
    rates 12, 24, 36 (what it is by construction), else the same pieces: torchvision's ResNet with
    ``replace_stride_with_dilation``, ``IntermediateLayerGetter``, ``DeepLabHead`` with the rates, ``FCNHead``."""
    if backbone not in BACKBONES:
        raise ValueError(f"torchvision has no DeepLabV3 for {backbone!r}, only for {list(BACKBONES)}")
    rates = list(rates) if rates else default_aspp_rates(output_stride)
    if output_stride == 8 and rates == [12, 24, 36]:
        return getattr(segmentation, f"deeplabv3_{backbone}")(weights=None, weights_backbone=None,
                                                               num_classes=num_classes, aux_loss=aux_loss)
    replace = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
    body = IntermediateLayerGetter(getattr(resnet, backbone)(weights=None, replace_stride_with_dilation=replace),
                                   return_layers={"layer4": "out", **({"layer3": "aux"} if aux_loss else {})})
    aux = FCNHead(1024, num_classes) if aux_loss else None
    return DeepLabV3(body, DeepLabHead(2048, num_classes, atrous_rates=rates), aux)


def torchvision_reference_step(model: nn.Module, device: torch.device, amp_dtype: Optional[torch.dtype],
                               aux_loss: bool = False, lr: float = 0.01) -> Callable[..., float]:
    """``train_one_epoch`` of torchvision's ``references/segmentation/train.py``: the batch copied with
    ``.to(device)``, autocast with a GradScaler for fp16 (its ``--amp``; bf16, not a reference option, without),
    CE(out) + 0.5 CE(aux), ``optimizer.zero_grad()``, plain SGD (momentum 0.9, weight decay 1e-4 on every
    parameter, the aux head at 10x LR), ``PolynomialLR`` every iteration and ``loss.item()`` (one host sync)."""
    def trainable(part: nn.Module) -> Dict:
        return {"params": [p for p in part.parameters() if p.requires_grad]}

    groups = [trainable(model.backbone), trainable(model.classifier)]
    if aux_loss:
        groups.append({**trainable(model.aux_classifier), "lr": lr * 10})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-4)
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


def bench_torchvision(cfg: Mapping, s: Setup, ours: Mapping) -> Dict:
    """torchvision's model at our output strides and ASPP rates (``ours``: our ``model`` section), shapes and AMP:
    trained by its reference recipe (``train``), the same model in our ``TrainStep`` and memory format
    (``train_same_step``: what is left between it and ours is the model itself), and inference."""
    backbone, aux_loss = cfg["backbone"]["name"], bool(cfg["model"]["aux_loss"])

    def factory(output_stride: int, rates: Sequence[int]) -> Callable[[], nn.Module]:
        return lambda: build_torchvision_deeplabv3(backbone, s.num_classes, output_stride, aux_loss, rates)

    train_model, eval_model = factory(cfg["os"], ours["aspp_rates"]), factory(cfg["eval_os"], ours["eval_aspp_rates"])
    info, flops = describe(train_model, eval_model, s)
    official = cfg["os"] == 8 and ours["aspp_rates"] == [12, 24, 36]
    result = {"model": f"deeplabv3_{backbone}", "recipe": RECIPE, "flops": flops, "builder": (
        f"torchvision.models.segmentation.deeplabv3_{backbone}" if official else f"torchvision.models.{backbone}"
        "(replace_stride_with_dilation=...) + IntermediateLayerGetter + DeepLabHead + FCNHead"),
        **{key: info[key] for key in ("params", "aspp_rates", "eval_aspp_rates", "dilations")}}

    model, (images, labels) = train_model().to(s.device).train(), fake_batch(s.batch, s.crop, s)
    reference = torchvision_reference_step(model, s.device, s.amp_dtype, aux_loss)
    # What the reference's loader yields: float32 normalised images and int64 targets in pageable memory.
    batch = normalize(images.cpu()).contiguous(), labels.cpu().long()
    result["train"] = time_train(lambda: reference(*batch), s, flops["train_per_image"])
    reference = batch = None  # free the reference's optimizer before ours runs
    model.zero_grad(set_to_none=True)  # the reference leaves the last step's gradients allocated
    iteration = train_step(place(model, s.device, s.channels_last), cfg["train"], s)
    same = time_train(lambda: iteration(images, labels), s, None)
    result["train_same_step"] = {"step_ms": same["step_ms"], "images_per_s": same["images_per_s"]}
    model = iteration = None
    # The same ``segment`` call, resolution, output stride and AMP; torchvision's own (NCHW) memory format.
    result["inference"] = time_inference(eval_model().to(s.device).eval(), s, flops["eval_forward_per_image"])
    return result
