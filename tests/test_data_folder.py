"""dataset=folder: every mask format, pairing, splits, colour tables, every bad-input error, check_dataset."""

import re

import numpy as np
import pytest
from helpers import FOLDER_CLASSES, FOLDER_COLOURS, MASK_FORMATS, run_script, write_folder
from PIL import Image

from seg.data import DatasetError, FolderSegmentation, build_dataset, check_dataset
from seg.data.colors import read_colour_table
from seg.data.folder import derive_split
from seg.data.synthetic import write_folder_example
from seg.errors import UserError
from seg.outputs import OutputExists


def folder(root, split="train", **options):
    return build_dataset("folder", root, split, **options)


@pytest.mark.parametrize("fmt", MASK_FORMATS)
def test_every_mask_format_reads_the_written_labels(tmp_path, fmt):
    expected, options = write_folder(tmp_path, fmt, count=6, size=40)
    dataset = folder(tmp_path, "all", **options)
    assert isinstance(dataset, FolderSegmentation) and len(dataset) == 6 and dataset.problems == []
    assert dataset.num_classes == (2 if fmt == "binary" else 3)
    if fmt in ("csv", "labelmap", "rgb_list", "gray"):
        assert dataset.class_names == FOLDER_CLASSES
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape == (40, 40, 3) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected[dataset.sample_id(index)])
    assert sorted(dataset.sample_id(i) for i in range(6)) == sorted(expected)  # nested stems: a/img_000, b/...
    if fmt in ("csv", "labelmap", "rgb_list"):  # the display palette is the masks' own colours
        assert dataset.palette[:3].tolist() == FOLDER_COLOURS


def test_colour_mapping_is_exact_on_a_hand_made_mask(tmp_path):
    write_folder(tmp_path, "csv", count=2, size=16)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:4] = FOLDER_COLOURS[2]
    rgb[4:6, :3] = FOLDER_COLOURS[1]
    Image.fromarray(rgb).save(tmp_path / "masks" / "a" / "img_000.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "masks" / "b" / "img_001.png")  # alpha is dropped
    dataset = folder(tmp_path, "all", colors="classes.csv")
    expected = np.zeros((16, 16), np.uint8)
    expected[:4], expected[4:6, :3] = 2, 1
    for index in range(2):
        np.testing.assert_array_equal(dataset.load_mask(index), expected)


def test_grayscale_saved_as_rgb_and_one_bit_masks_are_indices(tmp_path):
    write_folder(tmp_path, "gray", count=2, size=16)
    values = np.tile(np.array([0, 1, 2, 255], np.uint8), (16, 4))
    Image.fromarray(np.stack([values] * 3, axis=-1)).save(tmp_path / "masks" / "a" / "img_000.png")
    np.testing.assert_array_equal(folder(tmp_path, "all", num_classes=3).load_mask(0), values)
    Image.fromarray(values > 0).save(tmp_path / "masks" / "a" / "img_000.png")  # mode "1"
    assert Image.open(tmp_path / "masks" / "a" / "img_000.png").mode == "1"
    mask = folder(tmp_path, "all", num_classes=2, label_map={255: 1}).load_mask(0)
    np.testing.assert_array_equal(mask, (values > 0).astype(np.uint8))


def test_label_map_moves_void_to_ignore(tmp_path):
    expected, _ = write_folder(tmp_path, "gray", count=2, size=32)
    dataset = folder(tmp_path, "all", num_classes=2, label_map={2: 255})
    for index in range(2):
        want = expected[dataset.sample_id(index)].copy()
        want[want == 2] = 255
        np.testing.assert_array_equal(dataset[index][1], want)


def test_colour_files_in_annotation_tool_formats(tmp_path):
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\r\nsky, 70,130,180\r\n\r\nroad,128,64,128\r\n")
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\n"
                                           "car:255, 0,0:wheel:\n")
    csv_table = read_colour_table("class_dict.csv", tmp_path)  # relative paths are looked up in the root first
    assert csv_table.names == ["sky", "road"] and csv_table.colours.tolist() == [[70, 130, 180], [128, 64, 128]]
    labelmap = read_colour_table(tmp_path / "labelmap.txt")
    assert labelmap.names == ["background", "car"] and labelmap.colours.tolist() == [[0, 0, 0], [255, 0, 0]]
    listed = read_colour_table([[1, 2, 3], [4, 5, 6]])
    assert listed.names is None and len(listed) == 2


@pytest.mark.parametrize("content, message", [
    ("name,r,g,b\nsky,70,130\n", r"line 2: expected name,r,g,b"),
    ("name,r,g,b\n", "lists no classes"),
    ("name,r,g,b\nsky,1,2,3\nsea,1,2,3\n", r"gives the colour \(1, 2, 3\) to more than one class"),
    ("name,r,g,b\nsky,1,2,300\n", "values 0-255"),
])
def test_bad_colour_tables(tmp_path, content, message):
    (tmp_path / "c.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_colour_table(tmp_path / "c.csv")


def test_bad_colour_options(tmp_path):
    write_folder(tmp_path, "csv", count=2, size=16)
    with pytest.raises(DatasetError, match=r"dataset\.colors file not found: .*nope\.csv"):
        folder(tmp_path, colors="nope.csv")
    with pytest.raises(DatasetError, match=r"dataset\.colors must be a list of \[r, g, b\]"):
        folder(tmp_path, colors=[[0, 0], [1, 1]])
    with pytest.raises(DatasetError, match="dataset.colors has 3 colours but there are 4 classes"):
        folder(tmp_path, colors="classes.csv", num_classes=4)


# --- splits -------------------------------------------------------------------------------------------------------

def test_derived_split_is_deterministic():
    stems = [f"img_{i:03d}" for i in range(50)]
    split = derive_split(stems, 0.2, seed=0)
    assert len(split["val"]) == 10 and sorted(split["train"] + split["val"]) == stems
    assert split["train"] == sorted(split["train"]) and split["val"] == sorted(split["val"])
    assert derive_split(list(reversed(stems)), 0.2, seed=0) == split  # the listing order does not matter
    assert derive_split(stems, 0.2, seed=1) != split
    # val is the stems ranking first by sha1("<seed>:<stem>") (independent reference: hashlib here)
    import hashlib
    ranked = sorted(stems, key=lambda s: hashlib.sha1(f"0:{s}".encode()).hexdigest())
    assert split["val"] == sorted(ranked[:10])
    tiny = derive_split(["a", "b"], 0.01, 0)
    assert len(tiny["train"]) == len(tiny["val"]) == 1  # at least one on each side
    with pytest.raises(DatasetError, match="at least 2 image/mask pairs"):
        derive_split(["a"], 0.2, 0)


def test_split_from_val_fraction(tmp_path):
    write_folder(tmp_path, "palette", count=10, size=16)
    train = folder(tmp_path, "train", num_classes=3, val_fraction=0.3, seed=4)
    val = folder(tmp_path, "val", num_classes=3, val_fraction=0.3, seed=4)
    train_ids = {train.sample_id(i) for i in range(len(train))}
    val_ids = {val.sample_id(i) for i in range(len(val))}
    assert len(val_ids) == 3 and len(train_ids) == 7 and not train_ids & val_ids
    assert train.derived_splits == val.derived_splits == {"train": sorted(train_ids), "val": sorted(val_ids)}


def test_split_lists_in_root_and_recorded_splits(tmp_path):
    write_folder(tmp_path, "palette", count=6, size=16)
    (tmp_path / "train.txt").write_text("a/img_000\na/img_002.jpeg\nb/img_001\n")  # a suffix is tolerated
    (tmp_path / "val.txt").write_text("b/img_003\n")
    train = folder(tmp_path, "train", num_classes=3)
    assert [train.sample_id(i) for i in range(3)] == ["a/img_000", "a/img_002", "b/img_001"]
    assert train.derived_splits is None
    assert len(folder(tmp_path, "val", num_classes=3)) == 1
    recorded = folder(tmp_path, "val", num_classes=3, splits={"train": ["a/img_000"], "val": ["a/img_004"]})
    assert [recorded.sample_id(0)] == ["a/img_004"]  # dataset.splits wins over the files
    with pytest.raises(DatasetError, match=r"split file of split 'test' not found: .*test\.txt"):
        folder(tmp_path, "test", num_classes=3)
    (tmp_path / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"split file of split 'val' not found"):  # train.txt alone: no guessing
        folder(tmp_path, "val", num_classes=3)


# --- bad input: one line naming the file ----------------------------------------------------------------------------

def _first_problem(root, **options):
    with pytest.raises(DatasetError) as info:
        folder(root, "all", **options)
    assert "\n" not in str(info.value) and isinstance(info.value, UserError)
    return str(info.value)


def test_image_without_mask_and_mask_without_image(tmp_path):
    write_folder(tmp_path, "palette", count=4, size=16)
    (tmp_path / "masks" / "a" / "img_000.png").rename(tmp_path / "masks" / "a" / "orphan.png")
    message = _first_problem(tmp_path, num_classes=3)
    assert re.search(r"image .*a/img_000\.jpg has no mask .*a/img_000\.png \(stem 'a/img_000'\) \(and 1 more "
                     r"problems\); python scripts/check_dataset\.py dataset=folder", message)
    problems = folder(tmp_path, "all", num_classes=3, strict=False).problems
    assert len(problems) == 2 and re.search(r"mask .*a/orphan\.png has no image .*\(stem 'a/orphan'\)", problems[1])


def test_two_files_with_one_stem_and_jpeg_masks(tmp_path):
    write_folder(tmp_path, "palette", count=4, size=16)
    Image.new("RGB", (16, 16)).save(tmp_path / "images" / "a" / "img_000.png")
    (tmp_path / "masks" / "b" / "img_001.png").unlink()
    Image.new("L", (16, 16)).save(tmp_path / "masks" / "b" / "img_001.jpg")
    problems = folder(tmp_path, "all", num_classes=3, strict=False).problems
    assert any(re.search(r"images .*a/img_000\.jpg, .*a/img_000\.png have the same stem 'a/img_000'", p)
               for p in problems)
    assert any(re.search(r"mask .*b/img_001\.jpg is a JPEG: .*save masks as PNG", p) for p in problems)
    assert "same stem" in _first_problem(tmp_path, num_classes=3)


def test_nothing_paired_and_missing_folders(tmp_path):
    write_folder(tmp_path, "palette", count=2, size=16)
    for path in list((tmp_path / "masks").rglob("*.png")):
        path.rename(path.with_name(path.stem + "_mask.png"))
    with pytest.raises(DatasetError, match=r"no image in .*images has a mask with the same stem .*found 2 images "
                                           r"and 2 masks \(e\.g\. .*a/img_000\.jpg has no .*a/img_000\.png\)"):
        folder(tmp_path, num_classes=3)
    with pytest.raises(DatasetError, match=r"masks folder \(dataset\.masks=labels\) not found: .*labels"):
        folder(tmp_path, num_classes=3, masks="labels")
    with pytest.raises(DatasetError, match=r"dataset\.num_classes \(or dataset\.class_names, or dataset\.colors\) "
                                           r"must be set for dataset=folder"):
        folder(tmp_path)
    with pytest.raises(DatasetError, match=r"dataset\.val_fraction must be a number in \(0, 1\), got 1\.5"):
        folder(tmp_path, num_classes=3, val_fraction=1.5)
    with pytest.raises(DatasetError, match=r"dataset\.label_map maps mask values \(0-255 in 8-bit masks, 0-65535 in "
                                           r"16-bit ones\) .* got 70000: 1"):
        folder(tmp_path, num_classes=3, label_map={70000: 1})


def test_unknown_colour_names_the_colour_and_its_pixels(tmp_path):
    write_folder(tmp_path, "rgb_list", count=2, size=16)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[0, :5] = (9, 9, 9)
    rgb[1, :2] = (1, 2, 3)
    path = tmp_path / "masks" / "a" / "img_000.png"
    Image.fromarray(rgb).save(path)
    dataset = folder(tmp_path, "all", colors=FOLDER_COLOURS)
    with pytest.raises(DatasetError, match=re.escape(f"mask {path} has 5 pixels of colour (9, 9, 9) and 1 other "
                                                     f"unknown colours (2 pixels) that dataset.colors does not list")):
        dataset[0]


def test_colour_mask_without_colors_and_value_outside_the_classes(tmp_path):
    write_folder(tmp_path, "rgb_list", count=2, size=16)
    path = tmp_path / "masks" / "a" / "img_000.png"
    with pytest.raises(DatasetError, match=re.escape(f"mask {path} is a colour (RGB) image: set dataset.colors")):
        folder(tmp_path, "all", num_classes=3)[0]
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(path)
    with pytest.raises(DatasetError, match=re.escape(f"mask {path} holds values [7] outside the 3 classes [0, 2] and "
                                                     f"the ignore value 255; remap them with dataset.label_map")):
        folder(tmp_path, "all", num_classes=3)[0]


def test_binary_0_255_masks_need_a_label_map(tmp_path):
    write_folder(tmp_path, "binary", count=2, size=32)
    # Found when the dataset is built (its first mask is read), not at the first training batch.
    with pytest.raises(DatasetError, match=r"mask .*img_000\.png holds only 0 and 255 with 2 classes, but 255 is the "
                                           r"ignore value: for 0/255 binary masks set dataset\.label_map=\{255:1\}"):
        folder(tmp_path, "all", num_classes=2)
    assert set(np.unique(folder(tmp_path, "all", num_classes=2, label_map={255: 1})[0][1])) == {0, 1}
    # An explicit (empty) label map says 255 really is "ignore".
    assert set(np.unique(folder(tmp_path, "all", num_classes=2, label_map={})[0][1])) == {0, 255}


# --- check_dataset ----------------------------------------------------------------------------------------------------

def test_check_dataset_lists_every_problem(tmp_path):
    write_folder(tmp_path, "csv", count=6, size=16)
    (tmp_path / "masks" / "a" / "img_000.png").unlink()  # an image without a mask
    Image.new("RGB", (16, 16)).save(tmp_path / "masks" / "stray.png")  # a mask without an image
    Image.new("RGB", (16, 16), (7, 7, 7)).save(tmp_path / "masks" / "b" / "img_001.png")  # an unknown colour
    Image.new("RGB", (8, 16)).save(tmp_path / "masks" / "a" / "img_002.png")  # a size mismatch
    report = check_dataset(folder(tmp_path, "all", colors="classes.csv", strict=False), progress=False)
    assert report.num_samples == 5 and len(report.problems) == 4
    assert re.search(r"image .*img_000.* has no mask", report.problems[0])
    assert re.search(r"mask .*stray\.png has no image", report.problems[1])
    assert re.search(r"^a/img_002: image .* is 16x16 \(WxH\) but the mask from .* is 8x16", report.problems[2])
    assert re.search(r"^b/img_001: mask .* 256 pixels of colour \(7, 7, 7\)", report.problems[3])
    assert report.statistics.pixels.sum() == 3 * 16 * 16  # the 3 good samples


def test_check_dataset_script_prints_frequencies_and_weights(tmp_path):
    write_folder(tmp_path, "labelmap", count=4, size=32)
    (tmp_path / "masks" / "b" / "img_003.png").unlink()
    result = run_script("check_dataset.py", ["dataset=folder", f"dataset.root={tmp_path}",
                                             f"dataset.colors={tmp_path / 'labelmap.txt'}", "dataset.split=all"],
                        check=False)
    assert result.returncode == 1
    out = result.stdout
    assert "3 samples, 1 with problems" in out and re.search(r"problem: image .*img_003.* has no mask", out)
    assert re.search(r"#\s+class\s+pixels\s+images\s+median_frequency\s+inverse_log", out)
    for name in FOLDER_CLASSES:
        assert re.search(rf"\d+ {name}\s+\d+\.\d+%\s+\d+\s+\d+\.\d+\s+\d+\.\d+", out), name
    assert "train.class_weights=[" in out


def test_make_example_folder_script(tmp_path):
    out = tmp_path / "example"
    result = run_script("make_example_folder.py", [f"out={out}", "num_images=4", "image_size=32"])
    assert f"wrote 4 images to {out / 'images'}" in result.stdout
    dataset = folder(out, "all", colors="classes.csv")
    assert len(dataset) == 4 and dataset.class_names == ["background", "disc", "square", "triangle", "ring", "cross"]
    assert {dataset.sample_id(i).split("/")[0] for i in range(4)} == {"site_a", "site_b"}
    assert all(dataset[i][1].max() < 6 for i in range(4))
    with pytest.raises(OutputExists, match=re.escape(f"{out / 'classes.csv'} exists already")):
        write_folder_example(out)
    write_folder_example(tmp_path / "index", num_images=2, image_size=32, masks="index")
    indexed = folder(tmp_path / "index", "all", num_classes=6)
    assert len(indexed) == 2 and all(0 < indexed[i][1].max() < 6 for i in range(2))  # shapes drawn as class indices
