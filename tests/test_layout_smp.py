"""segmentation_models_pytorch (smp) DeepLabV3 / DeepLabV3Plus files: smp's own models (random weights and
BatchNorm statistics) saved as a plain state dict and with ``save_pretrained``, loaded by ``model_from_file``, give
smp's logits. Inputs are divisible by 16, as smp requires."""

import json
import re

import pytest
import torch
from helpers import compose_config, needed, tiny_overrides
from test_peers import assert_evaluates_and_exports, assert_same_logits, randomised

from seg.config import model_kwargs
from seg.engine.trainer import train
from seg.errors import MissingFileError
from seg.models import build_model, load_weights, model_from_file
from seg.models.layouts import recognise
from seg.models.layouts.smp import PretrainedFolder
from seg.models.weights import WeightsError

smp = needed("segmentation_models_pytorch")
needed("safetensors")

IMAGE = (1, 3, 64, 96)


def smp_model(plus: bool, encoder: str, classes: int = 5, **kwargs) -> torch.nn.Module:
    builder = smp.DeepLabV3Plus if plus else smp.DeepLabV3
    return randomised(builder(encoder_name=encoder, encoder_weights=None, classes=classes, **kwargs))


def assert_parity(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    x = torch.randn(*IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_same_logits(ours(x)["out"], theirs(x))


@pytest.mark.parametrize("plus, encoder", [(False, "resnet18"), (True, "resnet34"), (True, "resnet50")])
@pytest.mark.parametrize("saved", ["state dict", "save_pretrained folder"])
def test_smp_logits(tmp_path, plus, encoder, saved):
    theirs = smp_model(plus, encoder)
    if saved == "state dict":
        path = tmp_path / "smp.pth"
        torch.save(theirs.state_dict(), path)
    else:
        path = tmp_path / "smp_model"
        theirs.save_pretrained(path)
        assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    ours, report = model_from_file(path)
    assert report.layout == f"smp DeepLabV3{'Plus' if plus else ''} {encoder} ({saved})"
    assert len(report.loaded) == len(ours.state_dict()) == len(theirs.state_dict())
    assert ours.output_stride == (16 if plus else 8)  # smp's defaults
    assert_parity(ours, theirs)


@pytest.mark.parametrize("plus", [False, True])
def test_smp_aspp_separable_other_than_the_default(tmp_path, plus):
    """decoder_aspp_separable=True on DeepLabV3, False on DeepLabV3Plus: model.aspp_separable, from the keys."""
    theirs = smp_model(plus, "resnet18", decoder_aspp_separable=not plus)
    torch.save(theirs.state_dict(), tmp_path / "smp.pth")
    ours, _ = model_from_file(tmp_path / "smp.pth")
    assert_parity(ours, theirs)


def test_folder_records_the_stride_and_rates_a_state_dict_takes_os(tmp_path):
    """save_pretrained's config.json gives the stride and rates; a plain state dict gets smp's default stride
    and ``os=`` switches it (the rates scale with it, as for every model here)."""
    theirs = smp_model(False, "resnet18", encoder_output_stride=16, decoder_atrous_rates=(6, 12, 18))
    theirs.save_pretrained(tmp_path / "folder")
    ours, _ = model_from_file(tmp_path / "folder")
    assert ours.output_stride == 16 and ours.aspp.get_rates() == [6, 12, 18]
    assert_parity(ours, theirs)
    torch.save(theirs.state_dict(), tmp_path / "plain.pth")
    default, _ = model_from_file(tmp_path / "plain.pth")
    assert default.output_stride == 8 and default.aspp.get_rates() == [12, 24, 36]
    switched, _ = model_from_file(tmp_path / "plain.pth", output_stride=16)
    assert_parity(switched, theirs)


@pytest.mark.parametrize("plus, encoder", [(True, "tu-resnet18"), (False, "tu-mobilenetv3_large_100")])
def test_smp_timm_encoder_folder_logits(tmp_path, plus, encoder):
    """smp's tu-<timm model> encoder is timm's features_only network (encoder.model.*), which TimmBackbone builds
    with the same keys (backbone.body.*); the folder's config.json names the model."""
    needed("timm")
    theirs = smp_model(plus, encoder)
    theirs.save_pretrained(tmp_path / "folder")
    ours, report = model_from_file(tmp_path / "folder")
    assert report.layout == f"smp DeepLabV3{'Plus' if plus else ''} {encoder} (save_pretrained folder)"
    assert ours.backbone.name == encoder[len("tu-"):] and ours.output_stride == (16 if plus else 8)
    assert_parity(ours, theirs)


def test_wrong_architecture_for_a_timm_encoder_names_the_keys_that_build_it(tmp_path):
    """No preset for smp's timm encoders: the error lists the config keys, which build the model the file fills."""
    needed("timm")
    smp_model(True, "tu-resnet18", classes=3).save_pretrained(tmp_path / "folder")
    with pytest.raises(WeightsError) as raised:
        load_weights(build_model("resnet18", 3), tmp_path / "folder")
    keys = re.search(r"train with the architecture it was trained with \((.*?)\), or take", str(raised.value))
    assert keys and "backbone.source=timm backbone.name=resnet18 " in keys.group(1)
    cfg = compose_config("train", keys.group(1).split())
    report = load_weights(build_model(**model_kwargs(cfg, 3, "none")), tmp_path / "folder")
    assert not report.missing and not report.unexpected


def test_smp_xception65_keys_map_onto_timm_s_getter_extractor():
    """smp extracts xception65's features with timm's hooks (FeatureHookNet: stem_0, blocks_3, ...), TimmBackbone
    with timm's getter (model.stem.0, ...): every tensor maps, with its shape (on the meta device: no weights;
    the logits, 2.2e-7 apart, were compared by hand, docs/peers.md)."""
    needed("timm")
    with torch.device("meta"):
        theirs = smp.DeepLabV3Plus(encoder_name="tu-xception65", encoder_weights=None, classes=3)
        config = {**theirs.config, "_model_class": "DeepLabV3Plus"}  # as save_pretrained writes it
        record = recognise(PretrainedFolder(config, theirs.state_dict()))
        ours = build_model(**record.arguments).state_dict()
    assert any(key.startswith("encoder.model.stem_0.") for key in theirs.state_dict())
    assert {k: v.shape for k, v in record.state.items()} == {k: v.shape for k, v in ours.items()}


def test_older_smp_deeplabv3_keys(tmp_path):
    """smp's DeepLabV3 decoder was a Sequential (decoder.0/1/2); its load_state_dict renames them, so do we."""
    theirs = smp_model(False, "resnet18")
    renamed = {key.replace("decoder.aspp.", "decoder.0.").replace("decoder.conv.", "decoder.1.")
               .replace("decoder.bn.", "decoder.2."): value for key, value in theirs.state_dict().items()}
    assert any(key.startswith("decoder.0.") for key in renamed)
    torch.save(renamed, tmp_path / "old.pth")
    ours, _ = model_from_file(tmp_path / "old.pth")
    assert_parity(ours, theirs)


def test_a_lone_safetensors_file_and_other_folders(tmp_path):
    theirs = smp_model(True, "resnet18")
    theirs.save_pretrained(tmp_path / "folder")
    ours, report = model_from_file(tmp_path / "folder" / "model.safetensors")  # config.json beside it
    assert report.layout == "smp DeepLabV3Plus resnet18 (save_pretrained folder)"
    from safetensors.torch import save_file
    save_file(theirs.state_dict(), str(tmp_path / "alone.safetensors"))
    ours, report = model_from_file(tmp_path / "alone.safetensors")
    assert report.layout == "smp DeepLabV3Plus resnet18 (state dict)"
    assert_parity(ours, theirs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="is a folder without model.safetensors: the one folder read as "
                                               "weights is what smp's save_pretrained writes"):
        model_from_file(tmp_path / "empty")
    with pytest.raises(MissingFileError, match="model weights not found: .*absent.safetensors"):
        model_from_file(tmp_path / "absent.safetensors")


def test_backbone_pretrained_takes_the_encoder_of_an_smp_folder(tmp_path):
    theirs = smp_model(False, "resnet18")
    theirs.save_pretrained(tmp_path / "folder")
    ours = build_model("resnet18", 3, pretrained=str(tmp_path / "folder"))
    for key, value in theirs.encoder.state_dict().items():
        assert torch.equal(ours.backbone.state_dict()[key], value)


def test_preset_fine_tunes_from_an_smp_folder(tmp_path, data_root):
    """model=smp_... builds smp's architecture and model.weights=<its folder> fills all of it but the classifier,
    which the dataset's 6 classes re-initialise."""
    smp_model(True, "resnet18", classes=21).save_pretrained(tmp_path / "folder")
    cfg = compose_config("train", tiny_overrides(data_root, **{
        "model": "smp_deeplabv3plus_resnet18", "model.weights": tmp_path / "folder", "train.iters": 1,
        "train.eval_every": 0, "train.ckpt_every": 1}))
    train(cfg, tmp_path / "run")
    ours, report = model_from_file(tmp_path / "run" / "checkpoints" / "last.pt")
    assert report.layout.startswith("seg checkpoint") and ours.decoder.align_corners and ours.align_corners
    depthwise, pointwise = ours.decoder.aspp_conv[0]  # smp's SeparableConv2d: no BN between
    assert depthwise.groups == 256 and pointwise.kernel_size == (1, 1)


def test_wrong_architecture_names_the_preset_which_builds_it(tmp_path):
    path = tmp_path / "smp.pth"
    torch.save(smp_model(True, "resnet34", classes=21).state_dict(), path)
    with pytest.raises(WeightsError) as raised:
        load_weights(build_model("resnet34", 21), path)
    message = str(raised.value)
    assert "smp DeepLabV3Plus resnet34 (state dict)" in message
    assert "train with model=smp_deeplabv3plus_resnet34 (it sets backbone.name=resnet34 os=16" in message
    cfg = compose_config("train", ["model=smp_deeplabv3plus_resnet34"])
    report = load_weights(build_model(**model_kwargs(cfg, 21, "none")), path)
    assert not report.missing and not report.unexpected


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "resnet50", "resnet101"])
def test_each_smp_file_has_a_preset_that_builds_it(plus, encoder):
    builder = smp.DeepLabV3Plus if plus else smp.DeepLabV3
    record = recognise(builder(encoder_name=encoder, encoder_weights=None, classes=21).state_dict())
    assert record.preset == f"smp_deeplabv3{'plus' if plus else ''}_{encoder}"
    cfg = compose_config("train", [f"model={record.preset}"])
    assert model_kwargs(cfg, 21, "none") == {**model_kwargs(cfg, 0, "none"), **record.arguments, "pretrained": "none"}


@pytest.mark.parametrize("make, words", [
    (lambda: smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None, aux_params={"classes": 2}),
     "aux_params"),
    (lambda: smp.DeepLabV3Plus(encoder_name="tu-resnet18", encoder_weights=None),
     "on a timm encoder (encoder.model.* keys), whose name a plain state dict does not record: load the folder"),
    (lambda: smp.DeepLabV3(encoder_name="mobilenet_v2", encoder_weights=None),
     "smp DeepLabV3 file on its encoder, which this project does not read yet")])
def test_smp_files_this_project_does_not_build_are_named(tmp_path, make, words):
    torch.save(make().state_dict(), tmp_path / "smp.pth")
    with pytest.raises(WeightsError, match="an smp DeepLabV3") as raised:
        model_from_file(tmp_path / "smp.pth")
    assert words in str(raised.value)


def test_a_folder_of_another_smp_model_is_named(tmp_path):
    smp.Unet(encoder_name="resnet18", encoder_weights=None).save_pretrained(tmp_path / "unet")
    with pytest.raises(WeightsError, match=r"a save_pretrained folder of an smp Unet \(its config.json\): of "
                                           "smp's models this project builds DeepLabV3 and DeepLabV3Plus"):
        model_from_file(tmp_path / "unet")


def test_folder_config_other_than_the_defaults_is_refused(tmp_path):
    smp_model(False, "resnet18").save_pretrained(tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    (tmp_path / "folder" / "config.json").write_text(json.dumps({**config, "upsampling": 2}))
    with pytest.raises(WeightsError, match="with upsampling=2, which this project does not build"):
        model_from_file(tmp_path / "folder")


def test_evaluate_and_export_an_smp_folder(tmp_path, data_root):
    """evaluate.py and export.py take smp's save_pretrained folder as they take our checkpoints (6 classes)."""
    theirs = smp_model(True, "resnet18", classes=6)
    path = tmp_path / "smp_folder"
    theirs.save_pretrained(path)
    assert_evaluates_and_exports(path, theirs, tmp_path, data_root)
