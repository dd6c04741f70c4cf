"""More than 255 classes: 16-bit index masks (65535 = ignore) read as written, kept intact through augmentation,
collation and dataset.label_map, trained, evaluated, predicted (16-bit label PNGs) and checked; 8-bit masks keep 255.

The reference reader is OpenCV (``cv2.IMREAD_UNCHANGED`` gives the raw uint16 values), not the project's PIL reader.
"""

import json
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
from helpers import folder_overrides, run_script
from PIL import Image

from seg.config import dataset_kwargs
from seg.data import DatasetError, FolderSegmentation, build_dataset, check_dataset, pad_collate
from seg.data.base import resolve_classes
from seg.data.palette import colour_map
from seg.data.synthetic import render
from seg.data.transforms import TransformedDataset, train_transform
from seg.data.voc import voc_palette
from seg.engine.checkpoint import load_checkpoint, model_from_checkpoint
from seg.engine.confidence import summarise
from seg.engine.predict import save_prediction
from seg.metrics import confusion_matrix
from seg.visualize import colorize, overlay

NUM_CLASSES = 300
VALUES = np.array([0, 255, 299], np.uint16)  # the synthetic renderer's 3 regions; 255 is a class here, not ignore


def write_wide_folder(root, count=6, size=64):
    """``root/images`` + ``root/masks`` with 16-bit masks (PNG, and a 16-bit and a 32-bit TIFF); 65535 on the
    renderer's border band. Returns ``{stem: mask path}``."""
    masks = {}
    for index in range(count):
        image, label = render(np.random.default_rng([1, index]), size, 3, 3, (0.3, 0.6), border=1)
        wide = np.where(label == 255, 65535, VALUES[np.minimum(label, 2)]).astype(np.uint16)
        stem = f"img_{index}"
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"{stem}.jpg")
        suffix = ".tif" if index in (1, 2) else ".png"
        # index 2: a 32-bit integer TIFF (PIL mode "I") holding 16-bit values
        Image.fromarray(wide.astype(np.int32) if index == 2 else wide).save(root / "masks" / f"{stem}{suffix}")
        masks[stem] = root / "masks" / f"{stem}{suffix}"
    return masks


def raw(path) -> np.ndarray:
    values = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return values.astype(np.uint16) if values.dtype == np.int32 else values


def test_16_bit_masks_read_as_written(tmp_path):
    masks = write_wide_folder(tmp_path)
    assert {Image.open(p).mode for p in masks.values()} == {"I;16", "I"}
    dataset = FolderSegmentation(tmp_path, "all", num_classes=NUM_CLASSES)
    assert dataset.ignore_index == 65535 and dataset.palette.shape == (NUM_CLASSES, 3)
    seen = set()
    for index in range(len(dataset)):
        _, mask = dataset[index]
        expected = raw(masks[dataset.sample_id(index)])
        assert expected.dtype == np.uint16 and mask.dtype == np.uint16
        np.testing.assert_array_equal(mask, expected)
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 255, 299, 65535}


def test_8_and_16_bit_masks_meet(tmp_path):
    write_wide_folder(tmp_path, count=2)
    eight = np.array([[0, 7, 254, 255]], np.uint8).repeat(64, 0).repeat(16, 1)
    Image.fromarray(eight).save(tmp_path / "masks" / "img_0.png")
    wide = FolderSegmentation(tmp_path, "all", num_classes=NUM_CLASSES)
    _, mask = wide[0]  # 8-bit mask, 300 classes: 255 is still the ignore value, now 65535
    np.testing.assert_array_equal(mask, np.where(eight == 255, 65535, eight.astype(np.uint16)))
    _, eight_bit = FolderSegmentation(tmp_path, "all", num_classes=255)[0]  # 8-bit masks, 255 classes: unchanged
    assert eight_bit.dtype == np.uint8
    np.testing.assert_array_equal(eight_bit, eight)

    small = np.array([[0, 2, 65535]], np.uint16).repeat(64, 0).repeat(22, 1)[:, :64]
    Image.fromarray(small).save(tmp_path / "masks" / "img_0.png")
    _, mask = FolderSegmentation(tmp_path, "all", num_classes=3)[0]  # 16-bit mask, 3 classes: uint8, 255 = ignore
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, np.where(small == 65535, 255, small))
    small[0, 0], small[0, 1] = 300, 256  # would wrap to 44 and 0 in 8 bits
    Image.fromarray(small).save(tmp_path / "masks" / "img_0.png")
    with pytest.raises(DatasetError, match=r"img_0\.png holds values \[256, 300\] outside the 3 classes \[0, 2\] and "
                                           r"the ignore value 255"):
        FolderSegmentation(tmp_path, "all", num_classes=3)[0]
    with pytest.raises(DatasetError, match=r"img_1\.tif holds values \[299\] outside the 200 classes \[0, 199\] and "
                                           r"the ignore value 255"):
        FolderSegmentation(tmp_path, "all", num_classes=200)[1]  # 65535 and 255 (no class of 200) are ignored


def test_ignore_index_and_label_map_on_16_bit_masks(tmp_path):
    masks = write_wide_folder(tmp_path, count=2)
    expected = raw(masks["img_0"])
    kwargs = dataset_kwargs({"name": "folder", "root": str(tmp_path), "split": "all", "num_classes": NUM_CLASSES,
                             "ignore_index": 0, "val_split": "val"})
    assert kwargs["ignore_index"] == 0 and "ignore_index" not in dataset_kwargs({"name": "voc", "ignore_index": 255})
    _, mask = FolderSegmentation(**{k: v for k, v in kwargs.items() if k != "name"})[0]
    np.testing.assert_array_equal(mask, np.where(expected == 0, 65535, expected))  # 0 ignored, 65535 still ignored

    _, mask = FolderSegmentation(tmp_path, "all", num_classes=1001, label_map={299: 65535, 255: 1000})[0]
    remapped = np.select([expected == 299, expected == 255], [65535, 1000], expected.astype(np.int64))
    np.testing.assert_array_equal(mask, remapped)
    with pytest.raises(DatasetError, match=r"dataset\.ignore_index must be an integer in \[0, 65535\]"):
        FolderSegmentation(tmp_path, "all", num_classes=NUM_CLASSES, ignore_index=70000)


def test_num_classes_rule():
    assert len(resolve_classes([], 65535, None, fixed=False)) == 65535
    with pytest.raises(DatasetError, match=r"dataset\.num_classes must be an integer in \[1, 65535\] \(up to 255 with "
                                           r"8-bit masks, 255 = ignore; more needs 16-bit masks, 65535 = ignore\), "
                                           r"got 65536"):
        resolve_classes([], 65536, None, fixed=False)


def test_augmentation_and_collate_keep_16_bit_values(tmp_path):
    masks = write_wide_folder(tmp_path, count=2)
    dataset = FolderSegmentation(tmp_path, "all", num_classes=NUM_CLASSES)
    padded = TransformedDataset(dataset, train_transform(96, scale_range=None, hflip=False,
                                                         fill_mask=dataset.ignore_index))
    image, mask = padded[(0, 0)]  # 64 x 64 padded to 96 x 96 (bottom and right), nothing else changes
    assert mask.dtype == torch.int32 and mask.shape == (96, 96)
    np.testing.assert_array_equal(mask[:64, :64].numpy(), raw(masks[dataset.sample_id(0)]))
    assert (mask[64:] == 65535).all() and (mask[:, 64:] == 65535).all()
    scaled = TransformedDataset(dataset, train_transform(48, scale_range=(0.5, 2.0), fill_mask=dataset.ignore_index))
    for seed in range(6):  # nearest-neighbour rescaling and cropping never make new values
        assert set(scaled[(1, seed)][1].unique().tolist()) <= {0, 255, 299, 65535}
    small = torch.zeros(40, 50, dtype=torch.int32) + 299
    images, labels = pad_collate([(image, mask), (torch.zeros(3, 40, 50, dtype=torch.uint8), small)])
    assert labels.dtype == torch.int32 and (labels[1, 40:] == 65535).all() and (labels[1, :40, :50] == 299).all()


def test_palette_and_overlay_beyond_256_classes():
    palette = colour_map(NUM_CLASSES)
    np.testing.assert_array_equal(palette[:256], voc_palette())
    assert len(np.unique(palette, axis=0)) == NUM_CLASSES
    labels = np.array([[0, 299, 65535]], np.int32)
    image = np.full((1, 3, 3), 100, np.uint8)
    np.testing.assert_array_equal(colorize(labels, palette), [[palette[0], palette[299], [0, 0, 0]]])
    blended = overlay(image, labels, palette)
    assert (blended[0, 2] == 100).all() and not (blended[0, 1] == 100).all()  # 65535 shows the image unchanged


def test_predicted_16_bit_label_png_round_trips(tmp_path):
    labels = np.array([[0, 255, 256], [299, 4095, 65534]], np.uint16)
    image = np.zeros((2, 3, 3), np.uint8)
    save_prediction(labels, image, colour_map(65535), tmp_path / "l.png", tmp_path / "o.jpg")
    assert Image.open(tmp_path / "l.png").mode == "I;16"
    np.testing.assert_array_equal(raw(tmp_path / "l.png"), labels)
    save_prediction(labels.astype(np.uint8) * 0 + 7, image, voc_palette(), tmp_path / "p.png", tmp_path / "p.jpg")
    assert Image.open(tmp_path / "p.png").mode == "P"  # up to 255 classes: a palette PNG as before
    for classes, dtype in ((255, np.uint8), (256, np.uint16), (3000, np.uint16)):  # the dataset's label space
        probabilities = torch.rand(classes, 3, 4, generator=torch.Generator().manual_seed(classes))
        summary = summarise(probabilities)
        assert summary.labels.dtype == dtype
        np.testing.assert_array_equal(summary.labels, probabilities.argmax(0).numpy())


def test_confusion_matrix_3000_classes():
    num_classes = 3000
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, num_classes, (2, 256, 256), generator=generator, dtype=torch.int32)
    label[:, :8] = 65535
    prediction = torch.randint(0, num_classes, (2, 256, 256), generator=generator)
    matrix = confusion_matrix(prediction, label, num_classes, ignore_index=65535)
    expected = np.zeros((num_classes, num_classes), np.int64)
    keep = label.numpy() != 65535
    np.add.at(expected, (label.numpy()[keep], prediction.numpy()[keep]), 1)
    np.testing.assert_array_equal(matrix.numpy(), expected)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 300-class folder dataset of 16-bit masks trained for 2 iterations through scripts/train.py."""
    root = tmp_path_factory.mktemp("wide")
    masks = write_wide_folder(root / "data")
    run = root / "run"
    run_script("train.py", folder_overrides(root / "data", {"num_classes": NUM_CLASSES}, **{
        "train.tb_images": 1, "train.class_weights": "median_frequency", "hydra.run.dir": str(run)}))
    return root, masks, run


def test_train_and_evaluate_300_classes(trained, tmp_path):
    root, masks, run = trained
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert list(record["per_class_iou"]) == names
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert len(state["palette"]) == NUM_CLASSES and len(state["config"]["train"]["class_weights"]) == NUM_CLASSES

    run_script("evaluate.py", [f"ckpt={run}", "device=cpu", f"hydra.run.dir={tmp_path / 'eval'}"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == names
    matrix = np.loadtxt(tmp_path / "eval" / "confusion_matrix.csv", delimiter=",", skiprows=1, usecols=range(1, 301),
                        dtype=np.int64)
    val = (run / "splits" / "val.txt").read_text().split()
    label_pixels = sum(np.bincount(raw(masks[stem]).ravel(), minlength=65536) for stem in val)
    np.testing.assert_array_equal(matrix.sum(1), label_pixels[:NUM_CLASSES])  # 255 and 299 counted, 65535 not


def test_predict_writes_16_bit_labels(trained, tmp_path):
    root, _, run = trained
    run_script("predict.py", [f"ckpt={run}", "device=cpu", f"input={root / 'data' / 'images' / 'img_0.jpg'}",
                              f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"])
    path = tmp_path / "out" / "labels" / "img_0.png"
    assert Image.open(path).mode == "I;16"
    written = raw(path)
    np.testing.assert_array_equal(np.array(Image.open(path)), written)
    model = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt"))
    image = np.array(Image.open(root / "data" / "images" / "img_0.jpg").convert("RGB"), np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(((image - mean) / std).transpose(2, 0, 1))[None])["out"]
    expected = logits.argmax(1)[0].numpy()
    assert (written == expected).mean() > 0.999 and written.max() < NUM_CLASSES


def test_check_dataset_on_16_bit_masks(trained, tmp_path):
    """check_dataset's statistics (what scripts/check_dataset.py prints) against numpy on the raw files."""
    root, masks, _ = trained
    report = check_dataset(build_dataset(**dataset_kwargs({"name": "folder", "root": str(root / "data"), "split": "all",
                                                           "num_classes": NUM_CLASSES, "ignore_index": 255}),
                                         strict=False), progress=False)
    text = report.format()
    raws = [raw(p) for p in masks.values()]
    counts = sum(np.bincount(r.ravel(), minlength=65536) for r in raws)
    images = sum((np.bincount(r.ravel(), minlength=65536) > 0).astype(int) for r in raws)
    labelled = counts[:NUM_CLASSES].sum()
    assert f"{100 * counts[65535] / counts.sum():.2f}% of all pixels ignored, value 65535" in text
    for value in (0, 255, 299):
        assert re.search(rf"^\s+{value} class_{value}\s+{100 * counts[value] / labelled:.3f}%\s+{images[value]}\s",
                         text, re.MULTILINE), text[:2000]
    assert report.ok and len(report.suggested_weights()["median_frequency"]) == NUM_CLASSES

    shutil.copytree(root / "data", tmp_path / "data")  # unknown values in one mask, in a copy
    bad = raws[0].copy()
    bad[0, :3] = (300, 4000, 65534)
    Image.fromarray(bad).save(tmp_path / "data" / masks["img_0"].relative_to(root / "data"))
    report = check_dataset(FolderSegmentation(tmp_path / "data", "all", num_classes=NUM_CLASSES), progress=False)
    assert len(report.problems) == 1 and "holds values [300, 4000, 65534] outside the 300 classes" in report.problems[0]
    np.testing.assert_array_equal(report.pixel_counts[[0, 255, 299, 65535]],
                                  (counts - np.bincount(raws[0].ravel(), minlength=65536))[[0, 255, 299, 65535]])


def test_coco_json_with_more_than_255_categories(tmp_path):
    """An LVIS-style instances file (400 categories: 401 classes with background) draws uint16 masks: category 400
    is class 400 (not 400 - 256), a crowd with ``crowd=ignore`` is 65535; pycocotools' annToMask is the reference."""
    from pycocotools.coco import COCO

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    square, corner = [[2, 2, 30, 2, 30, 30, 2, 30]], [[40, 5, 58, 5, 58, 20, 40, 20]]
    content = {"images": [{"id": 1, "file_name": "images/a.png", "width": 60, "height": 40}],
               "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 401)],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 400, "segmentation": square, "iscrowd": 0,
                                "area": 1, "bbox": [2, 2, 28, 28]},
                               {"id": 2, "image_id": 1, "category_id": 7, "segmentation": corner, "iscrowd": 1,
                                "area": 1, "bbox": [40, 5, 18, 15]}]}
    (tmp_path / "result.json").write_text(json.dumps(content))
    dataset = build_dataset("coco_json", tmp_path, "all", crowd="ignore")
    assert dataset.num_classes == 401 and dataset.ignore_index == 65535
    _, mask = dataset[0]
    coco = COCO(str(tmp_path / "result.json"))
    expected = np.zeros((40, 60), np.uint16)
    expected[coco.annToMask(coco.anns[1]) > 0] = 400
    expected[coco.annToMask(coco.anns[2]) > 0] = 65535
    assert mask.dtype == np.uint16 and (mask == 400).any() and (mask == 65535).any()
    np.testing.assert_array_equal(mask, expected)


def test_colour_coded_masks_with_300_colours(tmp_path):
    """A colour table of 300 classes (dataset.colors): colour i is class i, past 255 too (no wrap to 8 bits)."""
    write_wide_folder(tmp_path, count=2)
    colours = colour_map(NUM_CLASSES)
    for index, path in enumerate(sorted((tmp_path / "masks").iterdir())):
        path.unlink()
        labels = np.arange(64 * 64).reshape(64, 64) % NUM_CLASSES
        Image.fromarray(colours[labels]).save(tmp_path / "masks" / f"img_{index}.png")
    dataset = FolderSegmentation(tmp_path, "all", colors=colours.tolist())
    assert dataset.num_classes == NUM_CLASSES
    _, mask = dataset[0]
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, np.arange(64 * 64).reshape(64, 64) % NUM_CLASSES)
