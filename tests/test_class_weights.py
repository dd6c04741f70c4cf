"""Class weights (median frequency, ENet's inverse log) against hand-computed values; the statistics cache."""

import math

import numpy as np
import pytest
from PIL import Image

from seg.data import build_dataset
from seg.data import class_weights as cw
from seg.data.class_weights import (
    PixelStatistics,
    inverse_log_weights,
    median_frequency_weights,
    resolve_class_weights,
    split_fingerprint,
)

# Three masks of 4 classes (class 3 never occurs; 255 is ignored):
MASKS = {
    "m1": np.array([[0, 0], [0, 1]], np.uint8),            # class 0: 3, class 1: 1 -> 4 labelled pixels
    "m2": np.array([[0, 2, 2], [255, 2, 2]], np.uint8),    # class 0: 1, class 2: 4 -> 5 labelled pixels
    "m3": np.array([[1, 1, 0, 0]], np.uint8),              # class 0: 2, class 1: 2 -> 4 labelled pixels
}
# freq(c) = pixels of c / labelled pixels of the images containing c:
#   class 0: 6 / (4 + 5 + 4) = 6/13, class 1: 3 / (4 + 4) = 3/8, class 2: 4 / 5; median = 6/13
MEDIAN_FREQUENCY = [1.0, (6 / 13) / (3 / 8), (6 / 13) / (4 / 5), 1.0]
# p(c) = pixels of c / all labelled pixels (13): 6/13, 3/13, 4/13, 0
INVERSE_LOG = [1 / math.log(1.02 + p) for p in (6 / 13, 3 / 13, 4 / 13, 0.0)]


def write_masks(root):
    for stem, mask in MASKS.items():
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return build_dataset("folder", root, "all", num_classes=4)


def test_hand_computed_weights():
    stats = PixelStatistics(4)
    for mask in MASKS.values():
        stats.add(mask)
    assert stats.pixels.tolist() == [6, 3, 4, 0] and stats.present_pixels.tolist() == [13, 8, 5, 0]
    assert stats.images.tolist() == [3, 2, 1, 0]
    assert stats.weights("median_frequency") == pytest.approx(MEDIAN_FREQUENCY)
    assert stats.weights("inverse_log") == pytest.approx(INVERSE_LOG)
    assert median_frequency_weights([0, 0], [0, 0]) == [1.0, 1.0]
    assert inverse_log_weights([1, 1]) == pytest.approx([1 / math.log(1.52)] * 2)


def test_resolved_from_the_dataset_and_cached(tmp_path, monkeypatch):
    dataset = write_masks(tmp_path / "data")
    cache = tmp_path / "cache"
    assert resolve_class_weights("median_frequency", dataset, cache) == pytest.approx(MEDIAN_FREQUENCY)
    assert len(list((cache / "class_stats").glob("*.json"))) == 1
    # The second method reads the cached statistics: no mask is decoded again.
    monkeypatch.setattr(cw, "compute_statistics", lambda *a, **k: pytest.fail("statistics recomputed"))
    assert resolve_class_weights("inverse_log", dataset, cache) == pytest.approx(INVERSE_LOG)
    assert resolve_class_weights("none", dataset, cache) is None and resolve_class_weights(None, dataset) is None
    assert resolve_class_weights([1, 2, 3, 4], dataset) == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match=r"^class_weights has 2 values but the dataset has 4 classes"):
        resolve_class_weights([1, 2], dataset)
    with pytest.raises(ValueError, match=r"^class_weights must be one of \['none', 'median_frequency', "
                                         r"'inverse_log'\]"):
        resolve_class_weights("median", dataset)


def test_fingerprint_follows_the_files_and_decoding(tmp_path):
    dataset = write_masks(tmp_path)
    before = split_fingerprint(dataset)
    assert split_fingerprint(build_dataset("folder", tmp_path, "all", num_classes=4)) == before
    assert split_fingerprint(build_dataset("folder", tmp_path, "all", num_classes=4, label_map={2: 255})) != before
    mask = MASKS["m1"].copy()
    mask[0, 0] = 2
    Image.fromarray(mask).save(tmp_path / "masks" / "m1.png")  # new content: another size or mtime
    changed = split_fingerprint(dataset)
    assert changed != before
    stats = cw.cached_statistics(dataset, tmp_path / "cache")
    assert stats.pixels.tolist() == [5, 3, 5, 0]  # recomputed from the new mask, not a stale cache
