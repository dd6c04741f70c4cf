"""``backbone.stem=deep``: ResNet-C's stem (three 3x3 convs), in mmsegmentation's ``ResNetV1c`` layout and numbers."""

import pytest
import torch
from helpers import compose_config
from mmseg_reference import ResNetV1c, randomised

from seg.analysis.coverage import receptive_field
from seg.analysis.model import analyse_model, main_path_layers
from seg.config import ConfigError, validate_train
from seg.models import build_model
from seg.models.backbone import build_backbone


def test_deep_stem_backbone_matches_mmseg_resnetv1c_d8():
    # D8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation
    reference = randomised(ResNetV1c(depth=50), seed=4)
    ours = build_backbone("resnet50", output_stride=8, multi_grid=None, contract_dilation=True, stem="deep").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # the same keys: stem.0-8, layer1-4
    image = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        low, mid, high = ours(image)
        stages = reference(image)
    for got, expected in ((low, stages[0]), (mid, stages[2]), (high, stages[3])):
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert high.shape[-1] == 6  # output stride 8


def test_deep_stem_layout_and_default_unchanged():
    deep = build_model("resnet18", 2, stem="deep").state_dict()
    assert deep["backbone.stem.0.weight"].shape == (32, 3, 3, 3)
    assert deep["backbone.stem.3.weight"].shape == (32, 32, 3, 3)
    assert deep["backbone.stem.6.weight"].shape == (64, 32, 3, 3)
    assert not any(key.startswith("backbone.conv1.") for key in deep)
    standard = build_model("resnet18", 2).state_dict()
    assert standard["backbone.conv1.weight"].shape == (64, 3, 7, 7)
    assert not any(".stem." in key for key in standard)


def test_deep_stem_has_no_imagenet_weights_but_takes_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="^pretrained cannot be 'imagenet' with stem 'deep'"):
        build_model("resnet50", 2, stem="deep", pretrained="imagenet")
    cfg = compose_config("train", ["backbone.stem=deep", "backbone.pretrained=imagenet"])
    with pytest.raises(ConfigError, match="^backbone.pretrained cannot be 'imagenet' with stem 'deep'"):
        validate_train(cfg)
    # mmcv's resnet50_v1c layout (stem.*, layer*, fc.*) as a local file
    reference = ResNetV1c(depth=50)
    state = {**reference.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": state}, tmp_path / "resnet50_v1c.pth")
    backbone = build_backbone("resnet50", 8, None, str(tmp_path / "resnet50_v1c.pth"), True, stem="deep")
    assert torch.equal(backbone.stem[0].weight, reference.stem[0].weight)
    assert torch.equal(backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_receptive_field_analysis_reads_the_deep_stem_and_separable_branches():
    model = build_model("resnet18", 2, stem="deep", separable_convs=True)
    layers = main_path_layers(model)
    assert [layer.name for layer in layers[:4]] == ["backbone.stem.0", "backbone.stem.3", "backbone.stem.6",
                                                    "backbone.maxpool"]
    standard = main_path_layers(build_model("resnet18", 2))
    # three 3x3 convs (stride 2, 1, 1) see 11 pixels before the pool, one 7x7 (stride 2) sees 7
    assert receptive_field(layers[:3]) == 11 and receptive_field(standard[:1]) == 7
    rates = [branch["rate"] for branch in analyse_model(model, input_size=129)["aspp"] if branch["kind"] == "conv"]
    assert rates == [1, 6, 12, 18]
