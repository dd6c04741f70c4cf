"""torchvision's MobileNetV3-Large encoder, LR-ASPP, and torchvision's segmentation state dicts on them."""

import pytest
import torch
from helpers import compose_config
from torch import nn
from torchvision.models import mobilenet_v3_large, mobilenetv3
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, lraspp_mobilenet_v3_large

from seg.config import ConfigError, model_kwargs, validate_train
from seg.engine.trainer import train
from seg.models import build_model, load_weights, model_from_file
from seg.models.layouts import torchvision_mobilenet

NAME = "mobilenet_v3_large"


def mobilenet(num_classes=3, **kwargs):
    return build_model(NAME, num_classes, multi_grid=None, **kwargs)


def spatial_convs(blocks):
    """(stride, dilation, padding) of every convolution with a kernel above 1x1, in order."""
    return [(m.stride[0], m.dilation[0], m.padding[0]) for m in blocks.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]


def randomise_batch_norm(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_os16_is_torchvisions_dilated_encoder():
    """OS16 equals torchvision's ``mobilenet_v3_large(dilated=True)``, the segmentation models' encoder."""
    ours = mobilenet(output_stride=16).backbone
    assert spatial_convs(ours) == spatial_convs(mobilenet_v3_large(weights=None, dilated=True).features)
    assert (ours.low_level_channels, ours.aux_channels, ours.out_channels) == (24, 40, 960)


@pytest.mark.parametrize("output_stride, c3, c4", [(32, (2, 1), (2, 1)), (16, (2, 1), (1, 2)), (8, (1, 2), (1, 4))])
def test_output_strides(output_stride, c3, c4):
    model = mobilenet(output_stride=output_stride).eval()
    stages = model.backbone.stages()
    for name, (stride, rate) in (("C3", c3), ("C4", c4)):
        convs = [conv for block in stages[name] for conv in spatial_convs(block)]
        assert convs[0][0] == stride and all(s == 1 for s, _, _ in convs[1:]), name
        assert all(d == rate for _, d, _ in convs), name
    with torch.no_grad():
        low, mid, high = model.backbone(torch.randn(1, 3, 64, 96))
    assert low.shape == (1, 24, 16, 24) and mid.shape == (1, 40, 8, 12)
    assert high.shape == (1, 960, 64 // output_stride, 96 // output_stride)


@pytest.mark.parametrize("head", ["deeplabv3", "lraspp"])
def test_output_stride_switch_keeps_parameters(head):
    model = mobilenet(head=head).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = spatial_convs(model)
    model.set_output_stride(8)
    assert model.output_stride == 8 and spatial_convs(model) == spatial_convs(mobilenet(head=head, output_stride=8))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 71))["out"].shape == (1, 3, 65, 71)
    model.set_output_stride(16)
    assert spatial_convs(model) == layout
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("head", ["deeplabv3plus", "lraspp"])
@pytest.mark.parametrize("batch", [1, 2])
def test_train_step(head, batch):
    model = mobilenet(4, head=head, aux_loss=head != "lraspp").train()
    out = model(torch.randn(batch, 3, 64, 64))
    assert out["out"].shape == (batch, 4, 64, 64)
    (out["out"].logsumexp(1).mean() + (out["aux"].mean() if "aux" in out else 0)).backward()
    assert torch.isfinite(model.backbone[0][0].weight.grad).all() and model.backbone[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("build, kwargs", [
    (deeplabv3_mobilenet_v3_large, {"aux_loss": True}),
    (deeplabv3_mobilenet_v3_large, {"aux_loss": False}),
    (lraspp_mobilenet_v3_large, {}),
])
def test_torchvision_state_dicts_load_whole_with_logits_parity(build, kwargs, tmp_path):
    torch.manual_seed(0)
    theirs = randomise_batch_norm(build(weights=None, weights_backbone=None, num_classes=7, **kwargs)).eval()
    state = theirs.state_dict()
    arguments = torchvision_mobilenet.recognise(state).arguments
    assert arguments["num_classes"] == 7 and arguments["aux_loss"] == kwargs.get("aux_loss", False)
    report = load_weights(build_model(**arguments).eval(), state)
    assert not report.missing and not report.unexpected and not report.skipped
    torch.save(state, tmp_path / "torchvision.pth")
    ours, report = model_from_file(tmp_path / "torchvision.pth")
    assert report.layout.startswith(f"torchvision {arguments['head']}_mobilenet_v3_large")
    assert set(torchvision_mobilenet.convert(state)) == set(ours.state_dict())
    x = torch.randn(2, 3, 67, 61)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.keys() == b.keys()
    for key in a:
        scale = b[key].abs().max()
        assert (a[key] - b[key]).abs().max() <= 1e-4 * scale, key


def test_recognise_only_torchvisions_mobilenet_models():
    assert torchvision_mobilenet.recognise(deeplabv3_resnet50(weights=None, weights_backbone=None).state_dict()) is None
    assert torchvision_mobilenet.recognise(mobilenet().state_dict()) is None  # ours: aspp.*, not classifier.0.*
    assert torchvision_mobilenet.recognise(build_model("resnet18", 3).state_dict()) is None
    assert torchvision_mobilenet.recognise({}) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": NAME}, r"multi_grid must be null for backbone mobilenet_v3_large"),
    ({"backbone": "resnet18", "head": "lraspp"}, r"head lraspp .* needs backbone mobilenet_v3_large"),
    ({"backbone": NAME, "multi_grid": None, "head": "lraspp", "aux_loss": True}, r"aux_loss must be false"),
    ({"backbone": NAME, "multi_grid": None, "head": "lraspp", "aspp_rates": (1, 2, 3)}, r"aspp_rates must be null"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(num_classes=3, **kwargs)


def test_config_group():
    cfg = compose_config("train", ["backbone=mobilenet_v3_large", "model.head=lraspp"])
    validate_train(cfg)
    assert cfg["backbone"] == {"name": NAME, "pretrained": "none"} and cfg["model"]["multi_grid"] is None
    model = build_model(**model_kwargs(cfg, 5))
    assert model.num_classes == 5 and type(model.classifier).__name__ == "LRASPPHead"


@pytest.mark.parametrize("overrides, message", [
    (["backbone=mobilenet_v3_large", "model.multi_grid=[1,2,4]"], "model.multi_grid must be null"),
    (["backbone=resnet18", "model.head=lraspp"], "model.head lraspp"),
    (["backbone=mobilenet_v3_large", "model.head=lraspp", "model.aux_loss=true"], "model.aux_loss must be false"),
])
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_train(compose_config("train", overrides))


def test_imagenet_weights_load_from_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = mobilenet_v3_large(weights=None)
    filename = mobilenetv3.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / filename)
    model = mobilenet(pretrained="imagenet")
    torch.testing.assert_close(model.backbone[13].block[1][0].weight, reference.features[13].block[1][0].weight)
    torch.testing.assert_close(model.backbone[16][1].running_var, reference.features[16][1].running_var)


def test_imagenet_weights_unavailable_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"ImageNet weights for mobilenet_v3_large are not cached at .*"
                                           r"mobilenet_v3_large-.*backbone.pretrained=none"):
        mobilenet(pretrained="imagenet")


def test_a_resnet_file_as_backbone_weights_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_model("resnet18", 3).backbone.state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit mobilenet_v3_large: .*missing"):
        mobilenet(pretrained=str(path))


def test_training_starts_from_a_torchvision_lraspp_file(tmp_path, cfg_train, caplog):
    """``model.weights=<torchvision's lraspp_mobilenet_v3_large file>`` (21 VOC classes) fine-tunes on 6 classes:
    everything but the two classifiers loads."""
    path = tmp_path / "lraspp.pth"
    theirs = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    torch.save(theirs.state_dict(), path)
    caplog.set_level("INFO", logger="seg")
    train(cfg_train(backbone=NAME, **{"model.head": "lraspp", "model.weights": str(path), "train.iters": 1,
                                      "train.eval_every": 0}), tmp_path / "run")
    classifiers = ["classifier.low_classifier.weight", "classifier.low_classifier.bias",
                   "classifier.high_classifier.weight", "classifier.high_classifier.bias"]
    loaded = len(theirs.state_dict()) - len(classifiers)
    assert (f"torchvision lraspp_mobilenet_v3_large: loaded {loaded} of {loaded + 4} tensors; "
            f"missing 4: {', '.join(classifiers)}") in caplog.text
