import numpy as np
import pytest
import torch

from seg.metrics import confusion_matrix, metrics_from_confusion


def test_hand_computed_example():
    # 4 classes; class 3 appears in neither label nor prediction; one 255 pixel (predicted 2) must not count.
    label = torch.tensor([[0, 0, 1, 255],
                          [1, 2, 2, 2]])
    prediction = torch.tensor([[0, 1, 1, 2],
                               [1, 2, 0, 2]])
    matrix = confusion_matrix(prediction, label, num_classes=4)
    # (label, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (2,2)
    assert matrix.tolist() == [[1, 1, 0, 0],
                               [0, 2, 0, 0],
                               [1, 0, 2, 0],
                               [0, 0, 0, 0]]
    m = metrics_from_confusion(matrix, ["a", "b", "c", "d"])
    # IoU = TP / (label + prediction - TP): a 1/(2+2-1), b 2/(2+3-2), c 2/(3+2-2); d has an empty union.
    assert m["per_class_iou"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 2 / 3, "d": None})
    assert m["per_class_iou"]["d"] is None
    assert m["mIoU"] == pytest.approx(5 / 9)  # mean over the 3 classes with a non-empty union
    assert m["pixel_acc"] == pytest.approx(5 / 7)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 2 / 2 + 2 / 3) / 3)
    assert m["fwIoU"] == pytest.approx(2 / 7 * 1 / 3 + 2 / 7 * 2 / 3 + 3 / 7 * 2 / 3)


def test_class_only_predicted_counts_as_zero():
    label = torch.tensor([0, 0, 0, 0])
    prediction = torch.tensor([0, 0, 0, 1])
    m = metrics_from_confusion(confusion_matrix(prediction, label, 3))
    assert m["per_class_iou"] == {"0": pytest.approx(3 / 4), "1": 0.0, "2": None}
    assert m["mIoU"] == pytest.approx(3 / 8)


def reference_metrics(prediction: np.ndarray, label: np.ndarray, num_classes: int, ignore: int = 255):
    """Independent per-class loop over the pixels (no confusion matrix)."""
    valid = label != ignore
    ious, accuracies, frequencies = [], [], []
    for c in range(num_classes):
        in_label = (label == c) & valid
        in_prediction = (prediction == c) & valid
        union = np.sum(in_label | in_prediction)
        ious.append(np.sum(in_label & in_prediction) / union if union else None)
        if in_label.sum():
            accuracies.append(np.sum(in_label & in_prediction) / in_label.sum())
        frequencies.append(in_label.sum() / valid.sum())
    present = [i for i in ious if i is not None]
    return {
        "mIoU": sum(present) / len(present),
        "pixel_acc": np.sum((prediction == label) & valid) / valid.sum(),
        "mean_acc": sum(accuracies) / len(accuracies),
        "fwIoU": sum(f * (i or 0.0) for f, i in zip(frequencies, ious)),
        "per_class_iou": ious,
    }


@pytest.mark.parametrize("seed", range(5))
def test_matches_independent_implementation(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    # Class 5 never occurs; class 6 only in predictions; some images have no pixel of class 4.
    labels = [rng.choice([0, 1, 2, 3, 4, 255], size=(rng.integers(5, 20), rng.integers(5, 20)),
                         p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]) for _ in range(4)]
    labels[0][labels[0] == 4] = 0
    predictions = [np.where(rng.random(lab.shape) < 0.6, lab, rng.choice([0, 1, 2, 3, 6], size=lab.shape)) % 255
                   for lab in labels]
    matrix = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(lab), num_classes)
                 for p, lab in zip(predictions, labels))
    ours = metrics_from_confusion(matrix)
    flat_prediction = np.concatenate([p.ravel() for p in predictions])
    flat_label = np.concatenate([lab.ravel() for lab in labels])
    expected = reference_metrics(flat_prediction, flat_label, num_classes)
    for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key
    assert list(ours["per_class_iou"].values()) == pytest.approx(expected["per_class_iou"], abs=1e-12)
    assert ours["per_class_iou"]["5"] is None and ours["per_class_iou"]["6"] == 0.0


def test_predictions_out_of_range_are_refused():
    # A prediction of 3 with 3 classes would otherwise be counted in the next row's cell (label 0 -> class 1).
    with pytest.raises(ValueError, match=r"predicted classes must be in \[0, 3\), found 0\.\.3"):
        confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match=r"predicted classes must be in \[0, 3\), found -1\.\.1"):
        confusion_matrix(torch.tensor([-1, 1]), torch.tensor([0, 1]), 3)
    # The prediction under an ignored label does not count, whatever it is.
    assert confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 255]), 3).tolist() == [[1, 0, 0], [0, 0, 0],
                                                                                          [0, 0, 0]]


def test_no_labelled_pixels_gives_null_metrics(caplog):
    matrix = confusion_matrix(torch.tensor([[0, 1], [2, 2]]), torch.full((2, 2), 255), 3)
    assert matrix.sum() == 0
    m = metrics_from_confusion(matrix, ["a", "b", "c"])
    assert {k: m[k] for k in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice")} == dict.fromkeys(
        ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "mDice"))
    for key in ("per_class_iou", "per_class_dice", "per_class_precision", "per_class_recall"):
        assert m[key] == {"a": None, "b": None, "c": None}
    assert "no labelled pixels" in caplog.text


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match=r"label values must be in \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 3)


def test_precision_recall_dice_and_excluded_classes_by_hand():
    # The confusion matrix of test_hand_computed_example: rows label a, b, c, d; columns prediction.
    matrix = torch.tensor([[1, 1, 0, 0],
                           [0, 2, 0, 0],
                           [1, 0, 2, 0],
                           [0, 0, 0, 0]])
    m = metrics_from_confusion(matrix, ["a", "b", "c", "d"])
    # label counts (rows) 2, 2, 3, 0; prediction counts (columns) 2, 3, 2, 0; TP 1, 2, 2, 0
    assert m["per_class_precision"] == pytest.approx({"a": 1 / 2, "b": 2 / 3, "c": 2 / 2, "d": None})
    assert m["per_class_recall"] == pytest.approx({"a": 1 / 2, "b": 2 / 2, "c": 2 / 3, "d": None})
    assert m["per_class_dice"] == pytest.approx({"a": 2 / 4, "b": 4 / 5, "c": 4 / 5, "d": None})
    assert m["mDice"] == pytest.approx((1 / 2 + 4 / 5 + 4 / 5) / 3)
    assert m["excluded_classes"] == []
    # Dice = 2 IoU / (1 + IoU) for every class
    for name in "abc":
        iou = m["per_class_iou"][name]
        assert m["per_class_dice"][name] == pytest.approx(2 * iou / (1 + iou))

    excluded = metrics_from_confusion(matrix, ["a", "b", "c", "d"], exclude=["a"])
    assert excluded["mIoU"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert excluded["mDice"] == pytest.approx((4 / 5 + 4 / 5) / 2)
    assert excluded["mean_acc"] == pytest.approx((2 / 2 + 2 / 3) / 2)
    for key in ("pixel_acc", "fwIoU", "per_class_iou", "per_class_dice", "per_class_precision", "per_class_recall"):
        assert excluded[key] == m[key], key  # per-class values and pixel-weighted figures keep every class
    assert excluded["excluded_classes"] == ["a"]
    with pytest.raises(ValueError, match=r"exclude names \['e'\] that are not classes"):
        metrics_from_confusion(matrix, ["a", "b", "c", "d"], exclude=["e"])


def test_empty_denominators_inside_the_union_are_zero():
    # class 1 is only predicted (no label pixel): recall 0/0 -> 0, precision 0/1 = 0; class 0 never mispredicted
    m = metrics_from_confusion(confusion_matrix(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]), 3))
    assert m["per_class_precision"] == {"0": 1.0, "1": 0.0, "2": None}
    assert m["per_class_recall"] == {"0": pytest.approx(3 / 4), "1": 0.0, "2": None}
    assert m["per_class_dice"] == {"0": pytest.approx(6 / 7), "1": 0.0, "2": None}
