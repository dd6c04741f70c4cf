"""The context module (model.head=context) and the dilated U-Net (model=unet_dilated) against known answers:
Yu & Koltun's Table 1 and identity initialisation, receptive fields measured by back-propagation, shapes at odd
sizes, export parity, and a train + resume + evaluate + predict through the scripts."""

import json
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, compose_config, losses_from_log, needed, run_script, tiny_checkpoint, tiny_overrides
from test_export import NEEDS_DYNAMIC_EXPORT, OTHER_SIZES, assert_parity

from seg.benchmark.run import run_benchmark
from seg.config import ConfigError, model_kwargs, validate_train
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.engine.trainer import train
from seg.errors import UserError
from seg.export import export_model
from seg.models import build_model
from seg.models.context import ContextModule
from seg.models.spec import arguments_from_config

SCRIPT = REPO / "scripts" / "receptive_field.py"
NARROW = [4, 8, 8, 16, 16]  # U-Net widths that keep a test at seconds
UNET = {"model": "unet_dilated", "model.unet_widths": f"[{','.join(map(str, NARROW))}]"}
CONTEXT = {"model.head": "context", "model.context": "large"}


def narrow_unet(num_classes=3):
    return build_model("unet", num_classes, multi_grid=None, head="unet_dilated", unet_widths=NARROW)


def positive(model):
    """Every weight positive (and positive inputs) keeps every ReLU open, so no path cancels in a gradient."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.abs() + 0.01)
    return model.eval()


def measured_extent(model, x, row, col, axis):
    """Input rows (axis 0) or columns (1) that output pixel (row, col) depends on, by back-propagation (max-pools
    must be swapped for average pools first: a max passes its gradient to one pixel)."""
    x = x.clone().requires_grad_(True)
    output = model(x)
    output = output["out"] if isinstance(output, dict) else output
    output[0, 0, row, col].backward()
    reached = torch.nonzero(x.grad[0].abs().sum(dim=(0, 2 - axis)))
    assert reached.min() > 0 and reached.max() < x.shape[2 + axis] - 1, "reaches the border: use a larger input"
    return int(reached.max() - reached.min() + 1)


# -- the context module ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("context, widths", [("basic", [5] * 8), ("large", [10, 10, 20, 40, 80, 160, 160, 5])])
def test_context_module_is_table_1(context, widths):
    module = ContextModule(5, context)
    convs = module.convs()
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1]
    assert [c.out_channels for c in convs] == widths
    assert sum(isinstance(m, torch.nn.ReLU) for m in module) == 7  # truncation after every layer but the last
    x = torch.rand(1, 5, 101, 101)  # Table 1's 67x67, measured by back-propagation
    assert [measured_extent(positive(module), x, 50, 50, axis) for axis in (0, 1)] == [67, 67]


def test_identity_initialisation_passes_the_input_through():
    x = torch.rand(2, 6, 40, 52) * 10
    signed = torch.randn(2, 6, 40, 52)
    with torch.no_grad():
        basic = ContextModule(6, "basic").eval()
        assert torch.equal(basic(x), x)  # the identity, exactly
        assert torch.equal(basic(signed), signed.clamp(min=0))  # the truncations cut negative scores
        exact = ContextModule(6, "large", noise=0.0).eval()  # the generalised identity without its noise
        torch.testing.assert_close(exact(x), x, atol=1e-5, rtol=1e-6)  # up to the conv algorithms' rounding
        large = ContextModule(6, "large").eval()
        torch.testing.assert_close(large(x), x, atol=0.05 * x.max().item(), rtol=0)
    first = large.convs()[0].weight  # C -> 2C: input channel a feeds outputs 2a and 2a + 1 at C / 2C = 1/2
    centre = first[:, :, 1, 1]
    assert torch.allclose(centre, torch.repeat_interleave(torch.eye(6), 2, dim=0) * 0.5, atol=0.01)
    assert 0 < (first - first.round(decimals=1)).std() < 0.01  # noise with sigma << C / c_i+1 breaks the ties


def test_context_model_scores_pass_through_the_module_at_initialisation():
    torch.manual_seed(0)
    model = build_model("resnet18", 4, head="context", aux_loss=True).eval()
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        result = model(x)
        _, _, high = model.backbone(x)
        scores = model.classifier(high).clamp(min=0)
        expected = F.interpolate(scores, size=(64, 80), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result["out"], expected)
    assert result["aux"].shape == (1, 4, 64, 80)
    model.set_output_stride(8)
    assert model.output_stride == 8 and model(x)["out"].shape == (1, 4, 64, 80)


def test_receptive_field_tool_reports_the_module_and_the_whole_model(capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["backbone=resnet18", "os=16", "model.head=context", "json=true"])
    report = json.loads(capsys.readouterr().out)
    assert [row["receptive_field"] for row in report["module"]["layers"]] == [3, 5, 9, 17, 33, 65, 67, 67]
    assert report["module"]["receptive_field"] == 67 and report["module"]["coverage"]["holes"] == 0
    main(["backbone=resnet18", "os=16", "json=true"])  # the same backbone under the ASPP: its own figure
    backbone = json.loads(capsys.readouterr().out)["receptive_field"]
    assert report["backbone_receptive_field"] == backbone
    assert report["receptive_field"] == backbone + 66 * 16
    main(["backbone=resnet18", "model.head=context", "model.context=large"])
    text = capsys.readouterr().out
    assert "context module (large)" in text and "receptive field: 67x67 score-map pixels" in text


# -- the dilated U-Net ------------------------------------------------------------------------------------------------

def test_unet_layout_and_shapes_at_any_size():
    model = build_model("unet", 5, multi_grid=None, head="unet_dilated")  # the default widths
    stages = model.backbone.stages()
    assert [blocks[0][0].out_channels for blocks in stages.values()] == [64, 128, 256, 512, 1024]
    assert [blocks[0][0].dilation[0] for blocks in stages.values()] == [1, 1, 1, 2, 2]
    assert [[m.p for m in blocks[0] if isinstance(m, torch.nn.Dropout)] for blocks in stages.values()] == \
        [[], [], [], [0.5], [0.5]]
    assert [step.up.kernel_size + step.up.stride for step in model.decoder] == [(2, 2, 2, 2)] * 4
    assert model.classifier.kernel_size == (1, 1) and model.output_stride == 16
    narrow = narrow_unet(7).eval()
    with torch.no_grad():
        for shape in [(1, 3, 37, 50), (2, 3, 64, 64), (1, 3, 17, 100), (1, 3, 1, 1)]:
            assert narrow(torch.rand(*shape))["out"].shape == (shape[0], 7, *shape[2:])
        x = torch.rand(1, 3, 48, 80)  # multiples of 16: the resizes are exact copies
        features = narrow.backbone(x)
        y = features[-1]
        for index, step in enumerate(narrow.decoder):
            y = step(y, features[-2 - index])
        assert torch.equal(narrow(x)["out"], narrow.classifier(y))


def test_unet_receptive_field_tool_matches_back_propagation(capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["model=unet_dilated", f"model.unet_widths=[{','.join(map(str, NARROW))}]", "json=true"])
    report = json.loads(capsys.readouterr().out)
    assert [s["receptive_field"] for s in report["stages"]] == [5, 14, 32, 100, 236]  # 1 + sum d (k - 1) jump
    model = positive(narrow_unet(1))
    model.backbone.pool = torch.nn.AvgPool2d(2, 2)  # same window; a max-pool would pass its gradient to one pixel
    x = torch.rand(1, 3, 416, 32)
    extents = [measured_extent(model, x, row, 16, axis=0) for row in range(200, 216)]  # one period of phases
    assert (min(extents), max(extents)) == (report["receptive_field_min"], report["receptive_field"]) == (284, 300)
    main(["model=unet_dilated"])
    assert "receptive field of the output: 284x284 to 300x300 input pixels" in capsys.readouterr().out


# -- configuration, old checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["model=unet_dilated", "os=8"], "os must be 16 with head unet_dilated"),
    (["model=unet_dilated", "backbone.name=resnet50"], "backbone.name must be unet with head unet_dilated"),
    (["model=unet_dilated", "backbone.pretrained=imagenet"], "backbone.pretrained must be none with head unet_dilated"),
    (["model=unet_dilated", "model.unet_widths=[8,16]"], "model.unet_widths must be 5 positive integers"),
    (["model=unet_dilated", "model.aux_loss=true"], "model.aux_loss must be false with head unet_dilated"),
    (["backbone.name=unet"], "backbone.name unet is the dilated U-Net's own encoder"),
    (["model.context=large"], "model.context must be null with head deeplabv3"),
    (["model.head=context", "model.context=huge"], "model.context must be one of ['basic', 'large']"),
    (["model.head=context", "model.aspp_rates=[6,12,18]"], "model.aspp_rates must be null with head context"),
])
def test_meaningless_combinations_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate_train(compose_config("train", overrides))
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_presets_and_old_configs_build():
    cfg = compose_config("train", ["model=unet_dilated"])
    validate_train(cfg)
    arguments = model_kwargs(cfg, 3)
    assert (arguments["backbone"], arguments["head"], arguments["unet_widths"]) == (
        "unet", "unet_dilated", (64, 128, 256, 512, 1024))
    old = compose_config("train", ["backbone=resnet18"])
    for key in ("context", "unet_widths", "unet_dropout"):
        old["model"].pop(key, None)  # a checkpoint's config written before these keys
    arguments = arguments_from_config(old, 3)
    assert (arguments["context"], arguments["unet_widths"], arguments["unet_dropout"]) == (None, None, 0.5)
    assert type(build_model(**arguments)).__name__ == "DeepLabV3"


# -- export, train, resume, evaluate, predict -----------------------------------------------------------------------

def _models():
    torch.manual_seed(0)
    return {"unet": narrow_unet(3).eval(), "context": build_model("resnet18", 3, head="context",
                                                                  context="large").eval()}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.parametrize("format", ["torchscript", pytest.param("onnx", marks=NEEDS_DYNAMIC_EXPORT),
                                    pytest.param("export", marks=NEEDS_DYNAMIC_EXPORT)])
@pytest.mark.parametrize("name", ["unet", "context"])
def test_export_parity(models, name, format, tmp_path):
    model = models[name]
    if format == "onnx":
        needed("onnxscript")
        onnxruntime = needed("onnxruntime")
    path = tmp_path / f"model.{format}"
    report = export_model(model, path, format, {"class_names": ["a", "b", "c"]}, check_sizes=[[64, 64], [65, 97]])
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    if format == "torchscript":
        loaded = torch.jit.load(str(path))
    elif format == "export":
        loaded = torch.export.load(str(path)).module()
    else:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        loaded = lambda images: session.run(None, {"images": images.numpy()})[0]  # noqa: E731
    assert_parity(loaded, model)
    assert OTHER_SIZES[-1][1] % 16  # parity includes a size the U-Net must resize


@pytest.mark.parametrize("model, scripts", [(UNET, True), ({"backbone": "resnet18", **CONTEXT}, False)],
                         ids=["unet_dilated", "context"])
def test_train_resume_evaluate_predict(model, scripts, tmp_path, data_root, cfg_train, cfg_eval):
    """The U-Net's stop and resume go through scripts/train.py in new processes, as a user's would; the context
    model's run in this process (the same code below the script)."""
    overrides = {"train.iters": 4, "train.eval_every": 0, "train.ckpt_every": 2, **model}
    straight = train(cfg_train(**overrides), tmp_path / "straight")
    resumed = tmp_path / "resumed"
    if scripts:
        run_script("train.py", [*tiny_overrides(data_root, **overrides, **{"train.stop_at": 2}),
                                f"hydra.run.dir={resumed}"])
        run_script("train.py", [*tiny_overrides(data_root, **overrides), f"resume={resumed}",
                                f"hydra.run.dir={resumed}"])
    else:
        train(cfg_train(**overrides, **{"train.stop_at": 2}), resumed)
        train(cfg_train(**overrides, resume=str(resumed / "checkpoints" / "last.pt")), resumed)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert straight["losses"] == losses_from_log(resumed / "train.log")
    ckpt = resumed / "checkpoints" / "last.pt"
    metrics = evaluate_checkpoint(cfg_eval(ckpt, "tta.scales=[0.75,1.0]", "tta.flip=true"), tmp_path / "eval")
    assert metrics["num_images"] == 3 and 0 <= metrics["mIoU"] <= 1
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray((torch.rand(45, 71, 3) * 255).byte().numpy()).save(images / "a.png")
    predict(compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={tmp_path / 'pred'}"]))
    assert Image.open(tmp_path / "pred" / "labels" / "a.png").size == (71, 45)


def test_a_trained_unet_at_another_output_stride_is_one_line(tmp_path, cfg_eval):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data", **UNET)
    with pytest.raises(UserError, match=r"^output_stride must be 16 for the dilated U-Net .*got 8$"):
        evaluate_checkpoint(cfg_eval(ckpt, "os=8"), tmp_path / "eval")
    assert Path(ckpt).is_file()


def test_models_table_rows_and_table_1_parameter_count():
    """The models table's rows (the U-Net at its own stride whatever the table's), and the basic module's parameters
    as Table 1 gives them: seven 3x3 C -> C convolutions and a 1x1, each with C biases."""
    from seg.benchmark.models import model_rows

    names = ["resnet50, context module (basic)", "dilated U-Net 64-1024"]
    rows = model_rows(output_stride=8, size=32, rounds=1, warmup=0, include_timm=False, names=names)
    assert [(r["name"], r["head"], r["output_stride"]) for r in rows] == [
        ("resnet50", "deeplabv3", 8), ("resnet50, context module (basic)", "context", 8),
        ("dilated U-Net 64-1024", "unet_dilated", 16)]
    c = 21
    module = sum(p.numel() for p in build_model("resnet50", c, head="context").context.parameters())
    assert module == 7 * (c * c * 9 + c) + (c * c + c)


@pytest.mark.parametrize("model", [UNET, {"backbone": "resnet18", **CONTEXT}], ids=["unet_dilated", "context"])
def test_benchmark_runs_both(model, tmp_path):
    overrides = [f"{k}={v}" for k, v in model.items()]
    cfg = compose_config("benchmark", [*overrides, "batch_size=2", "crop_size=32", "eval_size=[32,48]", "steps=1",
                                       "warmup=0", "data_steps=0", "micro=false", "device=cpu", "cpu_threads=1",
                                       "eval_os=16", "output=null"])
    result = run_benchmark(cfg, tmp_path / "run", echo=False)
    expected = build_model(**model_kwargs(cfg, result["settings"]["num_classes"]))
    assert result["model"]["params"] == sum(p.numel() for p in expected.parameters())
    if "model" in model:  # the U-Net's stages as the benchmark reads them: dilation 2 in the two deepest
        assert result["model"]["dilations"] == {"stage1": [1, 1], "stage2": [1, 1], "stage3": [1, 1],
                                                "stage4": [2, 2], "stage5": [2, 2]}
