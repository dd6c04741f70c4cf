"""VOC-layout reader, voc_aug / prepare_sbd, every bad-input error, and check_dataset on tiny files."""

import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from seg.data import DATASETS, VOC_CLASSES, DatasetError, VOCSegmentation, build_dataset, check_dataset
from seg.data.sbd import prepare_sbd
from seg.errors import UserError

# First entries of the official VOC colour map (the palette stored in VOC's PNGs).
VOC_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
               20: (0, 64, 128), 255: (224, 224, 192)}


def palette_png(path, mask):
    image = Image.fromarray(mask)
    flat = [0] * 768
    for value, colour in VOC_COLOURS.items():
        flat[3 * value: 3 * value + 3] = colour
    image.putpalette(flat)
    image.save(path)


def write_voc(root, splits, size=(24, 32), num_classes=21, seed=0):
    """VOCdevkit/VOC2012 under ``root`` with random palette masks (255 outlines); returns {id: mask}."""
    folder = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    masks = {}
    for split, ids in splits.items():
        for sample_id in ids:
            mask = rng.integers(0, num_classes, size, dtype=np.uint8)
            mask[0, :] = 255
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                folder / "JPEGImages" / f"{sample_id}.jpg")
            palette_png(folder / "SegmentationClass" / f"{sample_id}.png", mask)
            masks[sample_id] = mask
        (folder / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return masks


@pytest.fixture
def voc(tmp_path):
    masks = write_voc(tmp_path, {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]})
    return tmp_path, masks


def test_reads_what_was_written(voc):
    root, masks = voc
    dataset = build_dataset("voc", root, "train")
    assert isinstance(dataset, VOCSegmentation) and len(dataset) == 2
    assert dataset.class_names == list(VOC_CLASSES) and dataset.num_classes == 21 and dataset.ignore_index == 255
    assert dataset.palette.shape == (256, 3) and dataset.palette.dtype == np.uint8
    for value, colour in VOC_COLOURS.items():
        assert tuple(dataset.palette[value]) == colour
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
        np.testing.assert_array_equal(mask, masks[dataset.sample_id(index)])
    assert [dataset.sample_id(i) for i in range(2)] == ["2007_000001", "2007_000002"]


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_root_layouts(voc, sub):
    root, _ = voc
    dataset = VOCSegmentation(root / sub if sub else root, "val")
    assert dataset.root == root / "VOCdevkit" / "VOC2012" and len(dataset) == 1


def test_own_data_classes(tmp_path):
    write_voc(tmp_path, {"train": ["a", "b"]}, num_classes=3)
    dataset = build_dataset("voc", tmp_path, "train", num_classes=3, class_names=["sky", "road", "car"])
    assert dataset.num_classes == 3 and dataset.class_names == ["sky", "road", "car"]
    assert set(np.unique(dataset[1][1])) <= {0, 1, 2, 255}
    assert build_dataset("voc", tmp_path, "train", num_classes=3).class_names == ["class_0", "class_1", "class_2"]
    with pytest.raises(DatasetError, match="num_classes is 4 but dataset.class_names has 3"):
        build_dataset("voc", tmp_path, "train", num_classes=4, class_names=["sky", "road", "car"])
    # Masks of a 21-class dataset read with 3 classes: the out-of-range values are reported, not cast.
    write_voc(tmp_path / "voc21", {"train": ["c"]})
    with pytest.raises(DatasetError, match=r"c\.png holds values \[3, 4"):
        build_dataset("voc", tmp_path / "voc21", "train", num_classes=3)[0]


def test_voc_aug_and_prepare_sbd(tmp_path):
    voc_masks = write_voc(tmp_path / "VOC", {"train": ["t1", "t2"], "val": ["v1", "v2"]})
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    voc_folder = tmp_path / "VOC" / "VOCdevkit" / "VOC2012"
    sbd_masks = {}
    for index, sample_id in enumerate(["s1", "s2", "t1", "v1"]):  # t1 is also VOC train, v1 is VOC val
        mask = np.full((24, 32), index + 1, dtype=np.uint8)
        mask[5:9, 3:20] = 0
        sbd_masks[sample_id] = mask
        scipy.io.savemat(sbd / "cls" / f"{sample_id}.mat",
                         {"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1), "CategoriesPresent": [1]}})
        if sample_id.startswith("s"):
            Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(voc_folder / "JPEGImages" / f"{sample_id}.jpg")
    (sbd / "train.txt").write_text("s1\nt1\n")
    (sbd / "val.txt").write_text("s2\nv1\n")

    assert prepare_sbd(tmp_path / "benchmark_RELEASE", tmp_path / "VOC", progress=False) == 4
    assert (voc_folder / "ImageSets/Segmentation/train_aug.txt").read_text().split() == ["s1", "s2", "t1", "t2"]
    train_aug = build_dataset("voc_aug", tmp_path / "VOC", "train_aug")
    read = {train_aug.sample_id(i): train_aug[i][1] for i in range(len(train_aug))}
    np.testing.assert_array_equal(read["s1"], sbd_masks["s1"])
    np.testing.assert_array_equal(read["s2"], sbd_masks["s2"])
    np.testing.assert_array_equal(read["t1"], voc_masks["t1"])  # VOC's own mask (with its 255 outline) wins
    np.testing.assert_array_equal(read["t2"], voc_masks["t2"])
    assert Image.open(voc_folder / "SegmentationClassAug" / "s1.png").mode == "P"
    val = build_dataset("voc_aug", tmp_path / "VOC", "val")
    np.testing.assert_array_equal(val[0][1], voc_masks["v1"])


def test_missing_train_aug_points_to_prepare_sbd(voc):
    with pytest.raises(DatasetError, match=r"train_aug\.txt.*prepare_sbd\.py.*docs/datasets\.md"):
        build_dataset("voc_aug", voc[0], "train_aug")


# --- bad input ----------------------------------------------------------------------------------------------------

def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "nowhere")) + ".*docs/datasets.md") as info:
        build_dataset("voc", tmp_path / "nowhere", "train")
    assert isinstance(info.value, UserError)


def test_missing_split_file(voc):
    expected = voc[0] / "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt"
    with pytest.raises(DatasetError, match=re.escape(str(expected)) + ".*docs/datasets.md"):
        build_dataset("voc", voc[0], "test")


def test_empty_split(voc):
    (voc[0] / "VOCdevkit/VOC2012/ImageSets/Segmentation/empty.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.txt is empty"):
        build_dataset("voc", voc[0], "empty")


def folder(voc):
    return voc[0] / "VOCdevkit" / "VOC2012"


@pytest.mark.parametrize("kind", ["image", "mask"])
def test_missing_file(voc, kind):
    path = folder(voc) / ("JPEGImages/2007_000002.jpg" if kind == "image" else "SegmentationClass/2007_000002.png")
    path.unlink()
    dataset = build_dataset("voc", voc[0], "train")
    dataset[0]
    with pytest.raises(DatasetError, match=f"{kind} file not found: {re.escape(str(path))}"):
        dataset[1]


@pytest.mark.parametrize("kind", ["image", "mask"])
def test_truncated_file(voc, kind):
    path = folder(voc) / ("JPEGImages/2007_000001.jpg" if kind == "image" else "SegmentationClass/2007_000001.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DatasetError, match=f"cannot read {kind} file {re.escape(str(path))}.*truncated"):
        build_dataset("voc", voc[0], "train")[0]


def test_unreadable_file(voc):
    path = folder(voc) / "SegmentationClass/2007_000001.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=f"cannot read mask file {re.escape(str(path))}"):
        build_dataset("voc", voc[0], "train")[0]


def test_mask_value_out_of_range(voc):
    path = folder(voc) / "SegmentationClass/2007_000001.png"
    mask = np.zeros((24, 32), np.uint8)
    mask[3, 3], mask[4, 4], mask[5, 5] = 21, 254, 255
    palette_png(path, mask)
    with pytest.raises(DatasetError, match=re.escape(f"{path} holds values [21, 254] outside the 21 classes")):
        build_dataset("voc", voc[0], "train")[0]


@pytest.mark.parametrize("mode, detail", [("RGB", "3 channels"), ("RGBA", "4 channels"), ("F", "floating-point"),
                                          ("I", "values 1..70000")])
def test_mask_mode_refused(voc, mode, detail):
    """16-bit masks are read (tests/test_wide_masks.py); colour, float and 32-bit values beyond 16 bits are not."""
    path = folder(voc) / "SegmentationClass/2007_000001.png"
    values = np.ones((24, 32), np.uint8)
    if mode in ("RGB", "RGBA"):
        image = Image.fromarray(np.stack([values] * len(mode), axis=-1), mode)
    else:
        values = values.astype(np.float32 if mode == "F" else np.int32)
        values[0, 0] = 0 if mode == "F" else 70000
        image = Image.fromarray(values)
        assert image.mode == mode
    image.save(path, format="PNG" if mode in ("RGB", "RGBA") else "TIFF")  # PNG cannot hold these; read by content
    assert Image.open(path).mode == mode
    with pytest.raises(DatasetError, match=f"{re.escape(str(path))} has {detail}"):
        build_dataset("voc", voc[0], "train")[0]


def test_size_mismatch(voc):
    path = folder(voc) / "SegmentationClass/2007_000001.png"
    palette_png(path, np.zeros((20, 32), np.uint8))
    pattern = r"2007_000001\.jpg is 32x24 \(WxH\) but the mask from .*2007_000001\.png is 32x20"
    with pytest.raises(DatasetError, match=pattern):
        build_dataset("voc", voc[0], "train")[0]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA"])
def test_images_converted_to_rgb(voc, mode):
    path = folder(voc) / "JPEGImages/2007_000001.jpg"
    rgb = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(path, format="PNG")  # the reader goes by content, not extension
    image, _ = build_dataset("voc", voc[0], "train")[0]
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    if mode == "RGBA":
        np.testing.assert_array_equal(image, rgb)


def test_unknown_dataset_and_option(voc):
    with pytest.raises(DatasetError, match=r"dataset\.name must be one of \['ade20k', 'cityscapes', 'coco', "
                                           r"'coco_json', 'coco_stuff', 'cvat', 'folder', 'labelme', "
                                           r"'pascal_context', 'roboflow', 'synthetic'"):
        build_dataset("nonexistent", voc[0], "train")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) dataset\.min_area for dataset 'voc'.*image_suffix"):
        build_dataset("voc", voc[0], "train", min_area=3)
    assert set(DATASETS) == {"synthetic", "voc", "voc_aug", "cityscapes", "coco", "folder", "ade20k", "coco_stuff",
                             "pascal_context", "coco_json", "labelme", "cvat", "roboflow"}


# --- check_dataset ------------------------------------------------------------------------------------------------

def test_check_dataset_reports_every_problem(voc):
    root, masks = voc
    write_voc(root, {"train": ["a", "b", "c", "d"]}, seed=3)
    (folder(voc) / "JPEGImages/b.jpg").unlink()
    palette_png(folder(voc) / "SegmentationClass/d.png", np.full((24, 32), 30, np.uint8))
    report = check_dataset(build_dataset("voc", root, "train"), progress=False)
    assert not report.ok and report.num_samples == 4
    assert len(report.problems) == 2
    assert report.problems[0].startswith("b: image file not found") and "b.jpg" in report.problems[0]
    assert report.problems[1].startswith("d: mask") and "[30]" in report.problems[1]
    assert report.image_sizes == {(24, 32): 2}
    assert report.pixel_counts.sum() == 2 * 24 * 32 and report.pixel_counts[255] == 2 * 32
    text = report.format()
    assert "2 with problems" in text and "aeroplane" in text and "24 x 32: 2 images" in text

    clean = check_dataset(build_dataset("voc", root, "val"), progress=False)
    assert clean.ok and clean.problems == []
