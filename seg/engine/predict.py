"""predict.py: label maps and overlays for an image or a folder, from a checkpoint or an exported TorchScript model.

For every image ``<name>.<ext>`` (folders are searched recursively; sub-folders are kept) it writes
``labels/<name>.png``, the class index per pixel as a palette PNG (mode ``P``, the dataset's colours, so viewers
show colours and ``np.array(Image.open(...))`` gives the indices), and ``overlays/<name>.jpg``, the colour-coded
prediction blended over the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from seg.config import crop_hw, inference_kwargs, require, to_plain, validate_inference
from seg.data import DatasetError, normalize
from seg.data.base import read_image
from seg.engine.checkpoint import palette_of, restore
from seg.engine.device import autocast, place, resolve_amp, resolve_device
from seg.engine.inference import segment
from seg.errors import MissingFileError, UserError
from seg.io import is_torchscript, load_torchscript
from seg.visualize import overlay

log = logging.getLogger("seg.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


@dataclass
class LoadedModel:
    model: nn.Module                   # normalised input -> {"out": logits}
    palette: np.ndarray                # [256, 3] uint8
    crop_size: Optional[Tuple[int, int]]
    amp: str                           # the AMP mode to use when the config says null (as trained)


def load_model(path, output_stride: Optional[int], device: torch.device) -> LoadedModel:
    """A checkpoint (any output stride) or a TorchScript file from export.py (its stride is fixed)."""
    if not Path(path).is_file():
        raise MissingFileError(f"model not found: {path}")
    if is_torchscript(path):
        if output_stride is not None:
            raise UserError(f"os={output_stride} cannot change an exported model's output stride; export the "
                            f"checkpoint again with os={output_stride}")
        exported, metadata = load_torchscript(path, map_location=device)
        crop = metadata.get("crop_size")
        # export.py's ExportedModel wraps the trained model, which takes normalised images and returns
        # {"out": logits}: exactly what segment() calls, so TTA and sliding windows work on it unchanged.
        return LoadedModel(exported.model, palette_of(metadata), tuple(crop) if crop else None, "off")
    model, state = restore(path, output_stride)
    trained = state["config"]
    return LoadedModel(place(model, device), palette_of(state), crop_hw(trained["train"]["crop_size"]),
                       trained["train"]["amp"])


def list_images(source: Path, output: Path) -> Tuple[Path, List[Path]]:
    """``(folder the output names are relative to, image files)``; files already under ``output`` are skipped."""
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise MissingFileError(f"input not found: {source}")
    output = output.resolve()
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and output not in p.resolve().parents)
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source}")
    names = [p.relative_to(source).with_suffix("") for p in files]
    clashes = sorted({str(n) for n in names if names.count(n) > 1})
    if clashes:
        raise UserError(f"images that differ only in their extension would write the same outputs: {clashes[:3]}")
    return source, files


@torch.inference_mode()
def predict_labels(model: nn.Module, image: np.ndarray, device: torch.device, options: Mapping,
                   amp_dtype: Optional[torch.dtype] = None) -> np.ndarray:
    """Class indices ``[H, W]`` (uint8) of one RGB uint8 image ``[H, W, 3]``."""
    images = normalize(torch.tensor(image).permute(2, 0, 1)[None].to(device))  # a copy: PIL arrays are read-only
    with autocast(device.type, amp_dtype):
        probabilities = segment(model, images, **options)
    return probabilities.argmax(1)[0].to(torch.uint8).cpu().numpy()


def save_prediction(labels: np.ndarray, image: np.ndarray, palette: np.ndarray, label_path: Path,
                    overlay_path: Path) -> None:
    label_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    label_image = Image.fromarray(labels)
    label_image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # becomes mode "P"
    label_image.save(label_path)
    Image.fromarray(overlay(image, labels, palette)).save(overlay_path, quality=90)


def predict(config: Mapping) -> Dict:
    """Run ``configs/predict.yaml``; returns ``{"written": n, "failed": [paths], "output": folder}``.

    An image that cannot be read is reported and skipped; if any were, a ``UserError`` follows at the end.
    """
    cfg = to_plain(config)
    usage = "python scripts/predict.py ckpt=PATH input=IMAGE_OR_FOLDER output=FOLDER"
    for key in ("ckpt", "input", "output"):
        require(cfg, key, usage)
    validate_inference(cfg)
    device = torch.device(resolve_device(cfg["device"]))
    output = Path(cfg["output"])
    loaded = load_model(cfg["ckpt"], cfg["os"], device)
    root, files = list_images(Path(cfg["input"]), output)
    options = inference_kwargs(cfg, loaded.crop_size)
    amp_dtype = resolve_amp(cfg["amp"] if cfg["amp"] is not None else loaded.amp, device.type, key="amp")
    failed: List[str] = []
    for path in tqdm(files, desc="predict", dynamic_ncols=True, disable=len(files) == 1):
        try:
            image = read_image(path)
        except DatasetError as error:
            log.error("skipped: %s", error)
            failed.append(str(path))
            continue
        labels = predict_labels(loaded.model, image, device, options, amp_dtype)
        relative = path.relative_to(root).with_suffix("")
        save_prediction(labels, image, loaded.palette, output / "labels" / f"{relative}.png",
                        output / "overlays" / f"{relative}.jpg")
    written = len(files) - len(failed)
    log.info("wrote label maps and overlays of %d images to %s", written, output)
    if failed:
        raise UserError(f"{len(failed)} of {len(files)} images could not be read (see the log): {failed[:3]}")
    return {"written": written, "failed": failed, "output": str(output)}
