"""The synthetic default dataset: deterministic files, learnable content, cache folders, concurrent generation."""

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import yaml

import seg.data.synthetic as synthetic
from seg.config import DATASET_RUN_KEYS
from seg.data import DATASETS, SYNTHETIC_CLASSES, DatasetError, VOCSegmentation, build_dataset, dataset_options

TINY = {"image_size": 48, "num_train": 4, "num_val": 2}
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "dataset"


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = build_dataset("synthetic", tmp_path / "a", "train", **TINY)
    second = build_dataset("synthetic", tmp_path / "b", "train", **TINY)
    assert first.root.name == second.root.name and first.root != second.root
    assert files(first.root) == files(second.root)
    assert len(files(first.root)) == 2 * 6 + 2 + 1  # images, masks, split files, synthetic.json

    other = build_dataset("synthetic", tmp_path / "a", "train", seed=1, **TINY)
    assert other.root != first.root
    for name in ("JPEGImages/train_00000.jpg", "SegmentationClass/train_00000.png"):
        assert (other.root / name).read_bytes() != (first.root / name).read_bytes()
    # Images come from their own random streams: more training images leave the first ones unchanged.
    more = build_dataset("synthetic", tmp_path / "a", "train", **{**TINY, "num_train": 5})
    assert (more.root / "JPEGImages/train_00003.jpg").read_bytes() == \
           (first.root / "JPEGImages/train_00003.jpg").read_bytes()


def test_content(tmp_path):
    train = build_dataset("synthetic", tmp_path, "train", image_size=64, num_train=12, num_val=3)
    val = build_dataset("synthetic", tmp_path, "val", image_size=64, num_train=12, num_val=3)
    assert isinstance(train, VOCSegmentation) and (len(train), len(val)) == (12, 3)
    assert train.class_names == list(SYNTHETIC_CLASSES) and train.num_classes == 6
    assert train.root.name.startswith(f"synthetic-v{synthetic.GENERATOR_VERSION}-64px-12+3-seed0-")
    seen = set()
    for index in range(len(train)):
        image, mask = train[index]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and mask.shape == (64, 64)
        seen |= set(np.unique(mask).tolist())
        assert (mask == 255).mean() < 0.25
    assert seen == {0, 1, 2, 3, 4, 5, 255}
    assert train.sample_id(0) == "train_00000" and val.sample_id(2) == "val_00002"


def test_render_ignore_band_and_classes():
    rng = np.random.default_rng(0)
    image, label = synthetic.render(rng, 96, 6, 4, (0.3, 0.5), border=1)
    inside = label != 255
    assert inside.mean() > 0.8 and (label[inside] > 0).any()
    # The band separates regions: no two 4-neighbours carry different classes.
    assert not np.any((label[:, 1:] != label[:, :-1]) & inside[:, 1:] & inside[:, :-1])
    assert not np.any((label[1:] != label[:-1]) & inside[1:] & inside[:-1])
    _, no_band = synthetic.render(np.random.default_rng(0), 96, 6, 4, (0.3, 0.5), border=0)
    assert 255 not in no_band
    _, three = synthetic.render(np.random.default_rng(1), 96, 3, 6, (0.3, 0.5), border=1)
    assert set(np.unique(three).tolist()) <= {0, 1, 2, 255}


def test_shapes_are_solid():
    for cls in range(1, 6):
        mask = synthetic._shape_mask(cls, np.array([32.0, 32.0]), 40, 0.3, (64, 64))
        assert mask[32, 32] == (cls != 4)  # only the ring has a hole
        assert 0.1 < mask.mean() < 0.4


def test_class_colours_are_distinct():
    """Each class's mean hue is far from every other class's and from the cyan background clutter."""
    import cv2

    hues = {}
    for cls in range(1, 6):
        rgb = synthetic._class_colours(cls, np.random.default_rng(cls), (32, 32))
        hues[cls] = cv2.cvtColor(rgb[None, 16:17, 16:17].reshape(1, 1, 3), cv2.COLOR_RGB2HSV)[0, 0, 0]
    values = sorted(list(hues.values()) + [synthetic.CLUTTER_HUE])
    gaps = np.diff(values + [values[0] + 180])
    assert gaps.min() >= 15


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("SEG_CACHE", str(tmp_path / "cache"))
    dataset = build_dataset("synthetic", None, "val", **TINY)
    assert dataset.root.parent == tmp_path / "cache" and len(dataset) == 2
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [dataset.root.name]  # no temporary folder left


def test_lost_race_uses_the_winner(tmp_path, monkeypatch):
    """Another process renames its copy into place while this one generates: this one's rename fails, its
    temporary folder is removed and the winner's folder is used."""
    write = synthetic.write_synthetic
    params = {**TINY, "num_classes": 6, "min_objects": 2, "max_objects": 4, "object_size": [0.2, 0.5],
              "border": 1, "seed": 0}
    name = synthetic.ensure_synthetic(tmp_path / "probe", **params).name

    def lose(folder, **kwargs):
        write(folder, **kwargs)
        winner = tmp_path / "winner"
        write(winner, **kwargs)
        (winner / "marker").write_text("first")
        winner.rename(tmp_path / "cache" / name)

    monkeypatch.setattr(synthetic, "write_synthetic", lose)
    folder = synthetic.ensure_synthetic(tmp_path / "cache", **params)
    assert folder == tmp_path / "cache" / name and (folder / "marker").read_text() == "first"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [name]


def _generate(root, barrier, queue):
    barrier.wait()
    queue.put(str(build_dataset("synthetic", root, "train", **TINY).root))


def test_two_processes_at_once(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_generate, args=(tmp_path, barrier, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    roots = {queue.get(timeout=5), queue.get(timeout=5)}
    assert len(roots) == 1 and [p.name for p in tmp_path.iterdir()] == [Path(roots.pop()).name]
    reference = build_dataset("synthetic", tmp_path / "reference", "train", **TINY).root
    assert files(tmp_path / reference.name) == files(reference)


@pytest.mark.parametrize("key, value", [("num_classes", 7), ("image_size", 8), ("num_train", 0), ("max_objects", 1),
                                        ("object_size", [0.5, 0.2]), ("object_size", [0.1]), ("seed", -1),
                                        ("border", 1.5)])
def test_bad_parameters(tmp_path, key, value):
    options = {"max_objects": 4, **TINY, key: value}
    with pytest.raises(DatasetError, match=f"dataset.{key} must be"):
        build_dataset("synthetic", tmp_path, "train", **{**options, "min_objects": 2})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_dataset_configs_match_build_dataset(config):
    """Every key of configs/dataset/*.yaml (less those seg.config keeps for the run: val_split, ignore_index,
    channels, mean, std) is an argument of build_dataset."""
    cfg = yaml.safe_load((CONFIGS / config).read_text())
    assert cfg["name"] == config[: -len(".yaml")] and cfg["name"] in DATASETS
    assert cfg["ignore_index"] == 255 and "val_split" in cfg and "split" in cfg and "class_names" in cfg
    assert cfg["channels"] == 3 and cfg["mean"] is None and cfg["std"] is None
    options = set(cfg) - {"name", "root", "split", "num_classes", "class_names", *DATASET_RUN_KEYS}
    assert options <= set(dataset_options(cfg["name"]))
    if cfg["name"] == "synthetic":
        assert options == set(dataset_options("synthetic"))


def test_default_config_builds(tmp_path):
    cfg = yaml.safe_load((CONFIGS / "synthetic.yaml").read_text())
    kwargs = {k: v for k, v in cfg.items() if k not in DATASET_RUN_KEYS}
    kwargs.update(root=str(tmp_path), num_train=3, num_val=2)
    dataset = build_dataset(**kwargs)
    assert len(dataset) == 3 and dataset.num_classes == cfg["num_classes"]
