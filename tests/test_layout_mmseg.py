"""mmsegmentation DeepLabV3 / V3+ R50-D8 checkpoints: recognised, built from the record, loaded strictly, and giving
mmsegmentation's logits (tests/mmseg_reference.py, its modules re-written from its source with its key names)."""

import pytest
import torch
from mmseg_reference import EncoderDecoder, randomised

from seg.io import safe_load
from seg.models import build_model
from seg.models.layouts import mmseg
from seg.models.weights import WeightsError

CLASSES = ("background", "cat", "dog")


def save_as_mmseg(model: torch.nn.Module, path, plus: bool) -> None:
    """What mmseg 0.x's runner writes (mmcv.runner.save_checkpoint): meta, state_dict, optimizer."""
    head = "DepthwiseSeparableASPPHead" if plus else "ASPPHead"
    config = f"model = dict(type='EncoderDecoder', decode_head=dict(type='{head}'))"
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
