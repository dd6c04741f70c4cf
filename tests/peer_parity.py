"""The parity table of docs/peers.md: ``python -m tests.peer_parity`` (CPU, about a minute).

Each peer model is built by the peer's code (torchvision) or its re-write from source (tests/vainf_reference.py)
with random weights and BatchNorm statistics, saved to a file, loaded with ``seg.models.model_from_file``, and run
on the same 129x97 image; the table gives the largest absolute logit difference and that difference relative
to the largest logit magnitude.
"""

import tempfile
from pathlib import Path

import torch
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

from seg.models import model_from_file
from tests.test_peers import randomised
from tests.vainf_reference import vainf_model


def cases():
    for head in ("deeplabv3", "deeplabv3plus"):
        for backbone in ("resnet50", "resnet101"):
            for stride in (16, 8):
                yield (f"VainF {head}_{backbone}, output stride {stride}",
                       lambda h=head, b=backbone, s=stride: vainf_model(h, b, 21, s), stride)
    for builder in (deeplabv3_resnet50, deeplabv3_resnet101):
        yield (f"torchvision {builder.__name__}(aux_loss=True)",
               lambda b=builder: b(weights=None, weights_backbone=None, num_classes=21, aux_loss=True), None)


def main() -> None:
    print("| peer model | recognised as | tensors | max abs diff | relative to max logit |")
    print("|---|---|---|---|---|")
    image = torch.randn(1, 3, 129, 97, generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "peer.pth"
        for name, make, stride in cases():
            theirs = randomised(make())
            torch.save(theirs.state_dict(), path)
            ours, report = model_from_file(path, output_stride=stride)
            with torch.no_grad():
                a, b = ours(image)["out"], theirs(image)
            b = b["out"] if isinstance(b, dict) else b
            diff, scale = (a - b).abs().max().item(), b.abs().max().item()
            print(f"| {name} | {report.layout} | {len(report.loaded)} | {diff:.2g} | {diff / scale:.2g} |")


if __name__ == "__main__":
    main()
