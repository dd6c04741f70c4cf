"""Eager torch inference in channels_last on the CPU (inference option ``channels_last``, on by default): the
model's weights in NHWC, the outputs those of the default NCHW layout within a stated tolerance, and
``channels_last=false`` for torch's own layout."""

import numpy as np
import pytest
import torch
from helpers import compose_config
from PIL import Image
from test_predict import decisive_checkpoint

from seg.config import ConfigError, validate_inference
from seg.deployment import model_source
from seg.engine.predict import predict

# fp32 on the CPU: oneDNN's NHWC and NCHW convolutions sum in different orders; the logits agree to about 1e-6 of
# their range, far inside this relative tolerance
RELATIVE_TOLERANCE = 1e-4
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return decisive_checkpoint(tmp_path_factory.mktemp("channels_last"))


def source_model(ckpt, *overrides):
    cfg = compose_config("evaluate", [f"ckpt={ckpt}", "device=cpu", *overrides])
    validate_inference(cfg)
    source = model_source(cfg)
    return source.model(source.state(ckpt), ckpt, None, CPU)


def is_channels_last(model) -> bool:
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    return all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)


def test_cpu_inference_runs_in_channels_last_with_the_outputs_of_nchw(ckpt):
    last, nchw = source_model(ckpt), source_model(ckpt, "channels_last=false")
    assert is_channels_last(last) and all(p.is_contiguous() for p in nchw.parameters())
    images = torch.randn(2, 3, 72, 88, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, reference = last(images)["out"], nchw(images)["out"]
    assert ours.is_contiguous(memory_format=torch.channels_last)  # the convolutions did run in NHWC
    assert ours.shape == reference.shape == (2, 6, 72, 88)
    assert (ours - reference).abs().max() <= RELATIVE_TOLERANCE * reference.abs().max()
    assert torch.equal(ours.argmax(1), reference.argmax(1))


def test_predict_gives_the_same_labels_either_way(ckpt, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(folder / "a.png")
    labels = {}
    for flag in ("true", "false"):
        output = tmp_path / flag
        predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={output}", "device=cpu",
                                           f"channels_last={flag}"]))
        labels[flag] = np.asarray(Image.open(output / "labels" / "a.png"))
    assert labels["true"].shape == (70, 90) and np.array_equal(labels["true"], labels["false"])


def test_channels_last_must_be_a_bool(ckpt):
    with pytest.raises(ConfigError, match="channels_last must be"):
        validate_inference(compose_config("evaluate", [f"ckpt={ckpt}", "channels_last=maybe"]))
