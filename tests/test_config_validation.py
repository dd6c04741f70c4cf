"""Every config value is type- and range-checked before any work: one line naming the key, the value and what
was expected (the typed schema in seg.config plus its range checks)."""

import pytest
from helpers import compose_config, run_script

from seg.config import ConfigError, validate_export, validate_inference, validate_loader, validate_train


@pytest.mark.parametrize("override, message", [
    ("train.momentum=abc", "train.momentum must be a number, got 'abc'"),
    ("train.scale_range=[0,0]",
     "train.scale_range must be two numbers [low, high] with 0 < low <= high, got [0.0, 0.0]"),
])
def test_bad_values_are_one_line_before_any_work(tmp_path, override, message):
    result = run_script("train.py", [override, "backbone=resnet18", f"dataset.root={tmp_path / 'data'}",
                                     f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {message}"]  # exactly one line, no traceback
    assert not (tmp_path / "data").exists()  # nothing was generated


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr must be a finite number > 0, got nan"),
    ("train.lr=inf", "train.lr must be a finite number > 0, got inf"),
    ("train.lr=-inf", "train.lr must be a finite number > 0, got -inf"),
    ("train.momentum=abc", "train.momentum must be a number, got 'abc'"),
    ("train.momentum=1.5", "train.momentum must be a finite number >= 0 and < 1, got 1.5"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("seed=-1", "seed must be an integer >= 0 and < 2147483648, got -1"),
    ("train.scale_range=[0,0]", "train.scale_range must be two numbers [low, high] with 0 < low <= high"),
    ("train.scale_range=[2.0,0.5]", "train.scale_range must be two numbers [low, high] with 0 < low <= high"),
    ("train.scale_range=[1.0]", "train.scale_range must be two numbers [low, high] with 0 < low <= high"),
    ("train.scale_range=[0.5,x]", "train.scale_range must be a list of numbers, got [0.5, 'x']"),
    ("train.hflip=maybe", "train.hflip must be true or false, got 'maybe'"),
    ("train.stop_at=-3", "train.stop_at must be an integer > 0, got -3"),
    ("train.iters=1.5", "train.iters must be an integer, got 1.5"),
    ("train.weight_decay=nan", "train.weight_decay must be a finite number >= 0, got nan"),
    ("train.color_jitter=sometimes", "train.color_jitter must be true or false, got 'sometimes'"),
    ("model.multi_grid=[1,two]", "model.multi_grid must be a list of integers or null, got [1, 'two']"),
    ("model.dropout=1.0", "model.dropout must be a finite number >= 0 and < 1, got 1.0"),
    ("os=abc", "os must be an integer, got 'abc'"),
    ("dataset.num_classes=six", "dataset.num_classes must be an integer or null, got 'six'"),
    ("dist_timeout_min=0", "dist_timeout_min must be a finite number > 0, got 0.0"),
    ("os=12", "os must be one of [8, 16, 32], got 12"),
    ("train.lr=-0.1", "train.lr must be"),
    ("train.amp=fp8", "train.amp must be one of"),
    ("backbone.name=resnet9", "backbone.name must be one of"),
    ("train.batch_size=0", "train.batch_size must be"),
    ("model.head=unet", "model.head must be one of"),
    ("backbone.stem=tall", "backbone.stem must be one of ['standard', 'deep'], got 'tall'"),
    ("model.aspp_channels=0", "model.aspp_channels must be a positive integer, got 0"),
    ("model.aspp_projection_kernel=5", "model.aspp_projection_kernel must be one of [1, 3], got 5"),
    ("model.classifier_dropout=1.5", "model.classifier_dropout must be a number in [0, 1), got 1.5"),
    ("model.separable_convs=perhaps", "model.separable_convs must be true or false, got 'perhaps'"),
    ("model.depthwise_bn_relu=perhaps", "model.depthwise_bn_relu must be true or false, got 'perhaps'"),
    ("model.align_corners=maybe", "model.align_corners must be true or false, got 'maybe'"),
    ("model.aspp_conv=true", "model.aspp_conv must be false with head deeplabv3 (it is the DeepLabv3+ decoder's"),
    ("device=tpu", "device must be one of"),
])
def test_bad_train_values_name_key_value_and_type(override, message):
    cfg = compose_config("train", [override])
    with pytest.raises(ConfigError) as raised:
        validate_train(cfg)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_typed_values_are_stored_back():
    """What the schema accepts is what the trainer reads: "off" is False (not a truthy string), "0.5" a float."""
    cfg = compose_config("train", ["train.hflip=off", "train.lr='0.5'", "train.iters='7'", "seed=3"])
    validate_train(cfg)
    assert cfg["train"]["hflip"] is False
    assert cfg["train"]["lr"] == 0.5 and cfg["train"]["iters"] == 7
    assert isinstance(cfg["train"]["momentum"], float) and cfg["seed"] == 3


@pytest.mark.parametrize("config, overrides, check, message", [
    ("evaluate", ["tta.flip=maybe"], validate_inference, "tta.flip must be true or false, got 'maybe'"),
    ("predict", ["tta.scales=[1.0,big]"], validate_inference, "tta.scales must be a list of numbers, got [1.0, 'big']"),
    ("predict", ["inference.window=513"], validate_inference,
     "inference.window must be a list of integers or null, got 513"),
    ("evaluate", ["batch_size=two"], validate_loader, "batch_size must be an integer, got 'two'"),
    ("export", ["ckpt=a.pt", "output=m.ts", "check.atol=nan"], validate_export,
     "check.atol must be a finite number >= 0, got nan"),
    ("export", ["ckpt=a.pt", "output=m.ts", "check.sizes=[[64,wide]]"], validate_export,
     "check.sizes must be a list of lists of integers, got [[64, 'wide']]"),
])
def test_bad_inference_and_export_values(config, overrides, check, message):
    cfg = compose_config(config, overrides)
    with pytest.raises(ConfigError) as raised:
        check(cfg)
    assert str(raised.value) == message
