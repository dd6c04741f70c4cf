"""The embedded default dataset: textured shapes on cluttered backgrounds, generated from a seed.

The images are written once into a cache folder in the Pascal VOC layout and then read by ``VOCSegmentation``,
so training on it runs the same file-reading and validation code as real data.

What a model has to learn: five object classes, each with its own shape, hue family and texture,

    1 disc      red      speckle          4 ring    yellow   dots
    2 square    green    checkerboard     5 cross   magenta  diagonal stripes
    3 triangle  blue     stripes

at several scales (``object_size``: fraction of the image side), partly overlapping (a later object may hide up to
half of an earlier one), on backgrounds of low-saturation colour fields, clutter strokes and blobs (low-saturation
or cyan, a hue no class uses) and pixel noise. A ``border``-pixel band around every region boundary is labelled 255
(ignore), like the object outlines of VOC. A class is recognisable from a small patch (hue and texture) as well as
from its outline, which is what lets a network trained from scratch for a few minutes on a CPU reach a high mIoU.

Every image comes from its own random stream ``(seed, split, index)``: the files are the same on every machine and
run, and adding images leaves the existing ones unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from seg.data.base import IGNORE_INDEX, DatasetError
from seg.data.voc import VOCSegmentation, voc_palette
from seg.outputs import check_outputs

# Bump when the generated content changes: the cache folder name includes it, so old caches are not reused.
GENERATOR_VERSION = 2

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
# Hue of each class in OpenCV units (0-180, i.e. degrees / 2); 90 (cyan) is left to background clutter.
CLASS_HUES = {1: 0, 2: 60, 3: 120, 4: 30, 5: 150}
CLUTTER_HUE = 90
SPLITS = ("train", "val")


def default_cache() -> Path:
    return Path(os.environ.get("SEG_CACHE") or "~/.cache/seg").expanduser()


# --- shapes -------------------------------------------------------------------------------------------------------

_SHIFT = 4  # cv2 drawing with 4 fractional bits, so shapes are placed with sub-pixel precision


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _rotated(points: np.ndarray, angle: float, center: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + center


def _shape_mask(cls: int, center: np.ndarray, size: float, angle: float, shape: Tuple[int, int]) -> np.ndarray:
    """Boolean mask of class ``cls``'s shape with the given bounding size (pixels) and rotation (radians)."""
    canvas = np.zeros(shape, dtype=np.uint8)
    centre = tuple(int(v) for v in _fixed(center))
    if cls in (1, 4):  # disc, ring
        outer = size / 2
        cv2.circle(canvas, centre, int(outer * (1 << _SHIFT)), 1, -1, cv2.LINE_8, _SHIFT)
        if cls == 4:
            cv2.circle(canvas, centre, int(0.4 * outer * (1 << _SHIFT)), 0, -1, cv2.LINE_8, _SHIFT)
        return canvas.astype(bool)
    if cls == 2:  # square
        half = 0.4 * size
        polygons = [np.array([[-half, -half], [half, -half], [half, half], [-half, half]])]
    elif cls == 3:  # equilateral triangle
        radius = 0.58 * size
        t = np.deg2rad([90, 210, 330])
        polygons = [radius * np.stack([np.cos(t), np.sin(t)], axis=1)]
    else:  # cross: two bars
        half_length, half_width = size / 2, size / 5
        bar = np.array([[-half_length, -half_width], [half_length, -half_width], [half_length, half_width],
                        [-half_length, half_width]])
        polygons = [bar, bar[:, ::-1]]
    for polygon in polygons:  # one by one: fillPoly would leave the overlap of the cross's bars empty (even-odd)
        cv2.fillConvexPoly(canvas, _fixed(_rotated(polygon, angle, center)), 1, cv2.LINE_8, _SHIFT)
    return canvas.astype(bool)


# --- textures -----------------------------------------------------------------------------------------------------

def _texture(cls: int, rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Class texture as a field in [0, 1] (periods of 4-7 pixels, random phase and small random rotation)."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(4.0, 7.0)
    angle = rng.uniform(-0.3, 0.3) + (np.pi / 4 if cls == 5 else 0.0)
    u = (np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi)
    v = (-np.sin(angle) * xx + np.cos(angle) * yy) * (2 * np.pi / period) + rng.uniform(0, 2 * np.pi)
    if cls == 1:  # speckle: smoothed noise
        noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 0.8)
        return np.clip(0.5 + noise * 1.2, 0, 1)
    if cls == 2:  # checkerboard
        return (np.sin(u) * np.sin(v) > 0).astype(np.float32)
    if cls == 4:  # dots
        return (np.cos(u) + np.cos(v) > 0.6).astype(np.float32)
    return (np.sin(v) > 0).astype(np.float32)  # stripes (triangle) and diagonal stripes (cross)


def _class_colours(cls: int, rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """RGB uint8 canvas in the class's hue family, its texture modulating brightness."""
    hue = (CLASS_HUES[cls] + rng.uniform(-5, 5)) % 180
    saturation = rng.uniform(150, 255)
    value = rng.uniform(150, 255)
    depth = rng.uniform(0.35, 0.55)
    hsv = np.empty((*shape, 3), dtype=np.uint8)
    hsv[..., 0] = np.uint8(round(hue) % 180)
    hsv[..., 1] = np.uint8(saturation)
    hsv[..., 2] = np.clip(value * (1 - depth * _texture(cls, rng, shape)), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# --- background ---------------------------------------------------------------------------------------------------

def _clutter_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    if rng.random() < 0.3:
        hue, saturation = CLUTTER_HUE + rng.uniform(-6, 6), rng.uniform(80, 220)
    else:
        hue, saturation = rng.uniform(0, 180), rng.uniform(0, 60)
    hsv = np.uint8([[[round(hue) % 180, saturation, rng.uniform(40, 230)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(0, 50), rng.uniform(70, 200)]]])
    base = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    field = cv2.resize(rng.uniform(-35, 35, (4, 4, 3)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    image = np.clip(base + field, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(4, 11)):
        colour = _clutter_colour(rng)
        p, q = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        kind = rng.integers(3)
        if kind == 0:
            cv2.line(image, _point(p), _point(q), colour, int(rng.integers(1, 4)), cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            axes = tuple(int(a) for a in _fixed(rng.uniform(2, size / 8, 2)))
            cv2.ellipse(image, _point(p), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)
        else:
            cv2.rectangle(image, _point(p), _point(q), colour, int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
    return image


def _point(p: np.ndarray) -> Tuple[int, int]:
    return tuple(int(v) for v in _fixed(p))


# --- one image ----------------------------------------------------------------------------------------------------

def render(rng: np.random.Generator, image_size: int, num_classes: int, num_objects: int,
           object_size: Tuple[float, float], border: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image (uint8 RGB) and its mask (class indices, 255 on the ``border`` band around regions)."""
    shape = (image_size, image_size)
    image = _background(rng, image_size)
    label = np.zeros(shape, dtype=np.uint8)
    instances = np.zeros(shape, dtype=np.int32)
    min_pixels = (0.5 * object_size[0] * image_size) ** 2
    for instance in range(1, num_objects + 1):
        cls = int(rng.integers(1, num_classes))
        for _attempt in range(20):
            size = rng.uniform(*object_size) * image_size
            center = rng.uniform(0.15 * size, image_size - 0.15 * size, 2)
            mask = _shape_mask(cls, center, size, rng.uniform(0, 2 * np.pi), shape)
            if mask.sum() < min_pixels:
                continue
            hidden = np.bincount(instances[mask], minlength=instance)[1:]
            visible = np.bincount(instances.ravel(), minlength=instance)[1:]
            if np.all(hidden <= 0.5 * visible):
                break
        else:
            continue  # no placement found that leaves the earlier objects visible enough
        colours = _class_colours(cls, rng, shape)
        image[mask] = colours[mask]
        label[mask] = cls
        instances[mask] = instance
    image = cv2.GaussianBlur(image, (0, 0), 0.6)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    if border > 0:
        kernel = np.ones((2 * border + 1, 2 * border + 1), dtype=np.uint8)
        label[cv2.dilate(label, kernel) != cv2.erode(label, kernel)] = IGNORE_INDEX
    return image, label


# --- the dataset folder -------------------------------------------------------------------------------------------

def image_suffix(channels: int) -> str:
    return {3: ".jpg", 1: ".png"}.get(channels, ".tif")


def image_file(image: np.ndarray, label: np.ndarray, channels: int) -> Tuple[str, Callable[[Path], None]]:
    """``(suffix, writer)`` of a rendered RGB image as ``channels`` bands: RGB JPEG (3), 8-bit grayscale PNG (1),
    else a 16-bit TIFF holding the RGB (or its first bands) and, beyond 3, "depth" bands in which the objects stand
    out from the background (as an RGB-D or multispectral sensor would record them), for tests of those paths."""
    if channels == 3:
        return ".jpg", lambda path: Image.fromarray(image).save(path, quality=92)
    if channels == 1:
        return ".png", lambda path: Image.fromarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)).save(path)
    rgb = image.astype(np.uint16) * 257
    rng = np.random.default_rng(int(image.sum()) % 2**32)
    raised = ((label > 0) & (label != IGNORE_INDEX)).astype(np.float64)
    depth = [np.clip(20000 + 15000 * raised * (k - 2) / (channels - 2) + rng.normal(0, 800, label.shape), 0, 65535)
             for k in range(3, channels)]
    bands = np.dstack([rgb[:, :, : min(channels, 3)], *[d.astype(np.uint16) for d in depth]])
    return ".tif", lambda path: tifffile_imwrite(path, bands)


def tifffile_imwrite(path: Path, bands: np.ndarray) -> None:
    """``[H, W, C]`` as one interleaved TIFF page (``photometric=minisblack``, C - 1 extra samples)."""
    import tifffile

    tifffile.imwrite(str(path), bands, photometric="minisblack", planarconfig="contig")


def write_synthetic(folder: Path, image_size: int, num_train: int, num_val: int, num_classes: int,
                    min_objects: int, max_objects: int, object_size: Sequence[float], border: int,
                    seed: int, channels: int = 3) -> None:
    """Write the dataset in VOC layout into ``folder`` (which must not exist yet); images with ``channels``
    bands (``image_file``)."""
    (folder / "JPEGImages").mkdir(parents=True)
    (folder / "SegmentationClass").mkdir()
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = voc_palette().tobytes()
    for split_index, (split, count) in enumerate(zip(SPLITS, (num_train, num_val))):
        ids = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            num_objects = int(rng.integers(min_objects, max_objects + 1))
            image, label = render(rng, image_size, num_classes, num_objects, tuple(object_size), border)
            sample_id = f"{split}_{index:05d}"
            suffix, write = image_file(image, label, channels)
            write(folder / "JPEGImages" / f"{sample_id}{suffix}")
            mask = Image.fromarray(label)
            mask.putpalette(palette)
            mask.save(folder / "SegmentationClass" / f"{sample_id}.png")
            ids.append(sample_id)
        (folder / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def write_folder_example(out: Union[str, Path], num_images: int = 32, image_size: int = 96, num_classes: int = 6,
                         masks: str = "rgb", seed: int = 0, overwrite: bool = False) -> Path:
    """The synthetic images as "your own data" (``dataset=folder``): ``images/`` and ``masks/``, in two sub-folders.

    ``masks="rgb"``: colour-coded RGB masks and their colour table ``classes.csv`` (``name,r,g,b``, as annotation
    tools export them); ``masks="index"``: palette PNGs of class indices. No ignore band (colour masks have no
    colour for it). Files in ``out``'s ``images/`` or ``masks/`` (or its ``classes.csv``) are replaced only with
    ``overwrite`` (``seg.outputs``).
    """
    if masks not in ("rgb", "index"):
        raise DatasetError(f"masks must be rgb or index, got {masks!r}")
    if not _is_int(num_images, 2) or not _is_int(image_size, 16) or not _is_int(num_classes, 2, len(SYNTHETIC_CLASSES)):
        raise DatasetError(f"num_images >= 2, image_size >= 16 and num_classes 2-{len(SYNTHETIC_CLASSES)} are needed, "
                           f"got {num_images}, {image_size}, {num_classes}")
    out = Path(out).expanduser()
    check_outputs([out / "classes.csv"] if masks == "rgb" else [], {}, None, overwrite,
                  folders=[out / "images", out / "masks"], key="out")
    colours = voc_palette()[:num_classes]
    for index in range(num_images):
        rng = np.random.default_rng([seed, 2, index])
        image, label = render(rng, image_size, num_classes, int(rng.integers(2, 5)), (0.2, 0.5), border=0)
        stem = f"site_{'ab'[index % 2]}/img_{index:04d}"
        for sub in ("images", "masks"):
            (out / sub / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / "images" / f"{stem}.jpg", quality=92)
        if masks == "rgb":
            Image.fromarray(colours[label]).save(out / "masks" / f"{stem}.png")
        else:
            mask = Image.fromarray(label)
            mask.putpalette(voc_palette().tobytes())
            mask.save(out / "masks" / f"{stem}.png")
    if masks == "rgb":
        (out / "classes.csv").write_text("name,r,g,b\n" + "".join(
            f"{name},{r},{g},{b}\n" for name, (r, g, b) in zip(SYNTHETIC_CLASSES, colours.tolist())))
    return out


def ensure_synthetic(root: Union[str, Path, None], **params) -> Path:
    """The dataset folder for ``params`` under ``root`` (default ``$SEG_CACHE`` or ``~/.cache/seg``), generated on
    first use.

    The folder name holds the generator version and the parameters, so other parameters get their own folder.
    Generation writes into a private temporary folder that is renamed into place: a reader never sees a partial
    dataset, and when several processes (DDP ranks) generate at once, the first rename wins and the others use it.
    """
    cache = Path(root).expanduser() if root is not None else default_cache()
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    target = cache / (f"synthetic-v{GENERATOR_VERSION}-{params['image_size']}px-{params['num_train']}+"
                      f"{params['num_val']}-seed{params['seed']}-{digest}")
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    temporary = cache / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_synthetic(temporary, **params)
        (temporary / "synthetic.json").write_text(json.dumps(
            {"generator_version": GENERATOR_VERSION, **params}, indent=2, sort_keys=True) + "\n")
        os.rename(temporary, target)
    except OSError:
        if not target.is_dir():  # a real failure, not another process that renamed its copy first
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def _is_int(value, low: int, high: Optional[int] = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _is_range(value) -> bool:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        return False
    return 0 < low <= high <= 1


def synthetic_dataset(root: Union[str, Path, None] = None, split: str = "train", num_classes: Optional[int] = None,
                      class_names: Optional[Sequence[str]] = None, image_size: int = 96, num_train: int = 200,
                      num_val: int = 40, min_objects: int = 2, max_objects: int = 4,
                      object_size: Sequence[float] = (0.2, 0.5), border: int = 1, seed: int = 0,
                      channels: int = 3) -> VOCSegmentation:
    """The synthetic dataset's ``split`` (``train`` or ``val``), generated into the cache if needed.

    ``channels`` (``dataset.channels``): 3 is RGB JPEGs; 1 grayscale PNGs; more 16-bit TIFFs (``image_file``).

    ``num_classes`` (2-6, default 6) keeps background and the first ``num_classes - 1`` shapes.
    ``object_size`` is the range of an object's size as a fraction of ``image_size``; ``border`` the half-width
    in pixels of the ignore band around region boundaries (0: none).
    """
    num_classes = len(SYNTHETIC_CLASSES) if num_classes is None else num_classes
    values = {"num_classes": num_classes, "image_size": image_size, "num_train": num_train, "num_val": num_val,
              "min_objects": min_objects, "max_objects": max_objects, "object_size": object_size, "border": border,
              "seed": seed, "channels": channels}
    rules = {
        "num_classes": (_is_int(num_classes, 2, len(SYNTHETIC_CLASSES)),
                        f"an integer from 2 to {len(SYNTHETIC_CLASSES)}"),
        "image_size": (_is_int(image_size, 16), "an integer >= 16"),
        "num_train": (_is_int(num_train, 1), "an integer >= 1"),
        "num_val": (_is_int(num_val, 1), "an integer >= 1"),
        "min_objects": (_is_int(min_objects, 1), "an integer >= 1"),
        "max_objects": (_is_int(max_objects, min_objects if _is_int(min_objects, 1) else 1),
                        "an integer >= min_objects"),
        "object_size": (_is_range(object_size), "[min, max] fractions of the image size with 0 < min <= max <= 1"),
        "border": (_is_int(border, 0), "an integer >= 0"),
        "seed": (_is_int(seed, 0), "an integer >= 0"),
        "channels": (_is_int(channels, 1, 64), "an integer from 1 to 64"),
    }
    for key, (ok, rule) in rules.items():
        if not ok:
            raise DatasetError(f"dataset.{key} must be {rule} for the synthetic dataset, got {values[key]!r}")
    bands = {} if channels == 3 else {"channels": channels}  # the RGB dataset's cache folder keeps its name
    folder = ensure_synthetic(root, image_size=image_size, num_train=num_train, num_val=num_val,
                              num_classes=num_classes, min_objects=min_objects, max_objects=max_objects,
                              object_size=[float(v) for v in object_size], border=border, seed=seed, **bands)
    names = list(class_names) if class_names is not None else list(SYNTHETIC_CLASSES[:num_classes])
    return VOCSegmentation(folder, split, num_classes=num_classes, class_names=names,
                           image_suffix=image_suffix(channels))
