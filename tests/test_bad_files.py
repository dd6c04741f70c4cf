"""Files that are not checkpoints or weights, for every option that takes one: each gives one line saying what
the file is and what was expected; junk of any kind never escapes ``safe_load`` as another exception; a
checkpoint whose weights hold NaN is refused."""

import io
import random

import numpy as np
import pytest
import torch
from helpers import compose_config, run_script, tiny_checkpoint, tiny_overrides
from PIL import Image
from torchvision.models import resnet18, resnet50

from seg.engine.checkpoint import CheckpointError
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.engine.trainer import train
from seg.errors import UserError
from seg.export import export_checkpoint
from seg.io import UnsafeFileError, safe_load
from seg.models import build_model, load_weights

LFS = ("version https://git-lfs.github.com/spec/v1\n"
       "oid sha256:4d7a9b2c3e1f00112233445566778899aabbccddeeff00112233445566778899\nsize 46830571\n")

# name -> (file content written by the test, what the message must say the file is)
JUNK = {
    "text": (b"these are my notes about the run\n", "is a text file"),
    "html": (b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n", "is an HTML or XML page"),
    "lfs": (LFS.encode(), "is a Git LFS pointer"),
    "json": (b'{"mIoU": 0.7, "per_class_iou": {}}\n', "is a JSON file"),
    "random": (bytes([7]) + random.Random(0).randbytes(4000), "is binary data of an unknown format"),
}


def write_junk(tmp_path, kind):
    """A file of the given kind: raw bytes from JUNK, or a real torch.save file that holds the wrong thing."""
    path = tmp_path / f"{kind}.pt"
    if kind in JUNK:
        path.write_bytes(JUNK[kind][0])
    elif kind == "tensor":
        torch.save(torch.zeros(3, 4), path)
    elif kind == "resnet50":  # another architecture: a classification network's state dict
        torch.save(resnet50().state_dict(), path)
    return path


SAYS = {**{kind: says for kind, (_, says) in JUNK.items()}, "tensor": "is a single tensor of shape [3, 4]"}


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message and "weights_only" not in message
    return message


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("kind", [*JUNK, "tensor", "resnet50"])
def test_not_a_checkpoint(tmp_path, kind):
    """resume=, and ckpt= of evaluate, predict and export."""
    path = write_junk(tmp_path, kind)
    says = SAYS.get(kind, "is a state dict of 320 tensors (conv1.weight, bn1.weight")
    expected = ("not a checkpoint of this project" if kind in ("tensor", "resnet50")
                else "; the checkpoint must be a file written by torch.save")
    (tmp_path / "photo.png").write_bytes(b"")
    calls = {
        "evaluate": lambda: evaluate_checkpoint(compose_config("evaluate", [f"ckpt={path}"]), tmp_path / "eval"),
        "predict": lambda: predict(compose_config("predict", [f"ckpt={path}", f"input={tmp_path}",
                                                              f"output={tmp_path / 'out'}"])),
        "export": lambda: export_checkpoint(compose_config("export", [f"ckpt={path}", f"output={tmp_path / 'm.ts'}"])),
        "resume": lambda: train(compose_config("train", tiny_overrides(tmp_path / "data", resume=path)),
                                tmp_path / "run"),
    }
    for name, call in calls.items():
        with pytest.raises(UserError) as error:
            call()
        message = one_line(error)
        assert str(path) in message and says in message and expected in message, (name, message)


@pytest.mark.parametrize("kind", [*JUNK, "tensor", "resnet50"])
def test_not_model_weights(tmp_path, data_root, kind):
    path = write_junk(tmp_path, kind)
    with pytest.raises(UserError) as error:
        train(compose_config("train", tiny_overrides(data_root, **{"model.weights": path})), tmp_path / "run")
    message = one_line(error)
    assert str(path) in message and SAYS.get(kind, "") in message
    if kind == "resnet50":  # a state dict, but of another network: none of its tensors fit
        assert f"none of the 320 tensors in model weights {path} fit this model" in message
    elif kind == "tensor":
        assert ("not a checkpoint of this project, a state dict of this project's model, or a segmentation file"
                in message)
    else:
        assert "; the model weights must be a file written by torch.save" in message


@pytest.mark.parametrize("kind", [*JUNK, "tensor", "resnet50"])
def test_not_backbone_weights(tmp_path, data_root, kind):
    path = write_junk(tmp_path, kind)
    with pytest.raises(UserError) as error:
        train(compose_config("train", tiny_overrides(data_root, **{"backbone.pretrained": path})), tmp_path / "run")
    message = one_line(error)
    assert str(path) in message
    if kind in JUNK:
        assert SAYS[kind] in message and "the backbone weights for resnet18 (backbone.pretrained) must be a file " \
            "written by torch.save" in message
        return
    assert "a torchvision resnet18 state dict" in message
    if kind == "resnet50":  # resnet50's tensors have other shapes and names than resnet18's
        assert "do not fit resnet18" in message and "of another shape (e.g. layer1.0.conv1.weight [64, 64, 1, 1]" \
            " instead of [64, 64, 3, 3]" in message
    else:
        assert SAYS[kind] in message


def test_backbone_of_a_segmentation_checkpoint(tmp_path, data_root):
    """backbone.pretrained=<a whole model's file> is the explicit backbone-only start: its backbone, nothing else."""
    path = tiny_checkpoint(tmp_path / "checkpoint.pt", data_root)
    saved = torch.load(path, weights_only=True)["model"]
    model = build_model("resnet18", 3, pretrained=str(path))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, saved["backbone.layer4.1.conv2.weight"])
    assert not torch.equal(model.classifier.weight[:3], saved["classifier.weight"][:3])
    with pytest.raises(UserError, match=r"the backbone weights of the checkpoint .*checkpoint.pt do not "
                                        r"fit resnet50: .* expected a segmentation model on resnet50"):
        build_model("resnet50", 3, pretrained=str(path))


def test_fitting_backbone_weights_load(tmp_path):
    source = resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", 3, pretrained=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_weights_that_fit_nothing_are_an_error(tmp_path):
    state = resnet18().state_dict()
    torch.save(state, tmp_path / "r18.pt")  # backbone weights where whole-model ones belong
    message = rf"^none of the {len(state)} tensors in model weights {tmp_path / 'r18.pt'} fit this model"
    with pytest.raises(UserError, match=message):
        load_weights(build_model("resnet18", 3), tmp_path / "r18.pt")


def test_text_file_through_the_script(tmp_path):
    path = write_junk(tmp_path, "text")
    result = run_script("train.py", [*tiny_overrides(tmp_path / "data"), f"resume={path}",
                                     f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path} is a text file (it starts with 'these are my notes about the run'); the checkpoint must be a "
        "file written by torch.save"]


def fuzz_files(tmp_path, count, seed):
    """Junk of random lengths: truncated and bit-flipped real checkpoints (zip and legacy pickle format), and
    random bytes behind the magic numbers safe_load sniffs."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    torch.save({"model": build_model("resnet18", 3).state_dict(), "iteration": 1}, buffer)
    real = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(6.0)}, buffer, _use_new_zipfile_serialization=False)
    legacy = buffer.getvalue()
    prefixes = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80", b"<", b"{", b"version https://git-lfs"]
    for index in range(count):
        kind = index % 4
        if kind == 0:
            data = real[:rng.randrange(len(real))]
        elif kind == 1:
            data = legacy[:rng.randrange(len(legacy))]
        elif kind == 2:
            data = bytearray(real[:rng.randrange(1, 6000)])
            for _ in range(rng.randrange(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = rng.choice(prefixes) + rng.randbytes(rng.randrange(3000))
        path = tmp_path / f"junk{index}.pt"
        path.write_bytes(bytes(data))
        yield path


def test_fuzzed_junk_never_escapes(tmp_path):
    escaped = []
    for path in fuzz_files(tmp_path, 150, seed=0):
        try:
            safe_load(path)
        except UnsafeFileError as error:
            assert "\n" not in str(error) and "weights_only" not in str(error) and str(path) in str(error)
        except Exception as error:  # noqa: BLE001 - what the test looks for
            escaped.append(f"{path.name}: {type(error).__name__}")
        else:
            escaped.append(f"{path.name}: loaded")
    assert escaped == []


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
    state = torch.load(ckpt, weights_only=True)
    state["model"]["classifier.weight"][0, 0] = float("nan")
    torch.save(state, ckpt)
    message = rf"^{ckpt} holds non-finite weights \(NaN or infinity in 1 tensors, e.g. classifier.weight\)"
    with pytest.raises(CheckpointError, match=message):
        evaluate_checkpoint(compose_config("evaluate", [f"ckpt={ckpt}"]), tmp_path / "eval")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    with pytest.raises(CheckpointError, match=message):
        predict(compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={tmp_path / 'out'}"]))
    with pytest.raises(CheckpointError, match=message):
        export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={tmp_path / 'm.ts'}"]))
    with pytest.raises(CheckpointError, match=message):
        train(compose_config("train", tiny_overrides(tmp_path / "data", resume=ckpt)), tmp_path / "run")
    assert not (tmp_path / "eval" / "metrics.json").exists() and not (tmp_path / "out").exists()
