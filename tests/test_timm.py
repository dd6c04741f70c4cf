"""timm encoders (``backbone=timm backbone.name=...``, ``build_model(backbone="timm:<name>")``).

References are timm's own: ``timm.create_model(name, features_only=True, ...)`` with the same weights, and state
dicts of timm's classification models saved from random weights. timm is the ``timm`` extra: these tests skip
without it, and fail in CI (``CI`` set), where the dev extra installs it.
"""

import copy
import json
import runpy
import sys

import pytest
import torch
from helpers import CONFIGS, compose_config, needed, run_script, tiny_overrides

from seg.benchmark.run import run_benchmark, validate_benchmark
from seg.config import ConfigError, model_kwargs, validate_train
from seg.engine.checkpoint import CheckpointError, check_resume_config, restore
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.engine.trainer import train
from seg.export import DYNAMIC_EXPORT_TORCH, ExportError, export_checkpoint, export_model, load_torchscript
from seg.io import UnsafeFileError
from seg.models import build_model
from seg.models.deeplab import convert_sync_batchnorm, fetch_backbone_weights
from seg.models.timm_backbone import TimmBackbone, TimmMissingError, WeightsUnavailableError
from seg.models.weights import WeightsError

timm = needed("timm")

SMALL = "mobilenetv3_large_100"  # the smallest ready config
# The ready configs (configs/backbone/<timm model>.yaml), read from the files so that a new one is tested too.
READY = sorted(p.stem for p in (CONFIGS / "backbone").glob("*.yaml") if "source: timm" in p.read_text()
               and p.stem != "timm")
OLD_TORCH = torch.__version__ < DYNAMIC_EXPORT_TORCH


def measured_strides(backbone, size=64):
    with torch.inference_mode():
        return [size // f.shape[-1] for f in backbone.eval()(torch.rand(1, 3, size, size))]


def test_the_ready_configs_are_the_issues_list():
    assert READY == ["convnext_tiny", "efficientnet_b0", "mobilenetv3_large_100", "resnet50d", "xception65"]


@pytest.mark.parametrize("name, output_stride", [(SMALL, 16), (SMALL, 8), ("resnet18d", 8), ("xception65", 16)])
def test_features_equal_timms_own_feature_network(name, output_stride):
    """Against timm's default extractor (for xception65 its hook-based one, whose keys lack our getter's
    ``model.`` prefix: the tensors are matched in order)."""
    torch.manual_seed(0)
    ours = TimmBackbone(name, output_stride).eval()
    reference = timm.create_model(name, features_only=True, out_indices=ours.indices,
                                  output_stride=output_stride).eval()
    for module in reference.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    theirs = reference.state_dict()
    assert [v.shape for v in theirs.values()] == [v.shape for v in ours.body.state_dict().values()]
    ours.body.load_state_dict(dict(zip(ours.body.state_dict(), theirs.values())))
    images = torch.rand(2, 3, 64, 80)
    with torch.inference_mode():
        expected, actual = reference(images), ours(images)
    assert len(actual) == 3
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    channels = reference.feature_info.channels()
    assert (ours.low_level_channels, ours.aux_channels, ours.out_channels) == tuple(channels)
    assert reference.feature_info.reduction()[0] == 4  # the decoder's map: stride 4


@pytest.mark.parametrize("name", READY)
def test_ready_encoders_run_at_every_output_stride_and_switch_in_place(name):
    """Measured on the maps (not timm's feature_info): stride-4, aux and last map at 8, 16 and 32; a model built at
    16 and switched equals one built at the target stride with the same weights."""
    torch.manual_seed(0)
    backbone = TimmBackbone(name, 16)
    parameters = [id(p) for p in backbone.parameters()]
    images = torch.rand(1, 3, 64, 64)
    for output_stride in (8, 32, 16):
        backbone.set_output_stride(output_stride)
        assert backbone.output_stride == output_stride
        assert measured_strides(backbone) == [4, min(16, output_stride), output_stride]
        fresh = TimmBackbone(name, output_stride).eval()
        fresh.load_state_dict(backbone.state_dict())
        with torch.inference_mode():
            for a, b in zip(backbone.eval()(images), fresh(images)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [id(p) for p in backbone.parameters()] == parameters  # an optimizer keeps the same tensors


def test_multi_grid_dilates_the_last_stage_of_a_timm_resnet():
    backbone = TimmBackbone("resnet18d", 16, multi_grid=(1, 2, 4))
    layer4 = backbone.body.layer4  # BasicBlock units: both 3x3 convs take the unit's rate
    assert [(u.conv1.dilation[0], u.conv2.dilation[0]) for u in layer4] == [(2, 2), (4, 4)]
    assert [u.conv2.padding[0] for u in layer4] == [2, 4]
    backbone.set_output_stride(8)
    assert [(u.conv1.dilation[0], u.conv2.dilation[0]) for u in layer4] == [(4, 4), (8, 8)]
    assert measured_strides(backbone) == [4, 8, 8]
    plain = TimmBackbone("resnet18d", 8)  # timm's own rule: the first unit keeps the previous rate
    assert [(u.conv1.dilation[0], u.conv2.dilation[0]) for u in plain.body.layer4] == [(2, 4), (4, 4)]


def test_multi_grid_without_resnet_stages_names_the_key(cfg_train):
    with pytest.raises(ValueError, match=r"^multi_grid applies to ResNet-like last stages .* mobilenetv3_large_100"):
        build_model(f"timm:{SMALL}", 3, multi_grid=(1, 2, 4))
    with pytest.raises(ConfigError, match=r"^model\.multi_grid applies to ResNet-like .* set it to null"):
        validate_train(cfg_train(backbone=SMALL, **{"model.multi_grid": "[1,2,4]"}))


@pytest.mark.parametrize("name", ["ghostnet_100", "efficientvit_b0"])  # timm: AssertionError / TypeError
def test_a_stride_timm_cannot_build_is_one_line(name, cfg_train):
    with pytest.raises(ValueError, match=rf"^output_stride 16 is not supported by the timm model {name}: it builds at "
                                         r"output stride \[32\]$"):
        build_model(f"timm:{name}", 3, output_stride=16, multi_grid=None)
    with pytest.raises(ConfigError, match=rf"^os 8 is not supported by the timm model {name}"):
        validate_train(cfg_train(backbone="timm", **{"backbone.name": name, "os": 8}))
    model = build_model(f"timm:{name}", 3, output_stride=32, multi_grid=None).eval()
    assert measured_strides(model.backbone) == [4, 16, 32]
    rates = model.aspp.get_rates()
    with pytest.raises(ValueError, match=rf"^output_stride 8 is not supported by the timm model {name}"):
        model.set_output_stride(8)
    assert model.output_stride == 32 and model.aspp.get_rates() == rates  # nothing half-switched


def test_configs_build_the_timm_name(cfg_train):
    for name in READY:
        cfg = cfg_train(backbone=name)
        validate_train(cfg)
        kwargs = model_kwargs(cfg, 3)
        assert kwargs["backbone"] == f"timm:{name}"
        assert kwargs["multi_grid"] == ((1, 2, 4) if name == "resnet50d" else None)
    cfg = cfg_train(backbone="timm", **{"backbone.name": "efficientnet_b1"})
    validate_train(cfg)
    assert model_kwargs(cfg, 3)["backbone"] == "timm:efficientnet_b1" and cfg["model"]["multi_grid"] is None
    old = cfg_train()  # a checkpoint's config written before backbone.source: torchvision's
    del old["backbone"]["source"]
    assert model_kwargs(old, 3)["backbone"] == "resnet18"


def test_resume_reads_a_checkpoint_without_backbone_source_as_torchvision():
    old = {"backbone": {"name": "resnet18"}}  # written before backbone.source existed
    check_resume_config(old, {"backbone": {"source": "torchvision", "name": "resnet18"}}, "last.pt")
    with pytest.raises(CheckpointError, match=r"^cannot resume last\.pt: backbone\.source was 'torchvision' in that "
                                              r"run and is 'timm' now"):
        check_resume_config(old, {"backbone": {"source": "timm", "name": "resnet18"}}, "last.pt")


def test_unknown_timm_model_names_the_key_and_close_names(cfg_train):
    with pytest.raises(ConfigError, match=r"^backbone\.name names no timm model: 'mobilenetv3_large_10'; close "
                                          r"names: mobilenetv3_large_100"):
        validate_train(cfg_train(backbone="timm", **{"backbone.name": "mobilenetv3_large_10"}))
    result = run_script("train.py", ["backbone=timm", "device=cpu"], check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: backbone.name must be set on the command line, e.g. backbone.name=..."]


def test_missing_timm_package_says_what_to_install(monkeypatch, cfg_train):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(TimmMissingError, match=r'^timm encoders need the timm package, which is not installed: '
                                               r'pip install -e "\.\[timm\]"$'):
        validate_train(cfg_train(backbone=SMALL))
    validate_train(cfg_train())  # the built-in ResNets do not need it


def test_local_weights_file_loads_through_timms_pretrained_loading(tmp_path):
    """A timm classification model's state dict (random weights) as backbone.pretrained=PATH."""
    torch.manual_seed(1)
    classifier = timm.create_model("resnet18d")
    path = tmp_path / "resnet18d.pth"
    torch.save(classifier.state_dict(), path)
    model = build_model("timm:resnet18d", 3, multi_grid=None, pretrained=str(path))
    loaded = model.backbone.body.state_dict()
    expected = classifier.state_dict()
    assert len(loaded) == len(expected) - 2  # all but the classifier (fc.weight, fc.bias)
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key
    safetensors = pytest.importorskip("safetensors.torch")  # installed with timm
    safetensors.save_file(classifier.state_dict(), str(tmp_path / "resnet18d.safetensors"))
    model = build_model("timm:resnet18d", 3, multi_grid=None, pretrained=str(tmp_path / "resnet18d.safetensors"))
    assert all(torch.equal(v, expected[k]) for k, v in model.backbone.body.state_dict().items())
    with pytest.raises(WeightsError, match=r"^backbone weights for the timm model mobilenetv3_large_100 "
                                           r"\(backbone\.pretrained\) .*resnet18d\.pth do not fit it: "):
        build_model(f"timm:{SMALL}", 3, multi_grid=None, pretrained=str(path))
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(UnsafeFileError, match=r"notes\.pth is a text file .* must be a file written by torch\.save"):
        build_model(f"timm:{SMALL}", 3, multi_grid=None, pretrained=str(tmp_path / "notes.pth"))


def test_offline_imagenet_weights_say_what_was_looked_for_and_where(tmp_path, monkeypatch, cfg_train):
    """HF_HUB_OFFLINE=1 answers at once (without it, an unreachable hub takes ~45 s of retries)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, when huggingface_hub is imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # a machine that has the file
    message = (rf"^ImageNet weights for the timm model {SMALL} could not be loaded from the Hugging Face hub file "
               rf"timm/{SMALL}\.ra_in1k/model\.safetensors \(cache {tmp_path / 'hub'}\) \(\w+\): .*huggingface-cli "
               r"download .*backbone\.pretrained=PATH .*backbone\.pretrained=none$")
    with pytest.raises(WeightsUnavailableError, match=message):
        build_model(f"timm:{SMALL}", 3, multi_grid=None, pretrained="imagenet")
    with pytest.raises(WeightsUnavailableError, match=message):
        fetch_backbone_weights(f"timm:{SMALL}")
    with pytest.raises(WeightsUnavailableError, match=message):  # train.py stops before any work
        train(cfg_train(backbone=SMALL, **{"backbone.pretrained": "imagenet"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sync_batchnorm_keeps_timms_norm_and_activation_layers():
    """DDP on CUDA converts BatchNorms; torch's converter would drop the activation inside timm's BatchNormAct2d."""
    torch.manual_seed(0)
    model = build_model("timm:efficientnet_b0", 3, multi_grid=None).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = model(images)["out"]
    torch_converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
    converted = convert_sync_batchnorm(model).eval()
    kinds = {type(m).__name__ for m in converted.modules()}
    assert "SyncBatchNormAct" in kinds and "BatchNormAct2d" not in kinds and "BatchNorm2d" not in kinds
    with torch.inference_mode():  # eval: SyncBatchNorm normalises with its running statistics, no process group
        torch.testing.assert_close(converted(images)["out"], expected, rtol=0, atol=0)
        # why timm's converter is used: torch's keeps the activation modules but never calls them
        assert not torch.allclose(torch_converted(images)["out"], expected, atol=1e-3)


def test_receptive_field_tool_says_it_covers_the_resnets(capsys):
    main = runpy.run_path(str(CONFIGS.parent / "scripts" / "receptive_field.py"))["main"]
    with pytest.raises(SystemExit) as exited:
        main([f"backbone={SMALL}"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(  # "<program>: error: ..."
        ": error: the receptive-field analysis covers only the built-in ResNets (resnet18, "
        "resnet34, resnet50, resnet101), not 'mobilenetv3_large_100' (MobileNetV3 and timm encoders included)")


# -- everything the built-in ResNets do: train, resume, evaluate with TTA, predict, export, benchmark --------------

TIMM_RUN = {"backbone": SMALL, "model.head": "deeplabv3plus", "model.aux_loss": "true", "train.iters": 3,
            "train.eval_every": 0, "train.ckpt_every": 2, "train.tb_images": 0}


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """3 iterations straight, and the same run stopped at 2 and resumed in a new process."""
    root = tmp_path_factory.mktemp("timm_run")
    overrides = tiny_overrides(root / "data", **TIMM_RUN)
    straight = train(compose_config("train", overrides), root / "straight")
    train(compose_config("train", [*overrides, "train.stop_at=2"]), root / "resumed")
    run_script("train.py", [*overrides, f"resume={root / 'resumed' / 'checkpoints' / 'last.pt'}",
                            f"hydra.run.dir={root / 'hydra_resume'}"])
    return root, straight


def test_timm_training_resumes_exactly(timm_run):
    root, straight = timm_run
    a = torch.load(root / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(root / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 3 and a["config"]["backbone"]["source"] == "timm"
    assert any(k.startswith("backbone.body.") for k in a["model"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert len(straight["losses"]) == 3


def test_timm_checkpoint_evaluates_with_tta_and_at_another_stride(timm_run, cfg_eval):
    root, _ = timm_run
    ckpt = root / "straight" / "checkpoints" / "last.pt"
    metrics = evaluate_checkpoint(cfg_eval(ckpt, "tta.flip=true", "tta.scales=[0.75,1.0]"), root / "eval")
    assert 0 <= metrics["mIoU"] <= 1 and metrics["num_images"] == 3
    assert json.loads((root / "eval" / "metrics.json").read_text()) == metrics
    at8 = evaluate_checkpoint(cfg_eval(ckpt, "os=8"), root / "eval_os8")
    assert 0 <= at8["mIoU"] <= 1
    model, _ = restore(ckpt, output_stride=8)  # the same weights, re-strided in place
    assert model.output_stride == 8 and measured_strides(model.backbone) == [4, 8, 8]


def test_timm_checkpoint_predicts_and_exports_to_torchscript(timm_run, tmp_path):
    root, _ = timm_run
    ckpt = root / "straight" / "checkpoints" / "last.pt"
    images = tmp_path / "images"
    images.mkdir()
    torch.manual_seed(0)
    from PIL import Image

    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(images / "a.png")
    result = predict(compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={tmp_path / 'out'}",
                                                "device=cpu"]))
    assert result["written"] == 1 and Image.open(tmp_path / "out" / "labels" / "a.png").size == (56, 40)
    output = tmp_path / "model.ts"
    report = export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={output}",
                                                         "check.sizes=[[64,64],[48,80],[65,97]]"]))
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    loaded, metadata = load_torchscript(output)
    model, _ = restore(ckpt)
    images = torch.rand(1, 3, 57, 83)
    with torch.inference_mode():
        expected = model(((images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                          / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)))["out"]
        torch.testing.assert_close(loaded(images), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(OLD_TORCH, reason=f"torch.export keeps H, W free from torch {DYNAMIC_EXPORT_TORCH} on")
@pytest.mark.parametrize("format, suffix", [("export", ".pt2"), ("onnx", ".onnx")])
def test_timm_checkpoint_exports_with_free_height_and_width(timm_run, tmp_path, format, suffix):
    if format == "onnx":
        for package in ("onnx", "onnxscript", "onnxruntime"):
            needed(package)
    root, _ = timm_run
    output = tmp_path / f"model{suffix}"
    report = export_checkpoint(compose_config("export", [f"ckpt={root / 'straight' / 'checkpoints' / 'last.pt'}",
                                                         f"output={output}", f"format={format}",
                                                         "check.sizes=[[64,64],[48,80],[65,97]]"]))
    assert [r["input"] for r in report["parity"]] == [[1, 3, 64, 64], [2, 3, 48, 80], [1, 3, 65, 97]]
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"]) and output.is_file()


def test_benchmark_compares_only_the_built_in_resnets_with_torchvision():
    cfg = compose_config("benchmark", ["backbone=timm", "backbone.name=resnet50", "compare=torchvision"])
    with pytest.raises(ConfigError, match=r"^compare=torchvision supports backbone \['resnet50', 'resnet101'\] .*"
                                          r"got 'timm:resnet50'"):
        validate_benchmark(cfg)


@pytest.mark.skipif(OLD_TORCH, reason=f"torch.export keeps H, W free from torch {DYNAMIC_EXPORT_TORCH} on")
def test_a_format_an_encoder_cannot_take_is_one_line(tmp_path):
    """torch.export cannot prove its size guards for ResNet-D's ceil-mode shortcut pooling (docs/models.md)."""
    model = build_model("timm:resnet18d", 3, multi_grid=None).eval()
    with pytest.raises(ExportError, match=r"^format=export cannot export this model \(\w+: Constraints violated "
                                          r"\(height, width\)!.*\): try format=torchscript or format=onnx$"):
        export_model(model, tmp_path / "model.pt2", "export", check_sizes=[[64, 64]])
    assert list(tmp_path.iterdir()) == []


def test_benchmark_runs_a_timm_encoder(tmp_path):
    cfg = compose_config("benchmark", [f"backbone={SMALL}", "batch_size=2", "crop_size=64", "eval_size=[64,96]",
                                       "steps=1", "warmup=0", "num_workers=0", "data_steps=0", "device=cpu",
                                       "cpu_threads=1", "micro=false", "output=null"])
    result = run_benchmark(cfg, tmp_path, echo=False)
    assert result["settings"]["backbone"] == f"timm:{SMALL}" and result["train"]["images_per_s"] > 0
    assert result["inference"]["images_per_s"] > 0  # at eval_os 8: the model re-strided in place
    dilations = result["model"]["dilations"]  # the training model, at os=16: timm dilates its last stage by 2
    assert result["settings"]["os"] == 16 and max(max(rates) for rates in dilations.values()) == 2


def test_state_dict_paths_are_the_feature_networks():
    """A whole model's backbone keys are timm's feature network's under ``backbone.body.``: the layout a timm
    user recognises (no renaming)."""
    model = build_model(f"timm:{SMALL}", 3, multi_grid=None)
    reference = timm.create_model(SMALL, features_only=True, out_indices=model.backbone.indices)
    keys = {k[len("backbone.body."):] for k in model.state_dict() if k.startswith("backbone.")}
    assert keys == set(reference.state_dict())
