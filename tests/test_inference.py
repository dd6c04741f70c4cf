import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from seg.config import ConfigError, inference_kwargs, validate_inference
from seg.engine import inference as inference_module
from seg.engine.inference import InferenceOutOfMemory, segment
from seg.errors import UserError
from seg.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 3).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))


class Symmetric(nn.Module):
    """Mirror-equivariant by construction: model(flip(x)) == flip(model(x))."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return {"out": (self.model(x)["out"] + self.model(x.flip(-1))["out"].flip(-1)) / 2}


class PerPixel(nn.Module):
    """Each output pixel depends only on the same input pixel: windows cannot change the result."""

    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x)
        return {"out": self.conv(x)}


@torch.inference_mode()
def test_plain_inference_is_the_model_softmax(model, images):
    assert torch.equal(segment(model, images), model(images)["out"].softmax(1))


@torch.inference_mode()
def test_scale_one_without_flip_equals_plain(model, images):
    plain = model(images)["out"].softmax(1)
    assert torch.allclose(segment(model, images, scales=(1.0, 1.0), flip=False), plain, atol=1e-6)


@torch.inference_mode()
def test_flip_on_a_mirror_symmetric_model_equals_plain(model, images):
    symmetric = Symmetric(model)
    assert torch.allclose(segment(symmetric, images, flip=True), segment(symmetric, images), atol=1e-6)
    # ...while on the real model flipping does change the probabilities (the test above is not vacuous).
    assert not torch.allclose(segment(model, images, flip=True), segment(model, images), atol=1e-3)


@torch.inference_mode()
def test_multi_scale_averages_probabilities_at_the_original_size(model, images):
    half = F.interpolate(images, size=(24, 32), mode="bilinear", align_corners=False)
    half_probs = F.interpolate(model(half)["out"], size=(48, 64), mode="bilinear", align_corners=False).softmax(1)
    mirrored = model(images.flip(-1))["out"].flip(-1).softmax(1)
    expected = (half_probs + model(images)["out"].softmax(1)) / 2
    assert torch.allclose(segment(model, images, scales=(0.5, 1.0)), expected, atol=1e-6)
    expected_flip = (model(images)["out"].softmax(1) + mirrored) / 2
    assert torch.allclose(segment(model, images, flip=True), expected_flip, atol=1e-6)


@torch.inference_mode()
def test_one_window_covering_the_image_equals_whole(model, images):
    assert torch.equal(segment(model, images, mode="slide", window=(48, 64)), segment(model, images))
    assert torch.allclose(segment(model, images, mode="slide", window=(48, 64), flip=True),
                          segment(model, images, flip=True), atol=1e-6)


@torch.inference_mode()
@pytest.mark.parametrize("window, stride", [((20, 24), (7, 11)), ((32, 32), None), ((20, 24), (20, 24))])
def test_overlapping_windows_are_stitched_and_averaged(window, stride):
    per_pixel = PerPixel()
    images = torch.randn(2, 3, 45, 61)
    whole = segment(per_pixel, images)
    per_pixel.inputs.clear()
    slid = segment(per_pixel, images, mode="slide", window=window, stride=stride)
    assert slid.shape == whole.shape
    assert torch.allclose(slid, whole, atol=1e-6)
    assert all(tuple(x.shape[-2:]) == window for x in per_pixel.inputs)
    assert len(per_pixel.inputs) > 1


@torch.inference_mode()
def test_image_smaller_than_window_is_padded_with_the_mean_colour():
    per_pixel = PerPixel()
    images = torch.randn(1, 3, 30, 40)
    slid = segment(per_pixel, images, mode="slide", window=(64, 48))
    assert torch.allclose(slid, segment(per_pixel, images), atol=1e-6)
    padded = per_pixel.inputs[0]
    assert padded.shape[-2:] == (64, 48)
    assert torch.equal(padded[..., :30, :40], images)
    assert not padded[..., 30:, :].any() and not padded[..., :, 40:].any()  # zero = mean colour once normalised


def test_out_of_memory_suggests_what_to_change(images):
    def exhausted(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(InferenceOutOfMemory, match="inference.mode=slide") as info:
        segment(exhausted, images, scales=(1.0, 1.5))
    assert isinstance(info.value, UserError) and "tta.scales" in str(info.value)


@pytest.mark.parametrize("options, key", [
    (dict(scales=[]), "tta.scales"),
    (dict(scales=[1.0, -0.5]), "tta.scales"),
    (dict(mode="tiles"), "inference.mode"),
    (dict(mode="slide"), "inference.mode=slide needs inference.window"),
    (dict(mode="slide", window=[32, 32], stride=[40, 16]), "inference.stride"),
    (dict(mode="slide", window=[32]), "inference.window"),
])
def test_bad_options_name_the_key(options, key):
    """The inference options are checked once, where a configuration enters (``segment`` trusts its caller)."""
    cfg = {"os": None, "device": "cpu", "amp": None, "tta": {"scales": options.get("scales", [1.0]), "flip": False},
           "inference": {"mode": options.get("mode", "whole"), "window": options.get("window"),
                         "stride": options.get("stride")}}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_inference(cfg)
        inference_kwargs(cfg, default_window=None)


class Allocations(TorchDispatchMode):
    """Records the storage (address, bytes) of every tensor each aten operation returns."""

    def __init__(self):
        super().__init__()
        self.storages = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.storages.append((storage.data_ptr(), storage.nbytes()))
        return out


@torch.inference_mode()
@pytest.mark.parametrize("accumulate, flip", [(torch.float16, False), (torch.float16, True), (torch.float32, True)])
def test_slide_on_a_large_image_streams_windows_into_one_buffer(monkeypatch, capsys, accumulate, flip):
    """Memory bound of sliding windows, asserted through what is allocated, not through a timing: exactly one
    [1, C, H, W] buffer of the requested dtype, and no other tensor as large as one float32 plane of the image (no
    padded or mirrored copy of the input, no full-size count map, no stack of windows, no second buffer)."""
    classes, height, width = 8, 1100, 1700
    model = PerPixel(classes)
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(2))
    allocated = []

    def spy(shape, dtype, device):
        buffer = real(shape, dtype, device)
        allocated.append((tuple(shape), dtype, buffer.untyped_storage().data_ptr()))
        return buffer

    real = inference_module.allocate_accumulator
    monkeypatch.setattr(inference_module, "allocate_accumulator", spy)
    with Allocations() as watch:
        slid = segment(model, images, mode="slide", window=(256, 320), flip=flip, accumulate=accumulate,
                       progress=True)
    assert [(shape, dtype) for shape, dtype, _ in allocated] == [((1, classes, height, width), accumulate)]
    buffer = allocated[0][2]
    plane = height * width * 4  # one window's probabilities (8 x 256 x 320 float32) are a third of this
    large = [address for address, size in watch.storages if size >= plane]
    assert large and set(large) <= {buffer, images.untyped_storage().data_ptr()}
    assert large.index(buffer) == min(i for i, a in enumerate(large) if a != images.untyped_storage().data_ptr())
    assert slid.dtype == accumulate and slid.untyped_storage().data_ptr() == buffer
    # ceil((1100 - 256) / 170) + 1 = 6 rows x ceil((1700 - 320) / 213) + 1 = 8 columns per pass: a progress bar
    assert len(model.inputs) == 48 * (2 if flip else 1) and all(x.shape[-2:] == (256, 320) for x in model.inputs)
    assert "windows" in capsys.readouterr().err
    whole = segment(model, images)
    torch.testing.assert_close(slid.float(), whole, atol=2e-3 if accumulate == torch.float16 else 1e-6, rtol=0)
