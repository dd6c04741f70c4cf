"""VainF/DeepLabV3Plus-Pytorch's MobileNetV2 models (deeplabv3_mobilenet, deeplabv3plus_mobilenet): recognised, built
as its architecture (seg/models/mobilenet_v2.py) and giving its logits. The reference is its source re-written in
tests/vainf_reference.py (its own MobileNetV2, padding included); its ResNet models are tested in test_peers.py."""

import pytest
import torch
from helpers import compose_config, tiny_overrides
from test_peers import assert_evaluates_and_exports, assert_same_logits, randomised, vainf_main_checkpoint
from torchvision.models import mobilenet_v2
from vainf_reference import convert_to_separable_conv, vainf_model

from seg.config import model_kwargs
from seg.engine.trainer import train
from seg.models import build_model, model_from_file
from seg.models.layouts import recognise
from seg.models.weights import WeightsError


@pytest.mark.parametrize("head", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_vainf_mobilenet_state_dict_logits(tmp_path, head, output_stride):
    theirs = randomised(vainf_model(head, "mobilenet", 5, output_stride))
    path = tmp_path / f"best_{head}_mobilenet_voc_os{output_stride}.pth"
    torch.save(theirs.state_dict(), path)
    # the file does not record its stride: built at VainF's default 16, switched to 8 by os=
    ours, report = model_from_file(path, output_stride=None if output_stride == 16 else output_stride)
    assert report.layout == f"VainF DeepLabV3{'+' if head == 'deeplabv3plus' else ''} MobileNetV2 (state dict)"
    assert len(report.loaded) == len(ours.state_dict()) == len(theirs.state_dict())
    assert ours.output_stride == output_stride
    for size in ((65, 57), (64, 64)):  # odd and even sizes: the unpadded stem and the blocks' padding both show
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert_same_logits(ours(x)["out"], theirs(x))


def test_vainf_mobilenet_main_py_checkpoint(tmp_path):
    theirs = randomised(vainf_model("deeplabv3plus", "mobilenet", 3, 16), seed=1)
    path = tmp_path / "best_deeplabv3plus_mobilenet_voc_os16.pth"
    vainf_main_checkpoint(theirs, path)
    ours, report = model_from_file(path)
    assert report.layout == "VainF DeepLabV3+ MobileNetV2 (main.py checkpoint)"
    assert recognise(torch.load(path, weights_only=False)).preset == "vainf_deeplabv3plus_mobilenet"
    x = torch.randn(1, 3, 97, 70)
    with torch.no_grad():
        assert_same_logits(ours(x)["out"], theirs(x))


def test_vainf_mobilenet_evaluates_and_exports(tmp_path, data_root):
    theirs = randomised(vainf_model("deeplabv3plus", "mobilenet", 6, 16), seed=2)
    path = tmp_path / "vainf_mobilenet.pth"
    torch.save(theirs.state_dict(), path)
    assert_evaluates_and_exports(path, theirs, tmp_path, data_root)


def test_vainf_mobilenet_takes_torchvision_imagenet_weights(tmp_path):
    """VainF's backbone loads torchvision's mobilenet_v2 ImageNet file: so does this encoder (a path here, no hub)."""
    classification = mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(classification.state_dict(), path)
    model = build_model("vainf_mobilenetv2", 3, multi_grid=None, pretrained=str(path))
    theirs = classification.features.state_dict()
    ours = model.backbone.state_dict()
    assert len(ours) == len(theirs) - len([k for k in theirs if k.startswith("18.")])
    assert all(torch.equal(value, theirs[key]) for key, value in ours.items())


def test_vainf_mobilenet_refuses_a_multi_grid():
    with pytest.raises(ValueError, match="multi_grid must be null for backbone vainf_mobilenetv2"):
        build_model("vainf_mobilenetv2", 3)


def test_vainf_mobilenet_preset_fine_tunes_from_its_file(tmp_path, data_root):
    """model=vainf_deeplabv3plus_mobilenet builds VainF's architecture and model.weights=<its file> fills all of it
    (a new classifier for the synthetic dataset's 6 classes)."""
    path = tmp_path / "best_deeplabv3plus_mobilenet_voc_os16.pth"
    theirs = randomised(vainf_model("deeplabv3plus", "mobilenet", 21, 16))
    torch.save(theirs.state_dict(), path)
    cfg = compose_config("train", tiny_overrides(data_root, **{
        "model": "vainf_deeplabv3plus_mobilenet", "model.weights": path, "train.iters": 1, "train.eval_every": 0,
        "train.ckpt_every": 1, "train.lr": 1e-12}))
    train(cfg, tmp_path / "run")
    ours, report = model_from_file(tmp_path / "run" / "checkpoints" / "last.pt")
    assert report.layout.startswith("seg checkpoint") and ours.backbone.out_channels == 320
    converted = {k[len("backbone."):]: v for k, v in recognise(theirs.state_dict()).state.items()
                 if k.startswith("backbone.")}
    assert all(torch.allclose(value, converted[key], atol=1e-6) for key, value in ours.backbone.state_dict().items()
               if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.parametrize("backbone, encoder", [("mobilenet", "MobileNetV2"), ("resnet50", "ResNet-50")])
def test_vainf_separable_conv(tmp_path, backbone, encoder):
    """main.py --separable_conv: the v3+ head's 3x3 convs as depthwise + pointwise without BN between."""
    theirs = vainf_model("deeplabv3plus", backbone, 4, 16)
    convert_to_separable_conv(theirs.classifier)
    theirs = randomised(theirs, seed=3)
    path = tmp_path / f"best_deeplabv3plus_{backbone}_voc_os16.pth"
    vainf_main_checkpoint(theirs, path)
    ours, report = model_from_file(path)
    assert report.layout == f"VainF DeepLabV3+ {encoder} --separable_conv (main.py checkpoint)"
    assert len(report.loaded) == len(ours.state_dict()) == len(theirs.state_dict())
    x = torch.randn(1, 3, 65, 57)
    with torch.no_grad():
        assert_same_logits(ours(x)["out"], theirs(x))
    # the command docs/peers.md gives builds it: the plain preset and two keys
    record = recognise(theirs.state_dict())
    cfg = compose_config("train", [f"model=vainf_deeplabv3plus_{backbone}", "model.separable_convs=true",
                                   "model.depthwise_bn_relu=false"])
    assert model_kwargs(cfg, 4, "none") == {**model_kwargs(cfg, 0, "none"), **record.arguments, "pretrained": "none"}


@pytest.mark.parametrize("key, name", [("backbone.block12.rep.1.conv1.weight", "Xception"),
                                       ("backbone.transition1.0.0.weight", "HRNetV2")])
def test_vainf_backbones_not_built_are_named(tmp_path, key, name):
    """VainF's Xception and HRNet files (its heads on a backbone this project does not build): a one-line error
    naming them, not "unknown file". The file: a v3+ MobileNet file whose backbone keys are swapped for theirs."""
    state = {k: v for k, v in vainf_model("deeplabv3plus", "mobilenet", 3, 16).state_dict().items()
             if not k.startswith("backbone.")}
    path = tmp_path / f"best_deeplabv3plus_{name.lower()}_voc_os16.pth"
    torch.save({**state, key: torch.zeros(8, 8, 3, 3)}, path)
    with pytest.raises(WeightsError, match=rf"a VainF DeepLabV3\+ {name} file: this project builds VainF's models "
                                           r"on ResNet-50/101 and MobileNetV2 only \(docs/peers.md\)"):
        model_from_file(path)
