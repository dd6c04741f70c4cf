"""mmsegmentation DeepLabV3 / V3+ R50-D8 checkpoints: recognised, built from the record, loaded strictly, and giving
mmsegmentation's logits (tests/mmseg_reference.py, its modules re-written from its source with its key names)."""

from typing import Optional

import pytest
import torch
from helpers import compose_config
from mmseg_reference import EncoderDecoder, randomised

from seg.config import model_kwargs
from seg.io import safe_load
from seg.models import build_model, model_from_file
from seg.models.backbone import stage_plan
from seg.models.layouts import mmseg
from seg.models.weights import WeightsError

CLASSES = ("background", "cat", "dog")


def save_as_mmseg(model: torch.nn.Module, path, plus: bool, config: Optional[str] = None) -> None:
    """What mmseg 0.x's runner writes (mmcv.runner.save_checkpoint): meta, state_dict, optimizer."""
    head = "DepthwiseSeparableASPPHead" if plus else "ASPPHead"
    config = config or f"model = dict(type='EncoderDecoder', decode_head=dict(type='{head}'))"
    torch.save({"meta": {"CLASSES": CLASSES, "PALETTE": [[0, 0, 0], [128, 0, 0], [0, 128, 0]],
                         "mmseg_version": "0.30.0", "mmcv_version": "1.7.1", "config": config,
                         "env_info": "sys.platform: linux\nPython: 3.8", "seed": 0, "exp_name": "deeplabv3.py",
                         "epoch": 1, "iter": 80000, "time": "Sun Dec  6 18:00:00 2026"},
                "state_dict": model.state_dict(),
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0]}]}}, path)


@pytest.mark.parametrize("plus, aux", [(False, True), (False, False), (True, True), (True, False)])
def test_mmseg_d8_logits_match(tmp_path, plus, aux):
    torch.manual_seed(0)
    reference = randomised(EncoderDecoder(depth=50, num_classes=len(CLASSES), plus=plus, aux=aux), seed=1)
    path = tmp_path / "deeplabv3_r50-d8_512x512_20k_voc12aug.pth"
    save_as_mmseg(reference, path, plus)

    foreign = mmseg.recognise(safe_load(path))
    assert foreign is not None
    assert foreign.layout == f"mmsegmentation DeepLabV3{'+' if plus else ''} R50-D8" + (
        " (with auxiliary_head)" if aux else "")
    assert foreign.class_names == list(CLASSES) and not foreign.stride_recorded
    assert foreign.arguments["num_classes"] == len(CLASSES) and foreign.arguments["aux_loss"] == aux
    model = build_model(**foreign.arguments).eval()
    model.load_state_dict(foreign.state, strict=True)

    image = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, expected_aux = reference(image)
        result = model(image)
    assert result["out"].shape == expected.shape == (1, len(CLASSES), 65, 65)
    scale = expected.abs().max()
    assert scale > 1e-3  # the comparison means something: the logits are not all ~0
    assert (result["out"] - expected).abs().max() <= 1e-4 * scale
    if aux:
        assert (result["aux"] - expected_aux).abs().max() <= 1e-4 * expected_aux.abs().max()
    else:
        assert "aux" not in result


def test_mmseg_concatenation_order_matters():
    """Without the rotation of the bottleneck's input channels the logits differ: the parity above tests it."""
    reference = randomised(EncoderDecoder(depth=50, num_classes=2, plus=False, aux=False), seed=3)
    foreign = mmseg.recognise(reference.state_dict())
    unrotated = dict(foreign.state, **{"aspp.project.0.weight": reference.state_dict()[mmseg.DEEPLABV3]})
    model = build_model(**foreign.arguments).eval()
    image = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        model.load_state_dict(foreign.state)
        good = model(image)["out"]
        model.load_state_dict(unrotated)
        bad = model(image)["out"]
        expected, _ = reference(image)
    assert torch.allclose(good, expected, atol=1e-4 * expected.abs().max())
    assert not torch.allclose(bad, expected, atol=1e-2 * expected.abs().max())


def test_mmseg_recognise_details():
    reference = EncoderDecoder(depth=101, num_classes=4, plus=True, aux=False)
    state = reference.state_dict()
    foreign = mmseg.recognise(state)  # a bare state dict: no class names
    assert foreign.layout == "mmsegmentation DeepLabV3+ R101-D8" and foreign.class_names is None
    assert foreign.arguments["backbone"] == "resnet101" and foreign.arguments["stem"] == "deep"
    # the r50b / r101b configs: mmseg's ResNet with the standard 7x7 stem
    standard = randomised(EncoderDecoder(depth=50, num_classes=2, plus=False, aux=False, deep_stem=False), seed=5)
    foreign = mmseg.recognise(standard.state_dict())
    assert foreign.layout == "mmsegmentation DeepLabV3 R50b-D8" and foreign.arguments["stem"] == "standard"
    model = build_model(**foreign.arguments).eval()
    model.load_state_dict(foreign.state, strict=True)
    image = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        expected, _ = standard(image)
        assert (model(image)["out"] - expected).abs().max() <= 1e-4 * expected.abs().max()
    # mmseg 1.x (mmengine) keeps the class names under dataset_meta
    one_x = {"meta": {"dataset_meta": {"classes": ("a", "b", "c", "d")}}, "state_dict": state}
    assert mmseg.recognise(one_x).class_names == ["a", "b", "c", "d"]
    # not mmseg: this project's own model, torchvision-like keys, a dict without tensors
    assert mmseg.recognise(build_model("resnet18", 2).state_dict()) is None
    assert mmseg.recognise({"meta": {}, "state_dict": {"a": 1}}) is None
    # mmseg, but a ResNet this project does not build: a one-line error rather than "unknown file"
    shallow = {k: v for k, v in state.items() if not k.startswith("backbone.layer3.") or int(k.split(".")[2]) < 2}
    with pytest.raises(WeightsError, match="2 blocks in layer3"):
        mmseg.recognise(shallow)
    # an auxiliary FCNHead of two convs (num_convs=2): not the D8 configs' head, not built here
    two_convs = dict(state, **{"auxiliary_head.convs.1.conv.weight": torch.zeros(256, 256, 3, 3),
                               "auxiliary_head.conv_seg.weight": torch.zeros(4, 256, 1, 1)})
    with pytest.raises(WeightsError, match=r"1 tensors of parts .* \(e.g. auxiliary_head.convs.1.conv.weight\)"):
        mmseg.recognise(two_convs)


# The model part of the pretty-printed config that mmseg 0.x keeps in meta["config"] (mmengine: meta["cfg"]) for
# deeplabv3(plus)_r101-d16-mg124_512x1024_40k_cityscapes.py: _base_/models/deeplabv3(plus)_r50-d8.py as it overrides it.
D16_MG124_CONFIG = """norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    type='EncoderDecoder',
    pretrained='open-mmlab://resnet101_v1c',
    backbone=dict(
        type='ResNetV1c',
        depth=101,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 2),
        strides=(1, 2, 2, 1),
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        contract_dilation=True,
        multi_grid=(1, 2, 4)),
    decode_head=dict(
        type='{head}',
        in_channels=2048,
        in_index=3,
        channels=512,
        dilations=(1, 6, 12, 18),
        dropout_ratio=0.1,
        num_classes=3,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        sampler=dict(type='OHEMPixelSampler', min_kept=100000)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=3))
"""


def assert_logits(model: torch.nn.Module, reference: torch.nn.Module, size: int = 65) -> None:
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, expected_aux = reference(image)
        result = model(image)
    assert result["out"].shape == expected.shape and expected.abs().max() > 1e-3
    assert (result["out"] - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert (result["aux"] - expected_aux).abs().max() <= 1e-4 * expected_aux.abs().max()


def assert_preset_builds(foreign) -> None:
    """The preset the record names composes to exactly the architecture the file needs."""
    cfg = compose_config("train", [f"model={foreign.preset}"])
    assert model_kwargs(cfg, foreign.arguments["num_classes"], "none") == {
        **model_kwargs(cfg, 0, "none"), **foreign.arguments, "pretrained": "none"}


@pytest.mark.parametrize("plus", [False, True])
def test_mmseg_r18_d8(tmp_path, plus):
    """R18-D8: heads of 128 channels (V3+: c1_bottleneck to 12), an auxiliary head of 64, and mmseg's BasicBlock,
    whose second 3x3 conv is not dilated."""
    reference = randomised(EncoderDecoder(depth=18, num_classes=len(CLASSES), plus=plus, aux=True), seed=1)
    path = tmp_path / f"{'deeplabv3plus' if plus else 'deeplabv3'}_r18-d8_512x1024_80k_cityscapes.pth"
    save_as_mmseg(reference, path, plus)
    model, report = model_from_file(path)
    assert report.layout == f"mmsegmentation DeepLabV3{'+' if plus else ''} R18-D8 (with auxiliary_head)"
    assert len(report.loaded) == len(model.state_dict()) == len(reference.state_dict())
    assert_logits(model, reference)
    foreign = mmseg.recognise(safe_load(path))
    assert foreign.preset == f"mmseg_{'deeplabv3plus' if plus else 'deeplabv3'}_r18_d8"
    assert_preset_builds(foreign)
    # this project's own BasicBlock dilates both convs: not mmseg's network
    ours = build_model(**{**foreign.arguments, "basic_conv2_dilated": True}).eval()
    ours.load_state_dict(foreign.state)
    with pytest.raises(AssertionError):
        assert_logits(ours, reference)


@pytest.mark.parametrize("plus", [False, True])
def test_mmseg_r101_d16_mg124(tmp_path, plus):
    """D16-MG124: its strides and grid come from the config in the file's meta; mmseg's grid is the last stage's
    rates themselves (1, 2, 4)."""
    reference = randomised(EncoderDecoder(depth=101, num_classes=len(CLASSES), plus=plus, aux=True,
                                          d16_mg124=True), seed=4)
    head = "DepthwiseSeparableASPPHead" if plus else "ASPPHead"
    path = tmp_path / "deeplabv3_r101-d16-mg124_512x1024_40k_cityscapes.pth"
    save_as_mmseg(reference, path, plus, config=D16_MG124_CONFIG.replace("{head}", head))
    model, report = model_from_file(path)
    assert report.layout == f"mmsegmentation DeepLabV3{'+' if plus else ''} R101-D16-MG124 (with auxiliary_head)"
    assert model.output_stride == 16 and model.aspp.get_rates() == [6, 12, 18]
    assert_logits(model, reference)
    foreign = mmseg.recognise(safe_load(path))
    assert foreign.stride_recorded
    assert foreign.preset == f"mmseg_{'deeplabv3plus' if plus else 'deeplabv3'}_r101_d16_mg124"
    assert_preset_builds(foreign)
    # mmengine (mmseg 1.x) keeps the config under meta["cfg"]
    one_x = {"meta": {"cfg": D16_MG124_CONFIG.replace("{head}", head)}, "state_dict": reference.state_dict()}
    assert mmseg.recognise(one_x).arguments == foreign.arguments
    if plus:
        return
    # the grid scaled by the stage's rate (this project's rule) is another network: the same model
    # re-dilated by it gives other logits
    model.backbone.multi_grid_scaled = True
    model.backbone.set_output_stride(16)
    assert [block.conv2.dilation[0] for block in model.backbone.layer4] == [1, 4, 8]  # first unit contracted
    with pytest.raises(AssertionError):
        assert_logits(model, reference)
    # without its config the file reads as D8 (its tensors are a D8 model's), and says the stride is not recorded
    bare = mmseg.recognise(reference.state_dict())
    assert bare.layout == "mmsegmentation DeepLabV3 R101-D8 (with auxiliary_head)" and not bare.stride_recorded


def test_mmseg_multi_grid_rule():
    """mmsegmentation's ResLayer: the grid's values are the last stage's rates, whatever its dilation, and the
    stage's first unit is not contracted; this project's rule multiplies them by the stage's rate."""
    units = [4, 23, 3]
    assert stage_plan(16, (1, 2, 4), units, True, multi_grid_scaled=False) == [
        (2, [1] * 4), (2, [1] * 23), (1, [1, 2, 4])]
    assert stage_plan(16, (1, 2, 4), units, True)[2] == (1, [1, 4, 8])  # contracted first unit, scaled grid
    assert stage_plan(8, (1, 2, 4), units, True, multi_grid_scaled=False) == [
        (2, [1] * 4), (1, [1] + [2] * 22), (1, [1, 2, 4])]
    # no grid: both rules are the stage's rate, the first unit contracted
    assert stage_plan(8, None, units, True, multi_grid_scaled=False) == stage_plan(8, None, units, True)


def test_mmseg_config_with_other_dilations_is_refused():
    reference = EncoderDecoder(depth=18, num_classes=2, plus=False, aux=False)
    config = D16_MG124_CONFIG.replace("dilations=(1, 1, 1, 2)", "dilations=(1, 1, 2, 2)")
    with pytest.raises(WeightsError, match=r"strides \(1, 2, 2, 1\) and dilations \(1, 1, 2, 2\)"):
        mmseg.recognise({"meta": {"config": config}, "state_dict": reference.state_dict()})
