"""What every dataset shares: the sample contract, file reading and per-sample validation.

A dataset is a list of samples (image file, mask file, id) plus its classes. ``dataset[i]`` returns
``(image uint8 [H, W, 3] RGB, mask [H, W])`` (with ``dataset.channels`` other than 3 the image is
``[H, W, channels]``, uint8 or float32 on the same 0..255 scale: ``seg.data.channels``) with class indices in
``[0, num_classes)`` and the dataset's ``ignore_index`` for unlabelled pixels: a uint8 mask with ``IGNORE_INDEX``
(255) up to 255 classes, a uint16 mask with ``WIDE_IGNORE_INDEX`` (65535) beyond (``label_space``). Mask files
are 8-bit (255 = ignore) or 16-bit (65535 = ignore) index images; either depth serves either label space, never
by a silent cast. Every sample is validated when it is read: a file that is missing, truncated or unreadable, a
mask that is not a single-channel 8- or 16-bit image, a label outside the classes, or an image and mask of
different sizes raises ``DatasetError`` naming the file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps

from seg.data.channels import TIFF_SUFFIXES, ChannelError, pil_bands, read_tiff, to_scale_255
from seg.data.palette import extend_palette
from seg.errors import UserError

IGNORE_INDEX = 255
# The ignore value of 16-bit masks, and of every label map of a dataset with more than 255 classes.
WIDE_IGNORE_INDEX = 65535
MAX_CLASSES = WIDE_IGNORE_INDEX  # class indices 0..65534 in 16-bit masks
DOCS = "docs/datasets.md"

# A truncated file must raise instead of loading a partly grey image (this is PIL's default; pinned here because
# a training run must never learn from half-decoded samples).
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Masks hold class indices; these modes store one 8-bit value per pixel (16-bit masks: WIDE_GRAY_MODES).
MASK_MODES = ("L", "P")
# 16-bit and 32-bit integer grayscale modes (PIL opens 16-bit PNGs and TIFFs as one of these; a mask in mode "I" is
# checked for its range)
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as it is on disk: missing files, bad masks, empty splits, bad options.

    A ``UserError``: scripts print it as one line (``error: ...``) and exit with code 1.
    """


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Optional[Path] = None


def not_found(what: str, path: Path, hint: str = "") -> DatasetError:
    hint = f"; {hint}" if hint else ""
    return DatasetError(f"{what} not found: {path}{hint} (see {DOCS} for how to get and lay out the dataset)")


def resolve_classes(default_names: Sequence[str], num_classes: Optional[int], class_names: Optional[Sequence[str]],
                    fixed: bool) -> List[str]:
    """The class names a dataset uses, from its own names and the optional ``num_classes`` / ``class_names``.

    ``fixed`` datasets (Cityscapes, COCO) have a label set defined by their converter: the names may be renamed but
    the count cannot change. Otherwise (VOC layout with your own data) a ``num_classes`` other than the default
    gives generic names ``class_0 ...`` unless ``class_names`` are given.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or not 1 <= num_classes <= MAX_CLASSES):
        raise DatasetError(f"dataset.num_classes must be an integer in [1, {MAX_CLASSES}] (up to {IGNORE_INDEX} "
                           f"with 8-bit masks, 255 = ignore; more needs 16-bit masks, {WIDE_IGNORE_INDEX} = ignore), "
                           f"got {num_classes!r}")
    if class_names is not None:
        if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
            raise DatasetError(f"dataset.class_names must be a list of strings, got {class_names!r}")
        names = list(class_names)
        if num_classes is not None and num_classes != len(names):
            raise DatasetError(f"dataset.num_classes is {num_classes} but dataset.class_names has {len(names)} "
                               f"names: {names}")
    elif num_classes is None or num_classes == len(default_names):
        names = list(default_names)
    elif fixed:
        names = []  # reported just below
    else:
        names = [f"class_{i}" for i in range(num_classes)]
    if fixed and len(names) != len(default_names):
        raise DatasetError(f"this dataset has {len(default_names)} classes ({', '.join(default_names)}); "
                           f"dataset.num_classes / dataset.class_names must match that count")
    if not 1 <= len(names) <= MAX_CLASSES:
        raise DatasetError(f"dataset.class_names must hold 1 to {MAX_CLASSES} names (more than {IGNORE_INDEX} need "
                           f"16-bit masks, {WIDE_IGNORE_INDEX} = ignore), got {len(names)}")
    return names


class ImageTooLarge(DatasetError):
    """An image with more pixels than the caller allows (PIL's decompression-bomb guard, or ``max_pixels``)."""


def read_image(path: Path, max_pixels: Optional[int] = None, what: str = "image", channels: int = 3) -> np.ndarray:
    """Decode an image file fully into uint8 RGB ``[H, W, 3]``, upright as viewers show it (see ``open_image``).

    Grayscale, palette and RGBA images are converted; 16-bit grayscale is scaled to 8 bits (value / 257), not
    clipped at 255. ``channels`` other than 3 (``dataset.channels``) reads the file's own bands instead
    (``read_bands``): an image with another count is a ``DatasetError`` naming it.

    ``max_pixels`` replaces PIL's decompression-bomb limit (a warning above about 89 million pixels, a refusal above
    twice that) for this read: prediction on 10,000 x 10,000 images raises it deliberately, while datasets keep
    PIL's guard. ``ImageTooLarge`` is raised, before decoding, for an image above the limit. ``what`` names the
    file in errors (colour-coded masks are read with this too).
    """
    if channels != 3:
        return read_bands(path, channels, max_pixels, what)
    with open_image(path, what, max_pixels) as img:
        return rgb_array(img)


def rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded PIL image as uint8 RGB ``[H, W, 3]``: 16-bit grayscale scaled to 8 bits, other modes converted."""
    if img.mode in WIDE_GRAY_MODES:
        wide = np.asarray(img, dtype=np.float64)
        gray = np.clip(wide / 257.0 + 0.5, 0, 255).astype(np.uint8)  # 65535 -> 255, 257 -> 1, 0 -> 0
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def read_bands(path: Path, channels: int, max_pixels: Optional[int] = None, what: str = "image") -> np.ndarray:
    """``[H, W, channels]`` of any band count and depth (``seg.data.channels``): uint8 for 8-bit files, else
    float32 on the 0..255 scale (integers by their dtype's range, floats from [0, 1]). TIFFs are read with
    tifffile, the rest with PIL (upright, as ``open_image``)."""
    if Path(path).suffix.lower() in TIFF_SUFFIXES:
        bands = _tiff_bands(path, what, max_pixels)
    else:
        with open_image(path, what, max_pixels) as img:
            bands = pil_bands(img)
    return checked_bands(bands, channels, f"{what} {path}", f"{what} file {path}")


def checked_bands(bands: np.ndarray, channels: int, name: str, source: str) -> np.ndarray:
    """Decoded ``[H, W, bands]`` of the image ``name`` (read from ``source``) on the 0..255 scale, which must have
    ``channels`` bands (``read_bands``)."""
    if bands.shape[2] != channels:
        raise DatasetError(f"{name} has {bands.shape[2]} channel{'s' * (bands.shape[2] != 1)} but "
                           f"dataset.channels is {channels}: convert it, or set dataset.channels={bands.shape[2]} "
                           f"(see {DOCS})")
    try:
        return np.array(to_scale_255(bands), order="C")  # a writable copy (PIL's arrays are read-only)
    except ChannelError as error:
        raise DatasetError(f"cannot read {source}: {error}") from None


def _tiff_bands(path: Path, what: str, max_pixels: Optional[int]) -> np.ndarray:
    if not Path(path).is_file():
        raise DatasetError(f"{what} file not found: {path}")
    try:
        bands = read_tiff(path)
    except Exception as error:  # noqa: BLE001 - tifffile raises many kinds for a damaged file; ChannelError too
        raise DatasetError(f"cannot read {what} file {path}: {error}") from None
    if max_pixels is not None and bands.shape[0] * bands.shape[1] > max_pixels:
        raise ImageTooLarge(f"{what} file {path} is {bands.shape[1]}x{bands.shape[0]} = "
                            f"{bands.shape[0] * bands.shape[1]:,} pixels, more than the {max_pixels:,} allowed")
    return bands


def read_mask(path: Path) -> np.ndarray:
    """Decode a single-channel mask into its raw values ``[H, W]``: uint8 from an 8-bit image (``L`` or palette
    ``P`` PNG), uint16 from a 16-bit grayscale image (PNG or TIFF, ``I;16*``, or ``I`` holding 16-bit values)."""
    with open_image(path, "mask") as img:
        if img.mode in WIDE_GRAY_MODES:
            return wide_values(img, path)
        if img.mode not in MASK_MODES:
            detail = {"RGB": "3 channels (a colour image)", "RGBA": "4 channels", "F": "floating-point values",
                      "1": "1 bit per pixel"}.get(img.mode, f"mode {img.mode}")
            raise DatasetError(
                f"mask {path} has {detail}; masks must be single-channel 8-bit (PNG mode L or P, {IGNORE_INDEX} = "
                f"ignore) or 16-bit grayscale images ({WIDE_IGNORE_INDEX} = ignore) holding class indices "
                f"(convert colour masks to indices)")
        return np.array(img, dtype=np.uint8)


def wide_values(img: Image.Image, path: Path) -> np.ndarray:
    """The uint16 values of a 16-bit (or 32-bit integer) grayscale image; 32-bit values outside 0..65535 are an
    error, never wrapped."""
    values = np.asarray(img)
    if values.dtype != np.uint16:
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > WIDE_IGNORE_INDEX:
            raise DatasetError(f"mask {path} has values {low}..{high}; 16-bit masks hold class indices 0.."
                               f"{WIDE_IGNORE_INDEX - 1} and {WIDE_IGNORE_INDEX} = ignore")
    return values.astype(np.uint16)


def label_space(num_classes: int) -> Tuple[int, type]:
    """``(ignore index, dtype)`` of a dataset's label maps: ``(255, uint8)`` up to 255 classes, else
    ``(65535, uint16)``."""
    return (IGNORE_INDEX, np.uint8) if num_classes <= IGNORE_INDEX else (WIDE_IGNORE_INDEX, np.uint16)


def value_table(depth_ignore: int, ignore_index: int, extra_ignore: Optional[int] = None,
                label_map: Optional[Dict[int, int]] = None) -> np.ndarray:
    """uint16 ``[depth_ignore + 1]``: mask file value -> label. Identity, except the file's own ignore value
    (``depth_ignore``: 255 or 65535) and ``extra_ignore`` -> ``ignore_index``, then ``label_map`` (file value ->
    class or ``ignore_index``) on top."""
    table = np.arange(depth_ignore + 1, dtype=np.uint16)
    table[depth_ignore] = ignore_index
    if extra_ignore is not None and extra_ignore <= depth_ignore:
        table[extra_ignore] = ignore_index
    for old, new in (label_map or {}).items():
        if old <= depth_ignore:
            table[old] = new
    return table


def to_labels(values: np.ndarray, ignore_index: int) -> np.ndarray:
    """Raw mask values (uint8: 255 = ignore; uint16: 65535 = ignore) as labels with ``ignore_index``: the array
    itself when the depths match, else uint16 (``check_sample`` then finds the values outside the classes before
    ``__getitem__`` narrows it)."""
    depth_ignore = IGNORE_INDEX if values.dtype == np.uint8 else WIDE_IGNORE_INDEX
    return values if depth_ignore == ignore_index else value_table(depth_ignore, ignore_index)[values]


def open_image(path: Path, what: str, max_pixels: Optional[int] = None) -> Image.Image:
    """The decoded PIL image at ``path`` (the caller closes it); a missing, truncated or unreadable file is a
    ``DatasetError`` naming it as ``what``.

    The EXIF orientation is applied, so every image and mask is read upright as viewers show it: phone photos
    store their pixels sideways (orientation 6 or 8), and a mask drawn on the upright photo would not match them.
    """
    if not Path(path).is_file():
        raise DatasetError(f"{what} file not found: {path}")
    img = None
    try:
        with _pil_pixel_limit(max_pixels):
            img = Image.open(path)  # reads the header only
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{what} file {path} is {img.width}x{img.height} = {img.width * img.height:,} "
                                    f"pixels, more than the {max_pixels:,} allowed")
            img.load()  # decode now, so that a truncated file raises here and not later
            ImageOps.exif_transpose(img, in_place=True)
    except Exception as error:  # noqa: BLE001 - truncation and unknown formats are OSErrors; broken EXIF data anything
        if img is not None:
            img.close()
        if isinstance(error, DatasetError):
            raise
        if isinstance(error, Image.DecompressionBombError):
            raise ImageTooLarge(f"cannot read {what} file {path}: {error}") from None
        raise DatasetError(f"cannot read {what} file {path}: {error}") from None
    return img


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: Optional[int]):
    """With an explicit ``max_pixels`` (checked by ``open_image``), PIL's own global limit is off for this read."""
    if max_pixels is None:
        yield
        return
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def check_sample(image: np.ndarray, mask: np.ndarray, num_classes: int, image_name: str, mask_name: str,
                 hint: str = "") -> None:
    """Raise ``DatasetError`` if the mask does not match the image or holds a value that is not a class or the
    ignore index of ``num_classes``'s label space (255, or 65535 beyond 255 classes).

    ``hint`` ends the out-of-range message (how this dataset's options remap values).
    """
    if image.shape[:2] != mask.shape:
        raise DatasetError(f"image {image_name} is {image.shape[1]}x{image.shape[0]} (WxH) but the mask from "
                           f"{mask_name} is {mask.shape[1]}x{mask.shape[0]}")
    ignore_index, _ = label_space(num_classes)
    counts = np.bincount(mask.ravel(), minlength=ignore_index + 1)
    counts[ignore_index] = 0
    bad = np.flatnonzero(counts[num_classes:]) + num_classes
    if bad.size:
        shown = bad.tolist() if bad.size <= 20 else bad[:20].tolist() + [f"... {bad.size - 20} more"]
        raise DatasetError(f"mask {mask_name} holds values {shown} outside the {num_classes} classes "
                           f"[0, {num_classes - 1}] and the ignore value {ignore_index}{hint}")


class SegmentationDataset:
    """Base class: ``samples`` and ``class_names``; subclasses override ``load_mask`` (and ``mask_source``) when
    masks need decoding.

    Attributes: ``class_names``, ``num_classes``, ``palette`` (uint8 ``[max(256, num_classes), 3]``: the colour of
    each mask value), ``ignore_index`` (255, or 65535 beyond 255 classes), ``root`` and ``split``, and:

    - ``problems``: what listing the files found wrong (an image without a mask, two files with one stem); the
      samples concerned are left out. ``build_dataset`` refuses a dataset with problems unless asked not to, so
      that ``check_dataset`` can list them all.
    - ``derived_splits``: ``{split: [sample ids]}`` when the dataset made its split up (a folder without split
      lists); training records it so that resume and evaluation read exactly the same samples. None otherwise.
    - ``label_decoding``: the options that turn mask files into labels (part of the class-weight cache key).
    """

    derived_splits: Optional[Dict[str, List[str]]] = None
    channels = 3  # dataset.channels: build_dataset sets it; read_image reads the files' own bands when not 3
    classes_from_data = False  # True: the class list was found in the files (LabelMe labels), so training records it
    value_hint = ""  # appended to the "values outside the classes" error

    def __init__(self, root: Path, split: str, samples: Sequence[Sample], class_names: Sequence[str],
                 palette: np.ndarray, problems: Sequence[str] = (), label_decoding: Optional[Dict] = None):
        if not samples and problems:  # every sample was left out: say why
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DatasetError(f"split {split!r} of {root} has no usable sample: {problems[0]}{more}")
        if not samples:
            raise DatasetError(f"split {split!r} of {root} is empty: it lists no images")
        self.root = Path(root)
        self.split = split
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.palette = extend_palette(palette, self.num_classes)
        self.problems = list(problems)
        self.label_decoding = dict(label_decoding or {})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ignore_index(self) -> int:
        return label_space(self.num_classes)[0]

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        return self.samples[index].id

    def load_mask(self, index: int) -> np.ndarray:
        """The labels of a sample (``ignore_index`` for ignored pixels), uint8 or uint16, not yet checked."""
        return to_labels(read_mask(self.samples[index].mask), self.ignore_index)

    def mask_source(self, index: int) -> str:
        """Where a sample's mask comes from, for error messages."""
        return str(self.samples[index].mask)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        image = read_image(sample.image, channels=self.channels)
        mask = self.load_mask(index)
        check_sample(image, mask, self.num_classes, str(sample.image), self.mask_source(index), self.value_hint)
        return image, mask.astype(label_space(self.num_classes)[1], copy=False)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {len(self)} samples, "
                f"{self.num_classes} classes)")
