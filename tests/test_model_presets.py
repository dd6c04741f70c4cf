"""``model=<peer preset>`` (configs/model/): a peer's architecture as config keys, composed over the defaults."""

import pytest
import torch
from helpers import compose_config
from mmseg_reference import EncoderDecoder

from seg.config import model_kwargs, validate_train
from seg.engine.checkpoint import CheckpointError, check_resume_config, model_from_checkpoint
from seg.models import build_model
from seg.models.layouts import mmseg
from seg.models.spec import CONFIG_KEYS

PRESETS = {  # preset -> (backbone, head, separable)
    "mmseg_deeplabv3_r50_d8": ("resnet50", "deeplabv3", False),
    "mmseg_deeplabv3_r101_d8": ("resnet101", "deeplabv3", False),
    "mmseg_deeplabv3plus_r50_d8": ("resnet50", "deeplabv3plus", True),
    "mmseg_deeplabv3plus_r101_d8": ("resnet101", "deeplabv3plus", True),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_mmseg_presets_compose_to_the_recognised_architecture(preset):
    backbone, head, separable = PRESETS[preset]
    cfg = compose_config("train", [f"model={preset}", "backbone=resnet18"])  # the preset wins over the group
    validate_train(cfg)
    kwargs = model_kwargs(cfg, num_classes=21)
    assert kwargs["backbone"] == backbone and kwargs["head"] == head and kwargs["separable_convs"] is separable
    assert kwargs["stem"] == "deep" and kwargs["output_stride"] == 8 and kwargs["multi_grid"] is None
    assert kwargs["contract_dilation"] and kwargs["aspp_channels"] == 512 and kwargs["aspp_projection_kernel"] == 3
    assert kwargs["decoder_convs"] == (2 if separable else 0) and kwargs["aux_loss"]
    assert kwargs["dropout"] == 0.0 and kwargs["classifier_dropout"] == 0.1
    assert cfg["train"]["iters"] == compose_config("train", [])["train"]["iters"]  # training keys untouched


def test_without_a_preset_the_model_keys_are_train_yaml_s():
    cfg = compose_config("train", ["backbone=resnet18"])
    validate_train(cfg)
    kwargs = model_kwargs(cfg, num_classes=2)
    defaults = {argument: default for argument, (_, _, default) in CONFIG_KEYS.items() if default is not None}
    assert {k: kwargs[k] for k in defaults} == {k: tuple(v) if isinstance(v, list) else v for k, v in defaults.items()}
    assert kwargs["backbone"] == "resnet18" and kwargs["output_stride"] == 16


def test_a_preset_model_runs_and_its_checkpoint_builds_again():
    cfg = compose_config("train", ["model=mmseg_deeplabv3plus_r50_d8", "dataset.num_classes=3"])
    validate_train(cfg)
    kwargs = model_kwargs(cfg, num_classes=3)
    recognised = mmseg.recognise(EncoderDecoder(depth=50, num_classes=3, plus=True).state_dict()).arguments
    assert {k: kwargs[k] for k in recognised} == recognised  # the preset trains what mmseg's files hold
    model = build_model(**kwargs)
    model.train()
    result = model(torch.rand(2, 3, 64, 64))
    assert result["out"].shape == result["aux"].shape == (2, 3, 64, 64)
    result["out"].mean().backward()  # trains: gradients reach the deep stem
    assert model.backbone.stem[0].weight.grad is not None
    rebuilt = model_from_checkpoint({"config": cfg, "model": model.state_dict(), "num_classes": 3,
                                     "class_names": ["a", "b", "c"]})
    assert isinstance(rebuilt.classifier_dropout, torch.nn.Dropout2d)


def test_resume_refuses_another_stem_or_head_width_and_accepts_configs_written_before_the_keys():
    old = compose_config("train", ["backbone=resnet18"])
    del old["backbone"]["stem"]
    for key in ("aspp_channels", "aspp_projection_kernel", "separable_convs"):
        del old["model"][key]
    check_resume_config(old, compose_config("train", ["backbone=resnet18"]), "last.pt")  # the defaults: fine
    for override, key in (("backbone.stem=deep", "backbone.stem"), ("model.aspp_channels=512", "model.aspp_channels"),
                          ("model.separable_convs=true", "model.separable_convs")):
        with pytest.raises(CheckpointError, match=f"cannot resume last.pt: {key} was "):
            check_resume_config(old, compose_config("train", ["backbone=resnet18", override]), "last.pt")
