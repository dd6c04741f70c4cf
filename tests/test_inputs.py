"""Inputs a user really has: errors raised in data-loader workers, phone photos (EXIF orientation), 16-bit
images, split files with a byte-order mark, predict.py writing next to its input, into a read-only folder or onto
a full disk, and the exported model given uint8 images."""

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, run_script, tiny_checkpoint, tiny_overrides
from PIL import Image
from test_data_voc import write_voc

from seg.config import dataset_kwargs
from seg.data import build_dataset
from seg.data.base import read_image
from seg.data.colors import read_colour_table
from seg.data.voc import read_split_file
from seg.engine.predict import predict
from seg.errors import UserError
from seg.export import export_model
from seg.io import load_torchscript
from seg.models import build_model
from seg.outputs import MANIFEST


def test_bad_sample_in_a_worker_is_one_line(tmp_path):
    overrides = tiny_overrides(tmp_path / "data", **{"train.num_workers": 2})
    dataset = build_dataset(**dataset_kwargs(compose_config("train", overrides)["dataset"]))
    bad = dataset.samples[3].mask
    Image.fromarray(np.full((64, 64), 9, dtype=np.uint8)).save(bad)  # 9 is not one of the 6 classes
    result = run_script("train.py", [*overrides, f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert result.returncode == 1
    without_bars = re.sub(r"(train|eval): +\d+%\|.*?\]", "", result.stderr.replace("\r", "\n"))  # tqdm's
    lines = [line for line in without_bars.splitlines() if line.strip()]
    assert lines == [f"error: mask {bad} holds values [9] outside the 6 classes [0, 5] and the ignore value 255"]
    assert lines[0].removeprefix("error: ") in (tmp_path / "run" / "train.log").read_text()


def exif_png(path, pixels, orientation):
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    image.save(path, exif=exif.tobytes())


@pytest.mark.parametrize("orientation, upright", [(6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
                                                  (3, lambda a: a[::-1, ::-1]), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    """Orientation 6 (a phone held upright): the stored pixels are turned 90 degrees clockwise for display."""
    stored = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif_png(tmp_path / "photo.png", stored, orientation)
    np.testing.assert_array_equal(read_image(tmp_path / "photo.png"), upright(stored))


def test_phone_photo_matches_its_upright_mask(tmp_path):
    write_voc(tmp_path, {"train": ["p0"]}, size=(30, 20), num_classes=3)  # upright: 30 high, 20 wide
    jpeg = tmp_path / "VOCdevkit/VOC2012/JPEGImages/p0.jpg"
    sideways = np.rot90(np.asarray(Image.open(jpeg)), 1)  # stored as the camera saw it: 20 high, 30 wide
    image = Image.fromarray(np.ascontiguousarray(sideways))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(jpeg, exif=exif.tobytes(), quality=95)
    image, mask = build_dataset("voc", tmp_path, "train", num_classes=3)[0]
    assert image.shape == (30, 20, 3) and mask.shape == (30, 20)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 514, 32896], [65535, 65535 - 128, 1000, 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode == "I;16"
    expected = np.array([[0, 1, 2, 128], [255, 255, 4, 0]], dtype=np.uint8)  # round(value / 257)
    image = read_image(tmp_path / "depth.png")
    assert image.dtype == np.uint8 and image.shape == (2, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], expected)


def test_split_file_with_a_byte_order_mark(tmp_path):
    write_voc(tmp_path, {"train": ["g00", "g01"]}, num_classes=3)
    split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    split.write_text("g00\r\ng01\r\n", encoding="utf-8-sig")  # as Windows Notepad saves "UTF-8 with BOM"
    assert split.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_split_file(split) == ["g00", "g01"]
    dataset = build_dataset("voc", tmp_path, "train", num_classes=3)
    assert [dataset.sample_id(i) for i in range(2)] == ["g00", "g01"] and dataset[0][0].shape == (24, 32, 3)


def test_colour_tables_with_a_byte_order_mark(tmp_path):
    (tmp_path / "classes.csv").write_text("background,0,0,0\ncrack,255,0,0\n", encoding="utf-8-sig")
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\ncrack:255,0,0::\n", encoding="utf-8-sig")
    for name in ("classes.csv", "labelmap.txt"):
        assert read_colour_table(tmp_path / name).names == ["background", "crack"]


def test_predict_into_its_input_folder(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg"):
        Image.fromarray(np.full((40, 56, 3), 90, dtype=np.uint8)).save(photos / name)
    config = compose_config("predict", [f"ckpt={ckpt}", f"input={photos}", f"output={photos}"])
    assert predict(config)["written"] == 2
    assert (photos / "labels" / "a.png").is_file() and (photos / "overlays" / "sub" / "b.jpg").is_file()
    assert predict(config)["written"] == 2  # a second run does not segment its own outputs


def test_predict_into_a_read_only_folder(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
    Image.fromarray(np.zeros((40, 56, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: fail the way the file system fails everyone else
        def refuse(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(dir))

        monkeypatch.setattr("tempfile.TemporaryFile", refuse)
    config = compose_config("predict", [f"ckpt={ckpt}", f"input={tmp_path / 'a.png'}", f"output={read_only}"])
    with pytest.raises(UserError, match=rf"^cannot write predictions into {read_only}: Permission denied; choose "
                                        r"a writable output= folder$"):
        predict(config)


def test_a_full_disk_during_predict_is_one_line_and_leaves_no_cut_short_file(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((40, 56, 3), ord(name), dtype=np.uint8)).save(images / f"{name}.png")
    real_save = Image.Image.save

    def fills_at_b_entropy(image, path, *args, **kwargs):
        real_save(image, path, *args, **kwargs)
        if Path(path).parent.name == "entropy" and Path(path).stem == "b":
            Path(path).write_bytes(b"\x89PNG")  # cut short where the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", fills_at_b_entropy)
    output = tmp_path / "out"
    config = compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={output}", "probs=true"])
    with pytest.raises(UserError) as raised:
        predict(config)
    assert str(raised.value) == (f"cannot write predictions into {output}: No space left on device (the outputs of b "
                                 "were removed); free some space or choose another output= folder")
    written = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert written == ["confidence/a.png", "entropy/a.png", "labels/a.png", "overlays/a.jpg"]


def test_exported_model_refuses_integer_images(tmp_path):
    export_model(build_model("resnet18", 3), tmp_path / "model.ts", check_sizes=[[64, 64]])
    model, _ = load_torchscript(tmp_path / "model.ts")
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with pytest.raises(Exception, match=r"takes float RGB images \[N, 3, H, W\] in \[0, 1\], got integer values"):
        model(images)
    with torch.inference_mode():
        assert model(images.float() / 255).shape == (1, 3, 64, 64)
