"""The comparison with torchvision: its DeepLabV3 built by its own code path, trained as its reference script
trains it, and benchmarked with the same phases, shapes and AMP mode as ours."""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from seg.benchmark.measure import bench_inference, bench_train, make_train_step
from seg.benchmark.model_info import aspp_rates, conv3x3_dilations, count_flops, num_params
from seg.benchmark.schema import TRAIN_FLOPS_MULTIPLIER, empty_torchvision
from seg.benchmark.timing import free
from seg.engine.device import place
from seg.engine.losses import make_loss
from seg.errors import UserError
from seg.models.aspp import default_aspp_rates

TORCHVISION_BACKBONES = ("resnet50", "resnet101")


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


def bench_torchvision(cfg: Mapping, device: torch.device, amp_dtype, channels_last: bool, num_classes: int, crop,
                      eval_hw, batch: int, eval_batch: int, warmup: int, steps: int, images: torch.Tensor,
                      labels: torch.Tensor, peak: Mapping, ignore_index: int, ours: Mapping) -> Dict:
    """torchvision's DeepLabV3 at the same output stride, ASPP rates, shapes and AMP mode."""
    backbone, aux_loss = cfg["backbone"]["name"], bool(cfg["model"]["aux_loss"])
    result = empty_torchvision()
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
        params=num_params(model), aspp_rates=aspp_rates(model), eval_aspp_rates=aspp_rates(eval_model),
        dilations=conv3x3_dilations(model.backbone))

    # 1. torchvision's model, trained the way its reference script does.
    model.to(device).train()
    reference_step = torchvision_reference_step(model, device, amp_dtype, aux_loss=aux_loss)
    ref_images, ref_labels = _reference_batch(images, labels)
    result["train"] = bench_train(lambda: reference_step(ref_images, ref_labels), device, warmup, steps, batch,
                                  result["flops"]["train_per_image"], peak["tflops"])
    del reference_step, ref_images, ref_labels
    free(device)

    # 2. The same model under our TrainStep and memory format: what is left is the model itself.
    model.zero_grad(set_to_none=True)  # the reference leaves the last step's gradients allocated
    place(model, device, channels_last)
    step, scheduler = make_train_step(model, cfg["train"], make_loss(cfg["train"], ignore_index), device, amp_dtype,
                                      channels_last)

    def same_step():
        step(images, labels)
        scheduler.step()

    same = bench_train(same_step, device, warmup, steps, batch, None, None)
    result["train_same_step"] = {"step_ms": same["step_ms"], "images_per_s": same["images_per_s"]}
    del step, scheduler, model
    free(device)

    # 3. Inference: same resolution, output stride, ASPP rates, AMP and `segment` call; torchvision's memory format.
    eval_model.to(device)
    result["inference"] = bench_inference(eval_model, device, amp_dtype, eval_hw, eval_batch, warmup, steps,
                                          eval_forward, peak["tflops"])
    del eval_model
    free(device)
    return result
