import pytest
import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.segmentation import deeplabv3_resnet50

from seg.models import build_model, load_weights, stage_plan
from seg.models.backbone import BACKBONES


def conv3x3_by_stage(model):
    """{stage name: [(stride, dilation) of every 3x3 conv in order]} read from the built modules."""
    result = {}
    for stage in ("layer2", "layer3", "layer4"):
        convs = [m for m in getattr(model.backbone, stage).modules()
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        result[stage] = [(c.stride[0], c.dilation[0]) for c in convs]
    return result


# Expected per-unit dilations of stages 3 and 4 (multi-grid 1, 2, 4 on the last stage).
EXPECTED = {
    32: {"layer3": 1, "layer4": [1, 2, 4], "stride3": 2, "stride4": 2},
    16: {"layer3": 1, "layer4": [2, 4, 8], "stride3": 2, "stride4": 1},
    8: {"layer3": 2, "layer4": [4, 8, 16], "stride3": 1, "stride4": 1},
}


@pytest.mark.parametrize("os_", [8, 16, 32])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dilation_rule(name, os_):
    model = build_model(name, 3, output_stride=os_)
    convs = conv3x3_by_stage(model)
    per_unit = 2 if name == "resnet18" else 1  # BasicBlock has two 3x3 convs per unit
    exp = EXPECTED[os_]
    layer3 = convs["layer3"]
    assert layer3[0][0] == exp["stride3"]
    assert all(s == 1 for s, _ in layer3[1:])
    assert all(d == exp["layer3"] for _, d in layer3)
    units4 = len(model.backbone.layer4)
    expected4 = [exp["layer4"][i % 3] for i in range(units4) for _ in range(per_unit)]
    assert [d for _, d in convs["layer4"]] == expected4
    assert convs["layer4"][0][0] == exp["stride4"]
    assert model.aspp.get_rates() == [r * 16 // os_ for r in (6, 12, 18)]


def test_stage_plan_contract_dilation():
    """The first unit of a dilated stage at the previous rate: torchvision's replace_stride_with_dilation."""
    for output_stride, replace in ((8, [False, True, True]), (16, [False, False, True])):
        net = resnet.resnet50(weights=None, replace_stride_with_dilation=replace)
        theirs = [[block.conv2.dilation[0] for block in getattr(net, f"layer{i}")] for i in (2, 3, 4)]
        plan = stage_plan(output_stride, None, [4, 6, 3], contract_dilation=True)
        assert [dilations for _, dilations in plan] == theirs
    # with a grid, the first unit's grid factor applies to the contracted rate
    assert stage_plan(16, [1, 2, 4], [4, 6, 3], contract_dilation=True)[2] == (1, [1, 4, 8])


def test_stage_plan_custom_multi_grid():
    plan = stage_plan(16, [1, 1, 1], [4, 6, 3])
    assert plan == [(2, [1] * 4), (2, [1] * 6), (1, [2, 2, 2])]
    with pytest.raises(ValueError, match="output_stride"):
        stage_plan(12, [1, 2, 4], [4, 6, 3])


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("os_", [8, 16, 32])
def test_output_shape_matches_input(name, os_):
    model = build_model(name, 5, output_stride=os_, aux_loss=True).eval()
    with torch.no_grad():
        for size in [(65, 65), (64, 80)] if name == "resnet18" else [(65, 71)]:
            out = model(torch.randn(1, 3, *size))
            assert out["out"].shape == (1, 5, *size)
            assert out["aux"].shape == (1, 5, *size)


@pytest.mark.parametrize("head", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("batch", [1, 2])
def test_train_step_batch_sizes(head, batch):
    model = build_model("resnet18", 4, head=head, aux_loss=True).train()
    x = torch.randn(batch, 3, 64, 64)
    out = model(x)
    loss = out["out"].logsumexp(1).mean() + out["aux"].mean()
    loss.backward()
    assert model.classifier.weight.grad is not None
    assert torch.isfinite(model.backbone.conv1.weight.grad).all()
    assert out["out"].shape == (batch, 4, 64, 64)


def test_torchvision_parity():
    torch.manual_seed(0)
    theirs = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=7, aux_loss=True).eval()
    # Randomise BN statistics so the comparison also covers running mean/var mapping.
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    # torchvision's replace_stride_with_dilation runs the first unit of a dilated stage at the previous rate.
    ours = build_model("resnet50", 7, output_stride=8, multi_grid=None, aspp_rates=(12, 24, 36), aux_loss=True,
                       contract_dilation=True).eval()
    report = load_weights(ours, theirs.state_dict())
    assert not report.missing and not report.unexpected and not report.skipped
    x = torch.randn(2, 3, 67, 61)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    torch.testing.assert_close(a["out"], b["out"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a["aux"], b["aux"], rtol=1e-4, atol=1e-4)


def test_load_weights_skips_other_num_classes():
    source = build_model("resnet18", 21)
    target = build_model("resnet18", 5)
    report = load_weights(target, {"model": source.state_dict()})
    assert report.skipped == ["classifier.weight", "classifier.bias"]
    assert report.missing == ["classifier.weight", "classifier.bias"]
    torch.testing.assert_close(target.backbone.conv1.weight, source.backbone.conv1.weight)


def test_output_stride_switch_keeps_parameters():
    model = build_model("resnet18", 3, output_stride=16).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 64, 64)
    assert model.backbone(x)[2].shape[-1] == 4
    model.set_output_stride(8)
    assert model.backbone(x)[2].shape[-1] == 8
    assert model.aspp.get_rates() == [12, 24, 36]
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.set_output_stride(16)
    assert conv3x3_by_stage(model) == conv3x3_by_stage(build_model("resnet18", 3, output_stride=16))


def test_output_stride_round_trip_keeps_custom_aspp_rates():
    model = build_model("resnet18", 3, output_stride=16, aspp_rates=[1, 2, 3])
    model.set_output_stride(32)
    assert model.aspp.get_rates() == [1, 1, 2]  # 0.5, 1, 1.5 rounded, at least 1
    model.set_output_stride(16)
    assert model.aspp.get_rates() == [1, 2, 3]
    model.set_output_stride(8)
    assert model.aspp.get_rates() == [2, 4, 6]
    model.set_output_stride(32)
    model.set_output_stride(8)
    assert model.aspp.get_rates() == [2, 4, 6]  # derived from the configured rates, never from rounded ones


MMSEG_LIKE = dict(stem="deep", aspp_channels=64, aspp_projection_kernel=3, separable_convs=True,
                  classifier_dropout=0.1)


@pytest.mark.parametrize("head, variant", [("deeplabv3", {}), ("deeplabv3plus", {}), ("deeplabv3plus", MMSEG_LIKE)])
def test_torchscript_matches_eager(head, variant):
    model = build_model("resnet18", 3, head=head, aux_loss=True, **variant).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 57, 70)
    with torch.no_grad():
        eager, script = model(x), scripted(x)
    torch.testing.assert_close(script["out"], eager["out"])
    torch.testing.assert_close(script["aux"], eager["aux"])


def test_channels_last():
    model = build_model("resnet18", 3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["out"]
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))["out"]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, key", [
    ({"output_stride": 12}, "output_stride"),
    ({"head": "unet"}, "head"),
    ({"aspp_rates": (6, 12)}, "aspp_rates"),
    ({"multi_grid": ()}, "multi_grid"),
])
def test_bad_arguments(kwargs, key):
    """The library names its own arguments (config keys are named by seg.config, the boundary)."""
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model("resnet18", 3, **kwargs)


def test_bad_backbone_and_num_classes():
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_model("resnet9", 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet18", 0)


def test_imagenet_weights_unavailable_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="backbone.pretrained=none") as info:
        build_model("resnet18", 3, pretrained="imagenet")
    assert str(tmp_path) in str(info.value)


def test_backbone_from_local_state_dict(tmp_path):
    reference = resnet.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 3, pretrained=str(path))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_imagenet_weights_load_from_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet.resnet18(weights=None)
    filename = resnet.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / filename)
    model = build_model("resnet18", 3, pretrained="imagenet")
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
