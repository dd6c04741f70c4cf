"""The parity table of docs/peers.md: ``python tests/peer_parity.py`` (CPU, about a minute).

Each peer model is built by the peer's code (torchvision) or its re-write from source (tests/vainf_reference.py,
tests/mmseg_reference.py) or smp's own code
with random weights and BatchNorm statistics, saved to a file (smp's timm-encoder model: the folder its
``save_pretrained`` writes), loaded with ``seg.models.model_from_file``, and run on the same 129x97 image (smp's
models: 128x96, since smp refuses sizes its output stride does not divide); the table gives the largest absolute
logit difference and that difference relative to the largest logit magnitude.
"""

import tempfile
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from mmseg_reference import EncoderDecoder
from mmseg_reference import randomised as mmseg_randomised
from test_layout_mmseg import D16_MG124_CONFIG
from test_peers import randomised
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
    lraspp_mobilenet_v3_large,
)
from vainf_reference import convert_to_separable_conv, vainf_model

from seg.models import model_from_file


def cases():
    for head in ("deeplabv3", "deeplabv3plus"):
        for backbone in ("resnet50", "resnet101", "mobilenet"):
            for stride in (16, 8):
                yield (f"VainF {head}_{backbone}, output stride {stride}",
                       lambda h=head, b=backbone, s=stride: vainf_model(h, b, 21, s), stride)
    for backbone in ("resnet101", "mobilenet"):
        yield (f"VainF deeplabv3plus_{backbone} --separable_conv, output stride 16",
               lambda b=backbone: separable(vainf_model("deeplabv3plus", b, 21, 16)), None)
    for builder in (deeplabv3_resnet50, deeplabv3_resnet101):
        yield (f"torchvision {builder.__name__}(aux_loss=True)",
               lambda b=builder: b(weights=None, weights_backbone=None, num_classes=21, aux_loss=True), None)
    for builder in (deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large):
        yield f"torchvision {builder.__name__}", lambda b=builder: b(weights=None, weights_backbone=None), None
    for plus in (False, True):
        for depth in (18, 50, 101):
            yield (f"mmsegmentation deeplabv3{'plus' if plus else ''}_r{depth}-d8 (re-written, with aux)",
                   lambda p=plus, d=depth: mmseg_randomised(EncoderDecoder(d, 21, plus=p, aux=True), 0), None)
        yield (f"mmsegmentation deeplabv3{'plus' if plus else ''}_r101-d16-mg124 (re-written, with aux)",
               lambda p=plus: mmseg_randomised(EncoderDecoder(101, 21, plus=p, aux=True, d16_mg124=True), 0), None)
    for builder in (smp.DeepLabV3, smp.DeepLabV3Plus):
        for encoder in ("resnet50", "resnet101", "tu-mobilenetv3_large_100"):
            yield (f"smp {builder.__name__}(encoder_name={encoder!r}, classes=21)",
                   lambda b=builder, e=encoder: b(encoder_name=e, encoder_weights=None, classes=21), None)


def separable(model):
    convert_to_separable_conv(model.classifier)  # main.py --separable_conv
    return model


def main() -> None:
    print("| peer model | recognised as | tensors | max abs diff | relative to max logit |")
    print("|---|---|---|---|---|")
    image = torch.randn(1, 3, 129, 97, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as folder:
        for name, make, stride in cases():
            theirs = make() if "mmseg" in name else randomised(make())
            path = Path(folder) / name.split("(")[0].replace(" ", "_")
            if "tu-" in name:
                theirs.save_pretrained(path)  # a plain state dict does not name the timm model
            elif "d16" in name:  # its strides are in the config mmseg keeps in the checkpoint
                path = path.with_suffix(".pth")
                head = "DepthwiseSeparableASPPHead" if "plus" in name else "ASPPHead"
                torch.save({"meta": {"config": D16_MG124_CONFIG.replace("{head}", head)},
                            "state_dict": theirs.state_dict()}, path)
            else:
                path = path.with_suffix(".pth")
                torch.save(theirs.state_dict(), path)
            ours, report = model_from_file(path, output_stride=stride)
            image = image[..., :128, :96] if name.startswith("smp") else image
            with torch.no_grad():
                a, b = ours(image)["out"], theirs(image)
            b = b["out"] if isinstance(b, dict) else b[0] if isinstance(b, tuple) else b
            diff, scale = (a - b).abs().max().item(), b.abs().max().item()
            print(f"| {name} | {report.layout} | {len(report.loaded)} | {diff:.2g} | {diff / scale:.2g} |")


if __name__ == "__main__":
    main()
