"""dataset.channels: grayscale and multi-band (16-bit TIFF) images from reading to training, evaluation,
prediction and export; first convolutions adapted as timm adapts them; per-channel statistics."""

import json

import numpy as np
import pytest
import tifffile
import torch
import torchvision
from helpers import compose_config, needed, tiny_overrides
from PIL import Image

from seg.config import ConfigError, validate_train
from seg.data import DatasetError, build_dataset, check_dataset
from seg.data.base import read_image
from seg.data.channels import IMAGENET_MEAN, IMAGENET_STD, InputStats, input_stats, mean_pixel, stats_from_config
from seg.data.transforms import MEAN_PIXEL, normalize
from seg.engine.checkpoint import restore
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.engine.trainer import train
from seg.export import DYNAMIC_EXPORT_TORCH, export_checkpoint, export_model
from seg.metrics import confusion_matrix, metrics_from_confusion
from seg.models import build_model, load_weights
from seg.models.channels import adapt_input_conv
from seg.models.layouts.base import WeightsError

SYNTHETIC = {"image_size": 64, "num_train": 8, "num_val": 3}  # tiny_overrides' synthetic dataset


# -- the first convolution -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_adapt_input_conv_is_timms_rule(in_chans):
    timm = needed("timm")
    weight = torch.randn(16, 3, 7, 7, generator=torch.Generator().manual_seed(in_chans))
    assert torch.equal(adapt_input_conv(in_chans, weight), timm.models.adapt_input_conv(in_chans, weight.clone()))


@pytest.mark.parametrize("name, constructor, conv", [
    ("resnet18", torchvision.models.resnet18, "conv1.weight"),
    ("mobilenet_v3_large", torchvision.models.mobilenet_v3_large, "features.0.0.weight"),
])
@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_first_conv_adapted_like_timm(name, constructor, conv, in_chans, tmp_path):
    """A torchvision classification state dict (random weights) loads as pretrained weights and the first conv is
    timm's adaptation of its RGB filters; everything else is the file's."""
    timm = needed("timm")
    torch.manual_seed(0)
    state = constructor().state_dict()
    torch.save(state, tmp_path / "weights.pth")
    model = build_model(name, 3, pretrained=str(tmp_path / "weights.pth"), in_channels=in_chans,
                        multi_grid=None if name.startswith("mobilenet") else (1, 2, 4))
    ours = model.backbone.state_dict()
    key = conv if name == "resnet18" else conv[len("features."):]
    assert torch.equal(ours[key], timm.models.adapt_input_conv(in_chans, state[conv]))
    other = "layer1.0.conv1.weight" if name == "resnet18" else "1.block.0.0.weight"
    assert torch.equal(ours[other], state[other if name == "resnet18" else f"features.{other}"])
    assert model(torch.rand(1, in_chans, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_deep_stem_and_timm_encoders_take_the_channels(tmp_path):
    timm = needed("timm")
    deep = build_model("resnet18", 3, stem="deep", in_channels=4)
    assert deep.backbone.stem[0].in_channels == 4 and deep.backbone.stem[3].in_channels == 32
    torch.manual_seed(0)
    reference = timm.create_model("resnet18")
    torch.save(reference.state_dict(), tmp_path / "timm_resnet18.pth")
    model = build_model("timm:resnet18", 3, pretrained=str(tmp_path / "timm_resnet18.pth"), in_channels=4)
    assert torch.equal(model.backbone.body.conv1.weight,
                       timm.models.adapt_input_conv(4, reference.state_dict()["conv1.weight"]))
    model.set_output_stride(8)  # re-striding from timm's template keeps the adapted conv
    assert model.backbone.body.conv1.in_channels == 4
    assert model.eval()(torch.rand(1, 4, 64, 64))["out"].shape == (1, 3, 64, 64)


# -- reading -------------------------------------------------------------------------------------------------------

def test_band_counts_depths_and_layouts(tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (20, 30, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "contig.tif", wide, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(wide, 2, 0), planarconfig="separate",
                     photometric="minisblack")
    expected = wide.astype(np.float64) / 65535 * 255
    for name in ("contig.tif", "planar.tif"):
        image = read_image(tmp_path / name, channels=5)
        assert image.dtype == np.float32 and image.shape == (20, 30, 5)
        np.testing.assert_allclose(image, expected, rtol=1e-6, atol=1e-4)
    unit = rng.random((20, 30, 2), dtype=np.float32)
    tifffile.imwrite(tmp_path / "float.tif", unit, photometric="minisblack", planarconfig="contig")
    np.testing.assert_allclose(read_image(tmp_path / "float.tif", channels=2), unit * 255, rtol=1e-6)
    gray16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    np.testing.assert_allclose(read_image(tmp_path / "gray16.png", channels=1)[:, :, 0], gray16 / 65535 * 255,
                               rtol=1e-6, atol=1e-4)
    gray8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "gray8.png")
    image = read_image(tmp_path / "gray8.png", channels=1)
    assert image.dtype == np.uint8 and np.array_equal(image[:, :, 0], gray8)
    assert np.array_equal(read_image(tmp_path / "gray8.png"), np.repeat(gray8[:, :, None], 3, axis=2))  # RGB as ever


@pytest.mark.parametrize("channels, file, found", [(1, "img.jpg", 3), (4, "img.jpg", 3), (3, "img.tif", 4)])
def test_wrong_channel_count_is_one_line_naming_file_channels_and_key(channels, file, found, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    if file.endswith(".jpg"):
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(tmp_path / "images" / file)
    else:
        tifffile.imwrite(tmp_path / "images" / file, np.zeros((16, 16, 4), np.uint16), photometric="minisblack",
                         planarconfig="contig")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "masks" / "img.png")
    dataset = build_dataset("folder", tmp_path, "all", num_classes=2, channels=channels, label_map={255: 1})
    if channels == 3:  # RGB reads what PIL makes of the file: a 4-band 16-bit TIFF is no RGB image
        with pytest.raises(DatasetError, match="img.tif") as error:
            dataset[0]
        assert "\n" not in str(error.value)
        return
    with pytest.raises(DatasetError) as error:
        dataset[0]
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "images" / file) in message
    assert f"has {found} channels but dataset.channels is {channels}" in message


# -- statistics ----------------------------------------------------------------------------------------------------

def test_check_dataset_statistics_are_numpys(data_root):
    dataset = build_dataset("synthetic", data_root, "train", channels=4, **SYNTHETIC)
    report = check_dataset(dataset, progress=False)
    pixels = np.concatenate([tifffile.imread(sample.image).reshape(-1, 4) for sample in dataset.samples]) / 65535
    np.testing.assert_allclose(report.channels.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(report.channels.std, pixels.std(axis=0), rtol=1e-6)
    text = report.format(command="python scripts/train.py dataset=synthetic")
    assert "python scripts/train.py dataset=synthetic dataset.channels=4 'dataset.mean=[" in text


# -- train -> evaluate -> predict -> export ------------------------------------------------------------------------

def reference_inputs(channels):
    """The default statistics, written out here: ImageNet's mean for 1 channel, ImageNet's repeated for more."""
    if channels == 1:
        return [float(np.mean(IMAGENET_MEAN))], [float(np.mean(IMAGENET_STD))]
    return [IMAGENET_MEAN[i % 3] for i in range(channels)], [IMAGENET_STD[i % 3] for i in range(channels)]


def read_reference(path, channels):
    """The [0, 1] image ``[C, H, W]`` read without seg: tifffile for 16-bit TIFFs, PIL for 8-bit grayscale."""
    if channels == 1:
        values = np.asarray(Image.open(path), dtype=np.float64)[None] / 255
    else:
        values = np.moveaxis(tifffile.imread(path), 2, 0).astype(np.float64) / 65535
    return torch.from_numpy(values).float()


@pytest.mark.parametrize("channels", [1, 4])
def test_train_evaluate_predict_export(channels, data_root, tmp_path, cfg_eval):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")  # "ImageNet" weights
    cfg = compose_config("train", tiny_overrides(data_root, **{"dataset.channels": channels,
                                                               "backbone.pretrained": tmp_path / "resnet18.pth"}))
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    model, state = restore(ckpt)
    mean, std = reference_inputs(channels)
    recorded = state["config"]["dataset"]
    assert recorded["channels"] == channels
    np.testing.assert_allclose(recorded["mean"], mean) and np.testing.assert_allclose(recorded["std"], std)
    assert model.backbone.conv1.in_channels == channels
    model.eval()
    mean_t, std_t = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    val = build_dataset("synthetic", data_root, "val", channels=channels, **SYNTHETIC)
    matrix = torch.zeros(6, 6, dtype=torch.int64)
    expected_labels = {}
    with torch.inference_mode():
        for sample in val.samples:
            image = read_reference(sample.image, channels)
            labels = model(((image - mean_t) / std_t)[None])["out"].argmax(1)[0]
            mask = torch.from_numpy(np.array(Image.open(sample.mask))).long()
            matrix += confusion_matrix(labels, mask, 6, 255)
            expected_labels[sample.id] = labels.numpy()
    reference = metrics_from_confusion(matrix, val.class_names)

    metrics = evaluate_checkpoint(cfg_eval(ckpt, "device=cpu"), tmp_path / "eval")
    assert metrics["num_images"] == 3
    assert metrics["mIoU"] == pytest.approx(reference["mIoU"], abs=1e-6)
    assert metrics["pixel_acc"] == pytest.approx(reference["pixel_acc"], abs=1e-6)

    folder = val.samples[0].image.parent
    predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={tmp_path / 'pred'}",
                                       "device=cpu"]))
    for sample in val.samples:
        written = np.asarray(Image.open(tmp_path / "pred" / "labels" / f"{sample.id}.png"))
        assert (written == expected_labels[sample.id]).mean() > 0.999  # threads may flip a tied pixel
        assert Image.open(tmp_path / "pred" / "overlays" / f"{sample.id}.jpg").mode == "RGB"

    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={tmp_path / 'model.ts'}"]))
    exported = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=(extra := {"metadata.json": ""}))
    metadata = json.loads(extra["metadata.json"])
    assert metadata["channels"] == channels and metadata["input"] == (
        "float32 RGB [N, 3, H, W] in [0, 1]" if channels == 3 else f"float32 [N, {channels}, H, W] in [0, 1]")
    images = torch.rand(2, channels, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(exported(images), model((images - mean_t) / std_t)["out"], atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match=rf"takes float images \[N, {channels}, H, W\] in \[0, 1\]"):
        exported((images * 255).to(torch.uint8))
    predict(compose_config("predict", [f"ckpt={tmp_path / 'model.ts'}", f"input={folder}",
                                       f"output={tmp_path / 'pred_ts'}", "device=cpu"]))  # channels from metadata
    sample = val.samples[0]
    written = np.asarray(Image.open(tmp_path / "pred_ts" / "labels" / f"{sample.id}.png"))
    assert (written == expected_labels[sample.id]).mean() > 0.999


@pytest.mark.parametrize("format", ["onnx", "export"])
def test_onnx_and_torch_export_take_the_channels(format, tmp_path):
    if torch.__version__ < DYNAMIC_EXPORT_TORCH:
        pytest.skip(f"format={format} needs torch >= {DYNAMIC_EXPORT_TORCH} (dynamic height and width)")
    if format == "onnx":
        ort = needed("onnxruntime")
        needed("onnxscript")
    torch.manual_seed(0)
    model = build_model("resnet18", 3, in_channels=4).eval()
    stats = input_stats(4, [0.4, 0.45, 0.5, 0.3], [0.2, 0.25, 0.2, 0.1])
    report = export_model(model, tmp_path / f"model.{format}", format, check_sizes=[[64, 64]], stats=stats)
    assert report["parity"][0]["input"] == [1, 4, 64, 64]
    images = torch.rand(2, 4, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model((images - torch.tensor(stats.mean).view(1, 4, 1, 1))
                         / torch.tensor(stats.std).view(1, 4, 1, 1))["out"]
    if format == "onnx":
        session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
        metadata = json.loads(session.get_modelmeta().custom_metadata_map["metadata.json"])
        actual = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    else:
        extra = {"metadata.json": ""}
        actual = torch.export.load(str(tmp_path / "model.export"), extra_files=extra).module()(images)
        metadata = json.loads(extra["metadata.json"])
    assert metadata["channels"] == 4 and metadata["mean"] == list(stats.mean) and metadata["std"] == list(stats.std)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_damaged_tiff_and_missing_file_are_one_line(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    for name, words in (("bad.tif", "cannot read image file"), ("missing.tif", "image file not found")):
        with pytest.raises(DatasetError, match=words) as error:
            read_image(tmp_path / name, channels=4)
        assert "\n" not in str(error.value) and name in str(error.value)


def test_three_channels_are_the_rgb_path_unchanged():
    """The defaults for 3 channels are what the RGB code used before dataset.channels: the same padding, the same
    normalisation, the same model from the same seed."""
    assert mean_pixel(InputStats()) == MEAN_PIXEL == (124, 116, 104)
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    reference = (images.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1)
    assert torch.equal(normalize(images), normalize(images, stats_from_config({})))
    torch.testing.assert_close(normalize(images), reference)
    states = []
    for kwargs in ({}, {"in_channels": 3}):
        torch.manual_seed(0)
        states.append(build_model("resnet18", 3, **kwargs).state_dict())
    assert states[0].keys() == states[1].keys() and all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("overrides, words", [
    ({"dataset.channels": 0}, "dataset.channels must be an integer from 1 to 512"),
    ({"dataset.channels": 4, "dataset.mean": "[0.5,0.5,0.5]"}, "dataset.mean must be a list of 4 numbers"),
    ({"dataset.channels": 1, "dataset.std": "[0]"}, "dataset.std must be a list of 1 positive numbers"),
    ({"dataset.channels": 1, "train.color_jitter": True}, "train.color_jitter jitters RGB colours"),
])
def test_bad_channel_settings_name_the_key(cfg_train, overrides, words):
    with pytest.raises(ConfigError, match=words) as error:
        validate_train(cfg_train(**overrides))
    assert "\n" not in str(error.value)


def test_rgb_weights_fine_tune_a_model_of_other_channels():
    """model.weights= an RGB model into a 4-channel one: the first convolution adapted as timm adapts ImageNet
    weights, every other tensor copied; any other mismatch is still an error."""
    torch.manual_seed(0)
    rgb = build_model("resnet18", 3)
    four = build_model("resnet18", 3, in_channels=4)
    report = load_weights(four, rgb.state_dict())
    (adapted,) = report.adapted
    assert four.state_dict()[adapted].shape[1] == 4 and rgb.state_dict()[adapted].shape[1] == 3
    torch.testing.assert_close(four.state_dict()[adapted], adapt_input_conv(4, rgb.state_dict()[adapted]))
    for key, value in rgb.state_dict().items():
        if key != adapted:
            torch.testing.assert_close(four.state_dict()[key], value)
    assert "adapted from RGB" in report.summary()
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(build_model("resnet18", 3, in_channels=4, head="deeplabv3plus"), rgb.state_dict())
