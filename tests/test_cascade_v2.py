"""DeepLabv3's cascaded model (model.head=cascade) and DeepLab v2's ASPP-L (model.head=deeplabv2) against the
papers' numbers, torchvision's own ResNet stages, hand-computed logits and receptive fields, and the scripts."""

import runpy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, compose_config, needed, run_script, tiny_checkpoint, tiny_overrides
from PIL import Image
from test_export import METADATA, SIZES, assert_parity
from torchvision.models import resnet

from seg.analysis.model import analyse_config, head_of
from seg.benchmark.measure import structure
from seg.config import ConfigError, model_kwargs, validate_train
from seg.engine.checkpoint import load_checkpoint, restore
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.export import DYNAMIC_EXPORT_TORCH, ExportedModel, export_checkpoint, export_model, load_torchscript
from seg.models import build_model, load_weights, stage_plan
from seg.models.cascade import cascade_plan
from seg.models.spec import arguments_from_config
from seg.models.weights import WeightsError

GRID = (1, 2, 4)


def paper_rates(block4_rate, grid, blocks):
    """DeepLabv3 section 3.2: each block after block4 doubles the rate; unit rate = block rate x multi-grid."""
    return [[block4_rate * 2 ** b * g for g in grid] for b in range(blocks + 1)]


@pytest.mark.parametrize("output_stride, block4_rate", [(16, 2), (8, 4), (32, 1)])
def test_cascade_plan_is_the_papers(output_stride, block4_rate):
    # OS16: block4 to block7 at 2, 4, 8, 16 x the unit rates (the paper's example: block4 at 2 x (1, 2, 4))
    assert cascade_plan(output_stride, GRID, 3, 3) == paper_rates(block4_rate, GRID, 3)
    # block4's rates are the backbone's own (stage_plan), whatever the number of blocks
    assert cascade_plan(output_stride, GRID, 3, 0) == [stage_plan(output_stride, GRID, [4, 6, 3])[-1][1]]
    assert cascade_plan(output_stride, None, 2, 1) == [[block4_rate] * 2, [2 * block4_rate] * 2]


def test_cascade_model_units_and_rates():
    """resnet50: block5-7 are torchvision's own stage of three bottlenecks on 2048 channels (no projection
    shortcut), every 3x3 conv at the paper's rate; the switch to OS8 and back keeps parameters."""
    model = build_model("resnet50", 21, head="cascade")
    reference = resnet.resnet50()
    reference.inplanes = 2048  # what torchvision's _make_layer builds for a stage after layer4, at stride 1
    stage = reference._make_layer(resnet.Bottleneck, 512, 3)
    for block in model.cascade:
        assert {k: v.shape for k, v in block.state_dict().items()} == {k: v.shape for k, v in
                                                                        stage.state_dict().items()}
        assert all(unit.downsample is None for unit in block)
    assert list(dict(model.cascade.named_children())) == ["block5", "block6", "block7"]
    assert model.rates() == paper_rates(2, GRID, 3)
    dilations = [m.dilation[0] for m in model.cascade.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] == 3]
    assert dilations == [r for block in paper_rates(2, GRID, 3)[1:] for r in block]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_output_stride(8)
    assert model.output_stride == 8 and model.rates() == paper_rates(4, GRID, 3)
    model.set_output_stride(16)
    assert model.rates() == paper_rates(2, GRID, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cascade_on_basic_blocks_with_aux_and_os_switch():
    """resnet18: two basic units per block (both 3x3 convs at the unit rate), grid (1, 2) of (1, 2, 4)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 5, head="cascade", cascade_blocks=2, aux_loss=True).eval()
    assert model.rates() == paper_rates(2, (1, 2), 2)
    assert [m.dilation[0] for m in model.cascade.block6.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 8, 16, 16]
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        out16 = model(x)
        model.set_output_stride(8)
        out8 = model(x)
    assert model.rates() == paper_rates(4, (1, 2), 2)
    for out in (out16, out8):
        assert set(out) == {"out", "aux"} and all(v.shape == (2, 5, 64, 80) for v in out.values())
    assert not torch.allclose(out16["out"], out8["out"])


def test_cascade_without_blocks_is_the_backbone_and_a_1x1_classifier():
    """cascade_blocks=0 is the paper's "block4" column: logits = 1x1 conv of the backbone output, upsampled."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3, head="cascade", cascade_blocks=0).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        high = model.backbone(x)[2]
        expected = F.interpolate(F.conv2d(high, model.classifier.weight, model.classifier.bias), size=(64, 64),
                                 mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x)["out"], expected)


@pytest.mark.parametrize("output_stride, rates", [(8, [6, 12, 18, 24]), (16, [3, 6, 9, 12]), (32, [2, 3, 4, 6])])
def test_deeplabv2_rates_per_output_stride(output_stride, rates):
    model = build_model("resnet18", 4, output_stride, head="deeplabv2")
    assert model.aspp.get_rates() == rates
    # the same field of view as ASPP-L at OS8: rate x stride = 48, 96, 144, 192 (rounded)
    assert all(abs(r * output_stride - r8 * 8) <= output_stride / 2 for r, r8 in zip(rates, [6, 12, 18, 24]))


def test_deeplabv2_sums_four_atrous_classifiers():
    """The logits are the sum of the four 3x3 convolutions at their rates, computed here with F.conv2d."""
    torch.manual_seed(0)
    model = build_model("resnet18", 4, 8, multi_grid=None, head="deeplabv2", aux_loss=True).eval()
    assert [c.weight.shape for c in model.aspp.convs] == [(4, 512, 3, 3)] * 4
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        high = model.backbone(x)[2]
        logits = sum(F.conv2d(high, c.weight, c.bias, padding=r, dilation=r)
                     for c, r in zip(model.aspp.convs, [6, 12, 18, 24]))
        out = model(x)
    torch.testing.assert_close(out["out"], F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False))
    assert out["aux"].shape == (1, 4, 64, 64)
    model.set_output_stride(16)
    assert model.aspp.get_rates() == [3, 6, 9, 12]
    model.set_output_stride(8)
    assert model.aspp.get_rates() == [6, 12, 18, 24]
    custom = build_model("resnet18", 4, 16, head="deeplabv2", aspp_rates=[2, 5])
    assert custom.aspp.get_rates() == [2, 5]
    custom.set_output_stride(8)
    assert custom.aspp.get_rates() == [4, 10]


def test_deeplabv2_on_mobilenet():
    model = build_model("mobilenet_v3_large", 3, multi_grid=None, head="deeplabv2").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 48))["out"].shape == (1, 3, 64, 48)


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="mobilenet_v3_large", multi_grid=None, head="cascade"),
     "backbone must be one of ['resnet18', 'resnet34', 'resnet50', 'resnet101'] with head cascade"),
    (dict(head="cascade", cascade_blocks=4), "cascade_blocks must be one of [0, 1, 2, 3]"),
    (dict(head="cascade", aspp_rates=[6, 12, 18]), "aspp_rates must be null with head cascade"),
    (dict(head="deeplabv2", aspp_rates=[6, 0]), "aspp_rates must be a list of positive integers with head deeplabv2"),
    (dict(head="deeplabv2", aspp_channels=512), "aspp_channels must be 256 with head deeplabv2"),
    (dict(head="cascade", decoder_convs=1), "decoder_convs must be null with head cascade"),
])
def test_bad_arguments_are_one_line(kwargs, message):
    with pytest.raises(ValueError) as raised:
        build_model(**{"backbone": "resnet18", "num_classes": 3, **kwargs})
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_config_keys_and_old_checkpoints(cfg_train):
    cfg = cfg_train(**{"model.head": "cascade", "model.cascade_blocks": 7})
    with pytest.raises(ConfigError, match=r"^model\.cascade_blocks must be one of \[0, 1, 2, 3\]"):
        validate_train(cfg)
    cfg = cfg_train(**{"model.head": "deeplabv2", "model.aspp_rates": "[4,8]"})
    validate_train(cfg)
    assert model_kwargs(cfg, 6)["head"] == "deeplabv2" and model_kwargs(cfg, 6)["aspp_rates"] == (4, 8)
    old = cfg_train()
    del old["model"]["cascade_blocks"]  # a checkpoint's config from before the key
    assert arguments_from_config(old, 6)["cascade_blocks"] == 3


@pytest.mark.parametrize("head", ["cascade", "deeplabv2"])
@pytest.mark.parametrize("format", ["torchscript", "onnx", "export"])
def test_export_parity(head, format, tmp_path):
    if format != "torchscript" and torch.__version__ < DYNAMIC_EXPORT_TORCH:
        pytest.skip(f"format={format} keeps H, W free from torch {DYNAMIC_EXPORT_TORCH} on")
    if format == "onnx":
        for package in ("onnx", "onnxscript", "onnxruntime"):
            needed(package)
    torch.manual_seed(0)
    model = build_model("resnet18", 3, head=head, aux_loss=True, cascade_blocks=1).eval()
    path = tmp_path / f"model.{format}"
    report = export_model(model, path, format, METADATA, check_sizes=SIZES)
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    if format == "torchscript":
        assert_parity(torch.jit.load(str(path)), model)


def test_receptive_fields(capsys):
    """The cascade continues the backbone's path: each 3x3 conv at rate d after stride 16 adds 2 * d * 16 pixels
    (RF arithmetic; a basic unit has two); a v2 branch adds 2 * rate * 8 at OS8."""
    plain = analyse_config("resnet18", 16)["receptive_field"]
    cascade = analyse_config("resnet18", 16, head="cascade", cascade_blocks=2)
    added = sum(2 * (2 * d * 16) for block in paper_rates(2, (1, 2), 2)[1:] for d in block)
    assert cascade["receptive_field"] == plain + added
    assert [s["stage"] for s in cascade["stages"]][-3:] == ["layer4", "block5", "block6"]
    assert cascade["aspp"] == [] and cascade["model"]["head"] == "cascade"
    v2 = analyse_config("resnet18", 8, head="deeplabv2")
    backbone = analyse_config("resnet18", 8)["receptive_field"]
    assert [b["receptive_field"] for b in v2["aspp"]] == [backbone + 2 * r * 8 for r in (6, 12, 18, 24)]
    main = runpy.run_path(str(REPO / "scripts" / "receptive_field.py"))["main"]
    main(["backbone=resnet18", "model.head=cascade", "model.cascade_blocks=1"])
    text = capsys.readouterr().out
    assert "cascade block5 after block4" in text and "receptive field of the block5 output" in text
    main(["backbone=resnet18", "os=8", "model.head=deeplabv2", "model.aspp_rates=[6,12]"])
    assert "ASPP-L branches" in capsys.readouterr().out


def test_benchmark_structure_and_models_table_rows():
    cascade = structure(build_model("resnet18", 3, head="cascade", cascade_blocks=1))
    assert cascade["aspp_rates"] is None and cascade["dilations"]["block5"] == [4, 4, 8, 8]
    assert structure(build_model("resnet18", 3, 8, head="deeplabv2"))["aspp_rates"] == [6, 12, 18, 24]
    from seg.benchmark.models import model_rows

    rows = model_rows(size=32, rounds=1, warmup=0, include_timm=False,
                      names=["resnet50, cascade block5-7", "resnet50, DeepLab v2 ASPP-L"])
    base, cascade_row, v2_row = rows
    trunk = sum(p.numel() for n, p in resnet.resnet50().named_parameters() if not n.startswith("fc."))
    block = 3 * sum(p.numel() for p in resnet.Bottleneck(2048, 512).parameters())
    assert cascade_row["params_m"] * 1e6 == pytest.approx(trunk + 3 * block + 2048 * 21 + 21)
    assert v2_row["params_m"] * 1e6 == pytest.approx(trunk + 4 * (2048 * 21 * 9 + 21))
    assert (cascade_row["head"], v2_row["head"]) == ("cascade", "deeplabv2")
    assert cascade_row["gflops"] > base["gflops"] > v2_row["gflops"] > 0


def evaluate_predict_export(ckpt, tmp_path):
    """evaluate.py's body at OS8 with flip and two scales, predict.py's on one image, export.py's at OS8."""
    metrics = evaluate_checkpoint(compose_config("evaluate", [f"ckpt={ckpt}", "num_workers=0", "os=8", "tta.flip=true",
                                                              "tta.scales=[0.75,1.0]"]), tmp_path / "eval")
    assert 0 <= metrics["mIoU"] <= 1 and metrics["num_images"] == 3
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / "a.png")
    result = predict(compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={tmp_path / 'pred'}",
                                                "device=cpu", "tta.flip=true"]))
    assert result["written"] == 1 and Image.open(tmp_path / "pred" / "labels" / "a.png").size == (56, 40)
    output = tmp_path / "os8.ts"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={output}", "os=8", "check.sizes=[[64,64]]"]))
    loaded, metadata = load_torchscript(output)
    model, _ = restore(ckpt, output_stride=8)
    images = torch.rand(1, 3, 48, 80)
    with torch.inference_mode():
        assert metadata["output_stride"] == 8 and metadata["head"] == head_of(model)
        torch.testing.assert_close(loaded(images), ExportedModel(model)(images), atol=1e-4, rtol=1e-4)


def test_cascade_trains_resumes_evaluates_and_predicts(tmp_path):
    """scripts/train.py stops at 2 of 3 iterations and resumes; the checkpoint evaluates at OS8 with TTA, predicts."""
    overrides = tiny_overrides(tmp_path / "data", **{"model.head": "cascade", "model.aux_loss": "true",
                                                     "train.iters": 3, "train.eval_every": 0, "train.ckpt_every": 2,
                                                     "model.cascade_blocks": 1})
    run = tmp_path / "run"
    run_script("train.py", [*overrides, "train.stop_at=2", f"hydra.run.dir={run}"])
    run_script("train.py", [*overrides, f"resume={run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={run}"])
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 3 and state["config"]["model"]["head"] == "cascade"
    assert any(k.startswith("cascade.block5.") for k in state["model"])
    evaluate_predict_export(run / "checkpoints" / "last.pt", tmp_path)


def test_deeplabv2_checkpoint_evaluates_and_predicts(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data", **{"model.head": "deeplabv2",
                                                                       "model.aux_loss": "true"})
    evaluate_predict_export(ckpt, tmp_path)


@pytest.mark.parametrize("file_head, model_head", [("cascade", "deeplabv3"), ("deeplabv2", "deeplabv3"),
                                                   ("deeplabv3", "cascade")])
def test_weights_of_another_head_name_it(file_head, model_head):
    """model.weights / evaluate of a file trained with another of the heads: the message names the file's head."""
    file = build_model("resnet18", 3, head=file_head, cascade_blocks=1).state_dict()
    with pytest.raises(WeightsError, match=rf"likely another head \(model\.head={file_head}\)"):
        load_weights(build_model("resnet18", 3, head=model_head, cascade_blocks=1), {"model": file})
