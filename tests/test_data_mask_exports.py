"""dataset=cvat (CVAT "Segmentation mask 1.1") and dataset=roboflow (Roboflow "Semantic Segmentation Masks"), read as
the tools write them: classes and colours from the export's own files, its subsets, unannotated images, bad input,
check_dataset, a tiny training run, evaluation, and predict.py skipping the exports' masks."""

import json
import re

import numpy as np
import pytest
from helpers import compose_config, folder_overrides, run_script
from PIL import Image

from seg.data import DatasetError, build_dataset, check_dataset
from seg.engine.checkpoint import load_checkpoint
from seg.engine.predict import list_inputs
from seg.engine.trainer import train

W, H = 64, 48
LABELMAP = [("background", (0, 0, 0)), ("crack", (250, 50, 50)), ("rust", (40, 200, 90)), ("paint", (10, 10, 128))]


def labels(seed):
    """A class-index mask of 4 classes: rectangles at places drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    for value in (1, 2, 3):
        y, x = rng.integers(0, H - 12), rng.integers(0, W - 16)
        mask[y:y + 12, x:x + 16] = value
    return mask


def photo(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def write_cvat(root, subsets=None, labelmap=True):
    """The export: RGB masks, one palette mask and one grayscale mask (CVAT's docs: 1 or 3 channels), and an image
    nobody annotated (no mask). Returns ``{name: expected class indices}``."""
    subsets = subsets or {"Train": ["frame_000", "frame_001", "frame_002", "frame_003"],
                          "Validation": ["frame_004", "frame_005"]}
    colours = np.array([c for _, c in LABELMAP], np.uint8)
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    if labelmap:
        (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
            f"{name}:{','.join(map(str, c))}::\n" for name, c in LABELMAP))
    expected = {}
    for subset, names in subsets.items():
        (root / "ImageSets" / "Segmentation" / f"{subset}.txt").write_text("".join(n + "\n" for n in names))
        for number, name in enumerate(names):
            photo(root / "JPEGImages" / f"{name}.jpg", hash(name) % 1000)
            if name == "frame_003":
                continue  # not annotated: CVAT writes no mask
            expected[name] = labels(int(name[-3:]))
            mask_path = root / "SegmentationClass" / f"{name}.png"
            if name == "frame_001":
                palette_image = Image.fromarray(expected[name], mode="P")
                palette_image.putpalette(colours.ravel().tolist() + [0] * (768 - colours.size))
                palette_image.save(mask_path)
            elif name == "frame_002":
                Image.fromarray(expected[name], mode="L").save(mask_path)
            else:
                Image.fromarray(colours[expected[name]] if labelmap else expected[name], mode=None).save(mask_path)
    return expected


def write_roboflow(root, splits=(("train", 4), ("valid", 2)), header="Pixel Value, Class"):
    expected = {}
    for split, count in splits:
        folder = root / split
        folder.mkdir(parents=True)
        (folder / "_classes.csv").write_text(f"{header}\n0, background\n1, crack\n2, rust\n3, paint\n")
        for i in range(count):
            name = f"img{i}_jpg.rf.{split}{i:04d}"
            photo(folder / f"{name}.jpg", i)
            expected[f"{split}/{name}"] = labels(10 * i + len(split))
            Image.fromarray(expected[f"{split}/{name}"]).save(folder / f"{name}_mask.png")
    return expected


def test_cvat_reads_every_mask_kind_with_its_labelmap(tmp_path):
    expected = write_cvat(tmp_path)
    train_set = build_dataset("cvat", tmp_path, "train")
    assert train_set.class_names == [n for n, _ in LABELMAP] and train_set.problems == []
    assert [train_set.sample_id(i) for i in range(len(train_set))] == ["frame_000", "frame_001", "frame_002"]
    assert train_set.skipped_lines() == ["1 images without a mask in SegmentationClass/ (not annotated in CVAT; e.g. "
                                         "'frame_003')"]
    for index in range(len(train_set)):
        np.testing.assert_array_equal(train_set[index][1], expected[train_set.sample_id(index)])
    assert train_set.palette[:4].tolist() == [list(c) for _, c in LABELMAP]
    val = build_dataset("cvat", tmp_path, "val")  # Validation.txt
    assert [val.sample_id(i) for i in range(len(val))] == ["frame_004", "frame_005"]
    assert len(build_dataset("cvat", tmp_path, "all")) == 5


def test_cvat_default_subset_derives_train_and_val_and_voc_without_labelmap(tmp_path):
    names = [f"frame_{i:03d}" for i in range(6)]
    write_cvat(tmp_path, {"default": names}, labelmap=False)
    train_set = build_dataset("cvat", tmp_path, "train", val_fraction=0.34)
    assert train_set.derived_splits is not None and len(train_set.derived_splits["val"]) == 2
    assert train_set.num_classes == 21 and train_set.class_names[:2] == ["background", "aeroplane"]
    assert sorted(train_set.derived_splits["train"] + train_set.derived_splits["val"]) == names


def test_cvat_bad_input(tmp_path):
    write_cvat(tmp_path)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:3, :3] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "SegmentationClass" / "frame_000.png")
    (tmp_path / "ImageSets" / "Segmentation" / "Train.txt").write_text("frame_000\nframe_001\nframe_002\nframe_003\n"
                                                                          "ghost\n")
    dataset = build_dataset("cvat", tmp_path, "train", strict=False)
    assert any(re.search(r"Train\.txt lists 'ghost' but there is no image/mask pair", p) for p in dataset.problems)
    report = check_dataset(dataset, progress=False)
    assert any(re.search(r"frame_000: mask .*frame_000\.png has 9 pixels of colour \(1, 2, 3\) that labelmap\.txt "
                         r"does not list; add the colour to labelmap\.txt", p) for p in report.problems)
    assert "skipped: 1 images without a mask" in report.format()
    with pytest.raises(DatasetError, match=r"dataset\.split=test|split file of split 'test' not found"):
        build_dataset("cvat", tmp_path, "test")
    (tmp_path / "JPEGImages").rename(tmp_path / "photos")
    with pytest.raises(DatasetError, match=r"images folder JPEGImages/ of the CVAT export not found: .*JPEGImages; "
                                           r"export again with \"Save images\" checked"):
        build_dataset("cvat", tmp_path, "train")


def test_roboflow_reads_pairs_classes_and_splits(tmp_path):
    expected = write_roboflow(tmp_path)
    train_set = build_dataset("roboflow", tmp_path, "train")
    assert train_set.class_names == ["background", "crack", "rust", "paint"] and train_set.problems == []
    assert len(train_set) == 4 and all(not s.image.name.endswith("_mask.png") for s in train_set.samples)
    for index in range(len(train_set)):
        np.testing.assert_array_equal(train_set[index][1], expected[train_set.sample_id(index)])
    assert len(build_dataset("roboflow", tmp_path, "val")) == 2 and len(build_dataset("roboflow", tmp_path, "all")) == 6
    with pytest.raises(DatasetError, match=r"dataset\.split=test is not a folder of the Roboflow export .*: choose "
                                           r"one of train, valid, all"):
        build_dataset("roboflow", tmp_path, "test")
    root, files = list_inputs(tmp_path / "train", tmp_path / "out")  # predict.py skips the masks
    assert len(files) == 4 and not any(f.name.endswith("_mask.png") for f in files)


def test_roboflow_bad_input(tmp_path):
    write_roboflow(tmp_path)
    name = sorted((tmp_path / "train").glob("*_mask.png"))[0]
    values = np.zeros((H, W), np.uint8)
    values[0, :5] = 7
    Image.fromarray(values).save(name)
    photo(tmp_path / "train" / "lonely.jpg", 3)
    dataset = build_dataset("roboflow", tmp_path, "train", strict=False)
    assert any(re.search(r"image .*lonely\.jpg has no mask .*lonely_mask\.png", p) for p in dataset.problems)
    report = check_dataset(dataset, progress=False)
    assert any(re.search(r"mask .*_mask\.png holds pixel values \[7\] that _classes\.csv does not list", p)
               for p in report.problems)
    (tmp_path / "valid" / "_classes.csv").write_text("Pixel Value, Class\n0, background\n1, crack\n")
    with pytest.raises(DatasetError, match=r"valid/_classes\.csv lists other classes than .*train/_classes\.csv"):
        build_dataset("roboflow", tmp_path, "train")
    (tmp_path / "valid" / "_classes.csv").write_text("Pixel Value, Class\nzero, background\n")
    with pytest.raises(DatasetError, match=r"_classes\.csv line 2: expected \"pixel value, class\""):
        build_dataset("roboflow", tmp_path, "train")


@pytest.mark.parametrize("fmt", ["cvat", "roboflow"])
def test_trains_evaluates_and_predicts(tmp_path, fmt):
    root = tmp_path / "data"
    (write_cvat if fmt == "cvat" else write_roboflow)(root)
    result = run_script("check_dataset.py", [f"dataset={fmt}", f"dataset.root={root}", "dataset.split=all",
                                             f"hydra.run.dir={tmp_path / 'check'}"])
    assert re.search(r"(5|6) samples, 0 with problems", result.stdout) and "paint" in result.stdout
    run = tmp_path / "run"
    summary = train(compose_config("train", folder_overrides(root, {}, dataset=fmt)), run)
    names = ["background", "crack", "rust", "paint"]
    assert summary["iteration"] == 2 and list(summary["last_metrics"]["per_class_dice"]) == names
    ckpt = run / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["class_names"] == names
    run_script("evaluate.py", [f"ckpt={ckpt}", "num_workers=0", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 2
    if fmt == "roboflow":  # the photos only, never the masks next to them
        run_script("predict.py", [f"ckpt={ckpt}", f"input={root / 'valid'}", f"output={tmp_path / 'pred'}",
                                  f"hydra.run.dir={tmp_path / 'pred'}"])
        written = sorted(p.name for p in (tmp_path / "pred").rglob("*.png"))
        assert written and not any("_mask_" in n or n.endswith("_mask.png") for n in written)


@pytest.mark.parametrize("fmt", ["coco_json", "labelme", "cvat", "roboflow"])
def test_example_exports_read_back(tmp_path, fmt):
    from seg.data.export_examples import write_export_example

    expected = write_export_example(tmp_path / fmt, fmt, num_images=4, image_size=32, num_classes=4)
    dataset = build_dataset(fmt, tmp_path / fmt, "all")
    assert len(dataset) == 4 and dataset.problems == [] and dataset.num_classes == 4
    assert dataset.class_names[1:] == ["disc", "square", "triangle"]
    for index in range(4):
        np.testing.assert_array_equal(dataset[index][1], expected[dataset.sample_id(index)])
    assert len(build_dataset(fmt, tmp_path / fmt, "val")) == 1


def test_make_example_folder_writes_an_export(tmp_path):
    out = tmp_path / "labelme"
    result = run_script("make_example_folder.py", [f"out={out}", "num_images=4", "image_size=32", "format=labelme"])
    assert f"dataset=labelme dataset.root={out}" in result.stdout
    assert len(build_dataset("labelme", out, "train")) == 3
