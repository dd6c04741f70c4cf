"""Inputs with any number of channels (``dataset.channels``): grayscale, RGB-D and multispectral images.

Three channels is RGB as it always was (``read_image``'s PIL path, ImageNet statistics). Any other count reads
the file's own bands: PNG / JPEG / BMP through PIL (``L`` and ``I;16`` are one band, ``LA`` two, ``RGB`` three,
``RGBA`` and ``CMYK`` four) and TIFF through tifffile (any number of bands, interleaved or planar, any dtype).

Values go through the pipeline as the 8-bit scale the augmentations and ``normalize`` already use: 8-bit images
stay uint8 (four times less to copy), every other depth becomes float32 on the same 0..255 scale, so that
``x / 255`` is the image in [0, 1]. Integer images are scaled by the range of their dtype (uint16: value / 65535,
whatever the sensor's actual bit depth), floating-point images are taken to hold [0, 1] already.

Normalisation statistics (``dataset.mean`` / ``dataset.std``, fractions of that [0, 1] range) default to
ImageNet's for 3 channels (the pretrained weights expect them), the mean of ImageNet's for 1 channel (timm's
convention for grayscale models) and ImageNet's repeated channel by channel otherwise (as ``adapt_input_conv``
repeats the pretrained filters). ``scripts/check_dataset.py`` computes the dataset's own and prints the command
that uses them; training records them in the checkpoint's config, and evaluate, predict and export read them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_CHANNELS = 512  # OpenCV's limit for the resizes of the augmentations (CV_CN_MAX)
# PIL mode -> bands, for the modes read as they are (others: converted to RGB, 3 bands)
PIL_BANDS = {"L": 1, "I;16": 1, "I;16L": 1, "I;16B": 1, "I;16N": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3,
             "RGBA": 4, "CMYK": 4}


@dataclass(frozen=True)
class InputStats:
    """What a model's input is: the channel count and the per-channel mean and std of [0, 1] values."""

    channels: int = 3
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD

    def as_dict(self) -> dict:
        return {"channels": self.channels, "mean": list(self.mean), "std": list(self.std)}


def default_stats(channels: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` for ``channels`` when the config gives none (see the module docstring)."""
    if channels == 1:
        return (round(float(np.mean(IMAGENET_MEAN)), 4),), (round(float(np.mean(IMAGENET_STD)), 4),)
    return (tuple(IMAGENET_MEAN[i % 3] for i in range(channels)), tuple(IMAGENET_STD[i % 3] for i in range(channels)))


def input_stats(channels: int = 3, mean: Optional[Sequence[float]] = None,
                std: Optional[Sequence[float]] = None) -> InputStats:
    """The checked ``InputStats``; a bad value is a ``ValueError`` naming ``channels``, ``mean`` or ``std``."""
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {channels!r}")
    default_mean, default_std = default_stats(channels)
    values = {}
    for key, given, default, low in (("mean", mean, default_mean, None), ("std", std, default_std, 0.0)):
        if given is None:
            values[key] = tuple(default)
            continue
        if (isinstance(given, (str, bytes)) or not hasattr(given, "__len__") or len(given) != channels
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in given)
                or (low is not None and not all(v > low for v in given))):
            rule = "positive numbers" if low is not None else "numbers"
            raise ValueError(f"{key} must be a list of {channels} {rule} (one per channel, as fractions of the "
                             f"[0, 1] range), or null for the default, got {given!r}")
        values[key] = tuple(float(v) for v in given)
    return InputStats(channels, values["mean"], values["std"])


def stats_from_config(dataset_cfg: Optional[Mapping]) -> InputStats:
    """The stats of a config's ``dataset`` section (configs written before ``dataset.channels`` lack the keys:
    3 channels, ImageNet's statistics)."""
    dataset_cfg = dataset_cfg or {}
    channels = dataset_cfg.get("channels")
    return input_stats(3 if channels is None else channels, dataset_cfg.get("mean"), dataset_cfg.get("std"))


def stats_from_state(state: Mapping) -> InputStats:
    """The stats a loaded model expects: an export's metadata, else the checkpoint's config (another project's
    file records none: RGB with ImageNet's statistics)."""
    metadata = state.get("export_metadata")
    if metadata is not None:
        return stats_from_metadata(metadata)
    return stats_from_config(state.get("config", {}).get("dataset"))


def stats_from_metadata(metadata: Mapping) -> InputStats:
    """The stats export.py recorded beside an exported model (files before ``channels``: RGB)."""
    mean = metadata.get("mean")
    return input_stats(int(metadata.get("channels", len(mean) if mean else 3)), mean, metadata.get("std"))


def mean_pixel(stats: InputStats) -> Tuple[int, ...]:
    """The mean as 0..255 values: what padded image pixels are filled with (they normalise to about zero); for
    ImageNet's RGB mean it is ``seg.data.transforms.MEAN_PIXEL``."""
    return tuple(int(round(m * 255)) for m in stats.mean)


class ChannelError(ValueError):
    """An image whose channel count is not the configured one (``seg.data.base`` words it as a DatasetError)."""


def to_scale_255(values: np.ndarray) -> np.ndarray:
    """uint8 as it is; other integer dtypes scaled by their range and floats (taken as [0, 1]) to float32 0..255."""
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(values.dtype)
        scaled = (values.astype(np.float64) - info.min) * (255.0 / (info.max - info.min))
        return scaled.astype(np.float32)
    if np.issubdtype(values.dtype, np.floating):
        return (values.astype(np.float32) * np.float32(255.0))
    raise ChannelError(f"pixels of type {values.dtype}, which is neither integer nor floating point")


def read_tiff(path: Path) -> np.ndarray:
    """The first series of a TIFF file as ``[H, W, bands]`` in the file's dtype: interleaved (``YXS``), planar
    (``SYX``) or one page per band (``QYX`` / ``IYX``, as many multispectral tools write), all the same here."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        series = tif.series[0]
        values, axes = series.asarray(), series.axes
    if values.ndim == 2:
        return values[:, :, None]
    if values.ndim != 3:
        raise ChannelError(f"a TIFF series of shape {list(values.shape)} (axes {axes}), not one image")
    band_axis = next((i for i, axis in enumerate(axes) if axis in "SC"), 0)  # no sample axis: pages are bands
    return np.moveaxis(values, band_axis, 2)


def pil_bands(img) -> np.ndarray:
    """A decoded PIL image as ``[H, W, bands]`` in its own depth (palette and other modes: RGB)."""
    if img.mode not in PIL_BANDS:
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    values = np.asarray(img)
    if img.mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
        values = values.astype(np.uint16)  # PIL opens some 16-bit PNGs as 32-bit "I"
    return values[:, :, None] if values.ndim == 2 else values


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` (uint8, or float on the 0..255 scale) as uint8 RGB for overlays and TensorBoard: RGB as it
    is, one or two bands as gray (the first), more than three bands their first three."""
    if image.ndim == 2:
        image = image[:, :, None]
    bands = image.shape[2]
    image = image[:, :, :3] if bands >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, dtype=np.float32) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


class ChannelStatistics:
    """Per-channel mean and standard deviation of [0, 1] values over every pixel of the images added (what
    ``dataset.mean`` / ``dataset.std`` take), accumulated in float64 sums so that the order of images is free."""

    def __init__(self):
        self.pixels = 0
        self.sums: Optional[np.ndarray] = None
        self.squares: Optional[np.ndarray] = None

    def add(self, image: np.ndarray) -> None:
        """``image``: ``[H, W, C]`` on the 0..255 scale (uint8, or float32 from deeper files)."""
        values = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1).astype(np.float64) / 255.0
        if self.sums is None:
            self.sums, self.squares = np.zeros(values.shape[1]), np.zeros(values.shape[1])
        self.pixels += values.shape[0]
        self.sums += values.sum(axis=0)
        self.squares += np.square(values).sum(axis=0)

    @property
    def mean(self) -> List[float]:
        return [] if self.sums is None else (self.sums / self.pixels).tolist()

    @property
    def std(self) -> List[float]:
        if self.sums is None:
            return []
        mean = self.sums / self.pixels
        return np.sqrt(np.maximum(self.squares / self.pixels - mean ** 2, 0.0)).tolist()

    def format(self, command: str) -> List[str]:
        """The report's lines: the statistics and ``command`` with the keys that use them."""
        if self.sums is None:
            return []
        mean, std = ([round(v, 4) for v in values] for values in (self.mean, self.std))
        channels = len(mean)
        keys = (f"dataset.channels={channels} 'dataset.mean=[{','.join(map(str, mean))}]' "
                f"'dataset.std=[{','.join(map(str, std))}]'")
        return [f"channel statistics of [0, 1] values ({channels} channel{'s' * (channels != 1)}, {self.pixels} "
                f"pixels): mean {mean}, std {std}",
                f"  to normalise with them: {command} {keys}"]
