"""predict.py beyond labels and overlays: confidence maps, videos, large images, Cityscapes submissions."""

import copy
import zipfile

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from helpers import compose_config, tiny_checkpoint
from PIL import Image

from seg.config import ConfigError, model_kwargs
from seg.data.base import ImageTooLarge, read_image
from seg.engine import predict as predict_module
from seg.engine.checkpoint import restore, save_checkpoint
from seg.errors import UserError
from seg.metrics import confusion_matrix, metrics_from_confusion
from seg.models import build_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VIRIDIS = np.rint(matplotlib.colormaps["viridis"](np.arange(256))[:, :3] * 255)  # the reference colour scale


def decisive_checkpoint(folder, num_classes=6, class_names=None, palette=None):
    """An untrained tiny model whose classifier is scaled up: its probabilities range from unsure to certain,
    so confidence and entropy maps (and the predicted classes) vary across an image."""
    state = torch.load(tiny_checkpoint(folder / "base.pt", folder / "data", num_classes=num_classes),
                       weights_only=True)
    torch.manual_seed(0)
    model = build_model(**model_kwargs(state["config"], num_classes))
    with torch.no_grad():
        model.classifier.weight.mul_(40)
        model.classifier.bias.copy_(torch.linspace(-1, 1, num_classes))
    save_checkpoint(folder / "ckpt.pt", model=model, config=state["config"],
                    class_names=list(class_names or state["class_names"]),
                    palette=state["palette"] if palette is None else palette, iteration=0)
    return folder / "ckpt.pt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return decisive_checkpoint(tmp_path_factory.mktemp("ckpt"))


def run(ckpt, source, output, *overrides):
    return predict_module.predict(compose_config("predict", [f"ckpt={ckpt}", f"input={source}", f"output={output}",
                                                             "device=cpu", *overrides]))


@torch.inference_mode()
def reference_probabilities(ckpt, image: np.ndarray) -> np.ndarray:
    """The eager model's softmax ``[C, H, W]`` of an RGB uint8 image, normalised here by hand."""
    model, _ = restore(ckpt)
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    return model(x)["out"].softmax(1)[0].numpy()


def scale_levels(path) -> np.ndarray:
    """The [0, 255] level of each pixel of a colour-scale PNG, read back through matplotlib's viridis table."""
    colours = np.array(Image.open(path).convert("RGB")).reshape(-1, 3).astype(np.float64)
    distances = ((colours[:, None, :] - VIRIDIS[None]) ** 2).sum(-1)
    return distances.argmin(1).reshape(Image.open(path).size[::-1])


def write_images(folder, sizes):
    rng = np.random.default_rng(0)
    for name, (height, width) in sizes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)


def test_confidence_entropy_and_probabilities_of_a_folder_of_mixed_sizes(ckpt, tmp_path):
    sizes = {"a.png": (40, 56), "sub/b.jpg": (33, 47), "sub/deeper/c.png": (64, 64)}
    write_images(tmp_path / "in", sizes)
    result = run(ckpt, tmp_path / "in", tmp_path / "out", "probs=true", "probs_npy=true")
    assert result["written"] == 3
    out = tmp_path / "out"
    for name, (height, width) in sizes.items():
        stem = name.rsplit(".", 1)[0]  # relative path and stem kept in every output folder
        image = np.array(Image.open(tmp_path / "in" / name).convert("RGB"))
        expected = reference_probabilities(ckpt, image)
        probs = np.load(out / "probs" / f"{stem}.npy")
        assert probs.dtype == np.float16 and probs.shape == (6, height, width)
        np.testing.assert_allclose(probs.astype(np.float32), expected, atol=1e-3, rtol=0)
        labels = np.array(Image.open(out / "labels" / f"{stem}.png"))
        assert (labels == expected.argmax(0)).mean() > 0.999
        assert Image.open(out / "overlays" / f"{stem}.jpg").size == (width, height)
        confidence = np.rint(expected.max(0) * 255)
        entropy = np.rint(-(expected * np.log(expected)).sum(0) / np.log(6) * 255)
        for folder, levels in (("confidence", confidence), ("entropy", entropy)):
            png = Image.open(out / folder / f"{stem}.png")
            assert png.mode == "RGB" and png.size == (width, height)
            assert np.abs(scale_levels(out / folder / f"{stem}.png") - levels).max() <= 1
    # the maps are not constant: the test above compared varying values
    assert all(np.ptp(scale_levels(out / folder / "a.png")) > 100 for folder in ("entropy", "confidence"))


def write_video(path, frames, fps):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_video_round_trip_keeps_frames_size_and_rate_in_batches(ckpt, tmp_path, monkeypatch):
    height, width = 48, 64
    ys, xs = np.mgrid[:height, :width]
    frames = [np.stack([(xs * 4 + 30 * i) % 256, ys * 5, np.full_like(xs, 90)], -1).astype(np.uint8)
              for i in range(5)]
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "clip.mp4", frames, fps=12)
    batches = []
    real = predict_module.segment

    def counting(model, images, **options):
        batches.append(images.shape[0])
        return real(model, images, **options)

    monkeypatch.setattr(predict_module, "segment", counting)
    run(ckpt, tmp_path / "clips" / "clip.mp4", tmp_path / "out", "batch_size=2")
    assert batches == [2, 2, 1]
    written, fps = read_video(tmp_path / "out" / "overlays" / "clip.mp4")
    assert len(written) == 5 and fps == 12 and written[0].shape == (height, width, 3)
    # the overlay is the decoded frame blended half and half with the palette colour of the eager prediction
    decoded, _ = read_video(tmp_path / "clips" / "clip.mp4")
    _, state = restore(ckpt)
    palette = np.asarray(state["palette"], dtype=np.float64)
    for frame, result in zip(decoded, written):
        labels = reference_probabilities(ckpt, frame).argmax(0)
        expected = 0.5 * frame + 0.5 * palette[labels]
        error = np.abs(result - expected).mean()
        assert error < 8 and error < np.abs(result.astype(float) - frame).mean() / 2
    assert not list((tmp_path / "out" / "overlays").glob(".*"))  # no temporary file left


def test_unreadable_video_is_one_line(ckpt, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(UserError, match="cannot read video .*broken.mp4"):
        run(ckpt, tmp_path / "broken.mp4", tmp_path / "out")


def test_slide_with_float16_accumulation_on_a_larger_image(ckpt, tmp_path):
    write_images(tmp_path / "in", {"big.png": (150, 230)})
    common = ["inference.mode=slide", "inference.window=[64,64]"]
    run(ckpt, tmp_path / "in", tmp_path / "fp32", *common)
    run(ckpt, tmp_path / "in", tmp_path / "fp16", *common, "inference.accumulate=float16")
    fp32 = np.array(Image.open(tmp_path / "fp32" / "labels" / "big.png"))
    fp16 = np.array(Image.open(tmp_path / "fp16" / "labels" / "big.png"))
    assert fp16.shape == (150, 230) and (fp16 == fp32).mean() > 0.99


def test_pixel_limit_is_raised_deliberately_for_prediction(ckpt, tmp_path, monkeypatch):
    write_images(tmp_path / "in", {"wide.png": (50, 60)})
    path = tmp_path / "in" / "wide.png"
    # PIL's decompression-bomb guard scaled down (really about 89 million pixels, refused above twice that) so
    # that this 3,000-pixel image plays the part of a 10,000 x 10,000 one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageTooLarge, match="wide.png"):
        read_image(path)  # datasets keep PIL's guard, as a one-line error
    assert read_image(path, max_pixels=3000).shape == (50, 60, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the global guard is back afterwards
    with pytest.raises(ImageTooLarge, match="50 = 3,000 pixels, more than the 2,999 allowed"):
        read_image(path, max_pixels=2999)
    assert run(ckpt, tmp_path / "in", tmp_path / "out")["written"] == 1  # predict's default limit: 1e9 pixels
    with pytest.raises(UserError, match="1 of 1 files could not be read"):
        run(ckpt, tmp_path / "in", tmp_path / "out2", "max_image_pixels=2999")


@pytest.mark.parametrize("override, key", [
    ("format=kitti", "format"),
    ("probs=maybe", "probs"),
    ("probs_npy=true", "probs_npy=true needs probs=true"),
    ("batch_size=0", "batch_size"),
    ("inference.accumulate=float64", "inference.accumulate"),
])
def test_bad_predict_options_name_the_key(ckpt, tmp_path, override, key):
    write_images(tmp_path / "in", {"a.png": (32, 32)})
    with pytest.raises(ConfigError, match=f"^{key}"):
        run(ckpt, tmp_path / "in", tmp_path / "out", override)


# -- Cityscapes submission ---------------------------------------------------------------------------------------

CITYSCAPES_IMAGES = {"berlin/berlin_000000_000019_leftImg8bit.png": (40, 64),
                     "bonn/bonn_000001_000002_leftImg8bit.png": (37, 53)}


@pytest.fixture(scope="module")
def cityscapes_ckpt(tmp_path_factory):
    """An untrained 19-class model with the Cityscapes classes and palette, as a Cityscapes run would save."""
    from seg.data.cityscapes import CITYSCAPES_CLASSES, cityscapes_palette

    return decisive_checkpoint(tmp_path_factory.mktemp("cityscapes_ckpt"), 19, CITYSCAPES_CLASSES,
                               cityscapes_palette().tolist())


def test_cityscapes_submission_names_values_and_zip(cityscapes_ckpt, tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import id2label, labels, trainId2label

    test = tmp_path / "leftImg8bit" / "test"
    write_images(test, CITYSCAPES_IMAGES)
    run(cityscapes_ckpt, test, tmp_path / "plain")  # train ids, as the model predicts them
    result = run(cityscapes_ckpt, test, tmp_path / "sub", "format=cityscapes")
    archive = zipfile.ZipFile(result["submission"])
    assert sorted(archive.namelist()) == ["berlin/berlin_000000_000019_labelIds.png",
                                          "bonn/bonn_000001_000002_labelIds.png"]
    archive.extractall(tmp_path / "unzipped")
    # the official evaluation finds each test image's prediction by its <city>_<seq>_<frame> prefix ...
    args = copy.copy(official.args)
    args.predictionPath, args.predictionWalk = str(tmp_path / "unzipped"), None
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    rng = np.random.default_rng(5)
    ids = [label.id for label in labels if label.id >= 0]  # void ids (0-6, 9, ...) included
    predictions, ground_truths, matrix, seen = [], [], torch.zeros(19, 19, dtype=torch.int64), set()
    for name, (height, width) in CITYSCAPES_IMAGES.items():
        city, stem = name.split("/")
        ground_truth = tmp_path / "gtFine" / "test" / city / stem.replace("leftImg8bit", "gtFine_labelIds")
        ground_truth.parent.mkdir(parents=True, exist_ok=True)
        gt_ids = rng.choice(ids, (height, width)).astype(np.uint8)
        Image.fromarray(gt_ids).save(ground_truth)
        found = official.getPrediction(args, str(ground_truth))
        label_ids = np.array(Image.open(found))
        train_ids = np.array(Image.open(tmp_path / "plain" / "labels" / name))
        assert label_ids.shape == (height, width) and Image.open(found).mode == "L"
        assert np.array_equal(label_ids, np.vectorize(lambda t: trainId2label[t].id)(train_ids))
        gt_train_ids = np.vectorize(lambda i: 255 if id2label[i].ignoreInEval else id2label[i].trainId)(gt_ids)
        matrix += confusion_matrix(torch.from_numpy(train_ids), torch.from_numpy(gt_train_ids), 19)
        predictions.append(found)
        ground_truths.append(str(ground_truth))
        seen |= set(np.unique(train_ids).tolist())
    assert len(seen) >= 3  # the mapping was exercised on several classes
    # ... and scores it exactly as this project scores the train-id predictions against the same labels
    scores = official.evaluateImgLists(predictions, ground_truths, args)
    assert scores["averageScoreClasses"] == pytest.approx(metrics_from_confusion(matrix)["mIoU"], abs=1e-12)
    assert not (tmp_path / "sub" / "labels").exists()


def test_cityscapes_submission_refuses_what_the_server_would(cityscapes_ckpt, ckpt, tmp_path):
    write_images(tmp_path / "ok", {"berlin/berlin_000000_000019_leftImg8bit.png": (32, 32)})
    write_images(tmp_path / "bad", {"photo.png": (32, 32)})
    with pytest.raises(UserError, match="Cityscapes image names .*photo"):
        run(cityscapes_ckpt, tmp_path / "bad", tmp_path / "out", "format=cityscapes")
    with pytest.raises(UserError, match="needs a model of the 19 Cityscapes classes .* predicts 6"):
        run(ckpt, tmp_path / "ok", tmp_path / "out", "format=cityscapes")
    write_images(tmp_path / "twice", {"a/berlin_000000_000019_leftImg8bit.png": (32, 32),
                                      "b/berlin_000000_000019_leftImg8bit.jpg": (32, 32)})
    with pytest.raises(UserError, match="same frame"):
        run(cityscapes_ckpt, tmp_path / "twice", tmp_path / "out", "format=cityscapes")


# -- VOC test-server submission ----------------------------------------------------------------------------------

VOC_IMAGES = {"2008_000001.jpg": (40, 64), "sub/2010_004321.png": (37, 53)}


def devkit_colormap(count=256):
    """The VOC devkit's VOClabelcolormap.m, written out as MATLAB does it (bitget on the index, 3 bits a round)."""
    colours = np.zeros((count, 3), dtype=np.uint8)
    for i in range(count):
        index, red, green, blue = i, 0, 0, 0
        for j in range(8):
            red |= ((index >> 0) & 1) << (7 - j)
            green |= ((index >> 1) & 1) << (7 - j)
            blue |= ((index >> 2) & 1) << (7 - j)
            index >>= 3
        colours[i] = (red, green, blue)
    return colours


@pytest.fixture(scope="module")
def voc_ckpt(tmp_path_factory):
    from seg.data.voc import VOC_CLASSES

    grey = [[i, i, i] for i in range(256)]  # not VOC's: the submission has VOC's colour map whatever the run's
    return decisive_checkpoint(tmp_path_factory.mktemp("voc_ckpt"), 21, VOC_CLASSES, grey)


def test_voc_submission_layout_palette_and_values(voc_ckpt, tmp_path):
    import tarfile

    write_images(tmp_path / "test", VOC_IMAGES)
    run(voc_ckpt, tmp_path / "test", tmp_path / "plain")  # the class indices, as predict writes them by default
    result = run(voc_ckpt, tmp_path / "test", tmp_path / "sub", "format=voc")
    folder = "results/VOC2012/Segmentation/comp6_test_cls"
    assert result["submission"] == str(tmp_path / "sub" / "voc_submission.tar.gz")
    with tarfile.open(result["submission"], "r:gz") as archive:  # tar zcf results.tgz results, as the server takes
        members = {member.name: member for member in archive.getmembers()}
        archive.extractall(tmp_path / "untarred", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    assert sorted(members) == ["results", "results/VOC2012", "results/VOC2012/Segmentation", folder,
                               f"{folder}/2008_000001.png", f"{folder}/2010_004321.png"]
    assert all(members[name].isdir() for name in ("results", folder))
    seen = set()
    for name, (height, width) in VOC_IMAGES.items():
        stem = name.split("/")[-1].split(".")[0]
        written = Image.open(tmp_path / "untarred" / folder / f"{stem}.png")
        assert written.mode == "P" and written.size == (width, height)
        palette = np.array(written.getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(palette[:256], devkit_colormap()[:len(palette)])
        values = np.array(written)
        expected = np.array(Image.open(tmp_path / "plain" / "labels" / f"{name.rsplit('.', 1)[0]}.png"))
        assert np.array_equal(values, expected) and values.max() <= 20
        assert (tmp_path / "sub" / folder / f"{stem}.png").read_bytes() == \
            (tmp_path / "untarred" / folder / f"{stem}.png").read_bytes()
        seen |= set(np.unique(values).tolist())
    assert len(seen) >= 3  # several classes, so the values are compared, not only zeros
    assert not (tmp_path / "sub" / "labels").exists() and not (tmp_path / "sub" / "overlays").exists()


def test_voc_submission_refuses_what_the_server_would(voc_ckpt, ckpt, tmp_path):
    write_images(tmp_path / "ok", {"2008_000001.jpg": (32, 32)})
    write_images(tmp_path / "bad", {"photo.png": (32, 32)})
    with pytest.raises(UserError, match="VOC image ids .*photo"):
        run(voc_ckpt, tmp_path / "bad", tmp_path / "out", "format=voc")
    with pytest.raises(UserError, match="needs a model of the 21 VOC classes, this one predicts 6"):
        run(ckpt, tmp_path / "ok", tmp_path / "out", "format=voc")
    write_images(tmp_path / "twice", {"a/2008_000001.png": (32, 32), "b/2008_000001.jpg": (32, 32)})
    with pytest.raises(UserError, match="same image id"):
        run(voc_ckpt, tmp_path / "twice", tmp_path / "out", "format=voc")
