"""predict.py: label maps, overlays, confidence maps, videos and Cityscapes submissions from a checkpoint or an
exported TorchScript model.

``input`` is an image, a video or a folder searched recursively (images of any sizes and videos mixed); every output
keeps the input's path relative to ``input`` and its stem. For an image ``<name>.<ext>``:

* ``labels/<name>.png``: the class index per pixel as a palette PNG (mode ``P``, the dataset's colours, so viewers
  show colours and ``np.array(Image.open(...))`` gives the indices); beyond 255 classes, which a palette cannot
  hold, a 16-bit grayscale PNG (mode ``I;16``, the same ``np.array`` gives uint16 indices);
* ``overlays/<name>.jpg``: the colour-coded prediction blended over the image;
* with ``probs``: ``confidence/<name>.png`` and ``entropy/<name>.png``, colour-scale maps (``seg.engine.confidence``),
  and with ``probs_npy`` ``probs/<name>.npy``, the probabilities (float16 ``[C, H, W]``);
* with ``format="cityscapes"``, instead of labels and overlays: ``cityscapes/<city>/<city>_<seq>_<frame>_labelIds.png``
  and ``cityscapes_submission.zip`` for the benchmark server (``seg.engine.submission``);
* with ``format="voc"``, instead of labels and overlays: ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png``
  and ``voc_submission.tar.gz`` for the VOC evaluation server (``seg.engine.voc_submission``).

A video ``<name>.mp4`` (any container OpenCV reads) gives ``overlays/<name>.mp4``, same size and frame rate, its
frames segmented ``batch_size`` at a time (``seg.engine.video``).

Before any work the files it will write are checked (``seg.outputs``: never an input, another kind's file only
with ``overwrite``) and listed in ``<output>/.seg_outputs.json``, which makes them its own for a later run.
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

from seg.config import crop_hw, inference_kwargs, overwrite_flag, to_plain, validate_predict
from seg.data import DatasetError, normalize
from seg.data.base import ImageTooLarge, read_image
from seg.data.channels import InputStats, stats_from_metadata, stats_from_state
from seg.engine import submission, voc_submission
from seg.engine.checkpoint import CheckpointSource, ModelSource, checkpoint_in, num_classes_of, palette_of
from seg.engine.confidence import label_dtype, save_map, save_probabilities, summarise
from seg.engine.device import autocast, resolve_amp, resolve_device
from seg.engine.inference import fit_to_memory, segment
from seg.engine.video import VIDEO_SUFFIXES, is_video, overlay_video
from seg.errors import MissingFileError, UserError
from seg.io import check_writable, is_disk_full, is_torchscript, load_torchscript
from seg.outputs import check_outputs, record_outputs
from seg.visualize import overlay, save_label_png

log = logging.getLogger("seg.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
OUTPUT_FOLDERS = ("labels", "overlays", "confidence", "entropy", "probs", "cityscapes", "results")  # predict's
SUBMISSIONS = {"cityscapes": submission, "voc": voc_submission}  # format -> its module (same names in each)


@dataclass
class LoadedModel:
    model: nn.Module                   # normalised input -> {"out": logits}
    palette: np.ndarray                # [256, 3] uint8 (a row per class beyond 256 classes)
    num_classes: int
    crop_size: Optional[Tuple[int, int]]
    amp: str                           # the AMP mode to use when the config says null (as trained)
    stats: InputStats = InputStats()   # the input's channels and normalisation (seg.data.channels)


def load_model(path, output_stride: Optional[int], device: torch.device, source: Optional[ModelSource] = None,
               weights: str = "auto") -> LoadedModel:
    """A checkpoint (any output stride) or a TorchScript file from export.py (its stride is fixed); ``source``
    (default: eager torch) reads checkpoints and builds their models (``seg.deployment``: exported files and
    runtimes).

    export.py's module normalises its [0, 1] input and calls its ``model`` submodule (normalised input ->
    ``{"out": logits}``), the interface ``segment`` uses: that submodule is used directly, without a round trip
    through un-normalising.
    """
    if not Path(path).is_file():
        raise MissingFileError(f"model not found: {path}")
    if is_torchscript(path):
        if output_stride is not None:
            raise UserError(f"os={output_stride} cannot change an exported model's output stride; export the "
                            f"checkpoint again with os={output_stride}")
        if weights != "auto":
            raise UserError(f"weights={weights} cannot choose an exported model's weights; export the checkpoint "
                            f"again with weights={weights}")
        exported, metadata = load_torchscript(path, map_location=device)
        inner = getattr(exported, "model", None)
        if not isinstance(inner, torch.jit.ScriptModule) or "num_classes" not in metadata:
            raise UserError(f"{path} is a TorchScript file but not one written by scripts/export.py")
        crop = metadata.get("crop_size")
        log.info("weights: as exported into %s (%s)", path, metadata.get("weights", "raw"))
        return LoadedModel(inner, palette_of(metadata), int(metadata["num_classes"]),
                           tuple(crop) if crop else None, "off", stats_from_metadata(metadata))
    source = source or CheckpointSource(weights)
    state = source.state(path)
    trained = state["config"]
    return LoadedModel(source.model(state, path, output_stride, device), palette_of(state), num_classes_of(state),
                       crop_hw(trained["train"]["crop_size"]), trained["train"]["amp"], stats_from_state(state))


def is_export_mask(path: Path) -> bool:
    """A label mask of an annotation tool's export, not a photo: Roboflow's ``<name>_mask.png`` next to its image,
    CVAT's ``SegmentationClass/`` and ``SegmentationObject/`` next to ``JPEGImages/``."""
    if path.name.endswith("_mask.png"):
        stem = path.name[:-len("_mask.png")]
        return any(path.with_name(stem + suffix).is_file() for suffix in IMAGE_SUFFIXES)
    return any(parent.name in ("SegmentationClass", "SegmentationObject") and (parent.parent / "JPEGImages").is_dir()
               for parent in path.parents)


def list_inputs(source: Path, output: Path) -> Tuple[Path, List[Path]]:
    """``(folder the output names are relative to, image and video files)``.

    Files under the folders this command writes into ``output`` (``OUTPUT_FOLDERS``) are skipped, so a second run
    does not segment its own overlays; anything else under ``output`` is input: ``output`` may be the input folder.
    The masks of an annotation tool's export (``is_export_mask``) are skipped too.
    """
    if source.is_file():
        return source.parent, [source]
    if not source.is_dir():
        raise MissingFileError(f"input not found: {source}")
    written = {(output / sub).resolve() for sub in OUTPUT_FOLDERS}
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                   and not written.intersection(p.resolve().parents) and not is_export_mask(p))
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) or videos ({', '.join(VIDEO_SUFFIXES)}) "
                        f"found in {source}")
    names = [p.relative_to(source).with_suffix("") for p in files]
    clashes = sorted({str(n) for n in names if names.count(n) > 1})
    if clashes:
        raise UserError(f"files that differ only in their extension would write the same outputs: {clashes[:3]}")
    return source, files


@torch.inference_mode()
def probabilities(model: nn.Module, images: np.ndarray, device: torch.device, options: Mapping,
                  amp_dtype: Optional[torch.dtype] = None, name: str = "image",
                  stats: Optional[InputStats] = None) -> torch.Tensor:
    """Class probabilities ``[B, C, H, W]`` of RGB uint8 images ``[B, H, W, 3]`` (one size), on ``device``;
    whole-image inference that would not fit in memory runs as the sliding window (``fit_to_memory``).
    ``stats``: the model's input (None: RGB, ImageNet's statistics), whose images are ``[B, H, W, channels]``."""
    batch = normalize(torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2), stats)
    with autocast(device.type, amp_dtype):
        return segment(model, batch, **fit_to_memory(model, batch, options, name))


def save_prediction(labels: np.ndarray, image: np.ndarray, palette: np.ndarray, label_path: Path,
                    overlay_path: Path) -> None:
    save_label_png(labels, palette, label_path)
    overlay_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, labels, palette)).save(overlay_path, quality=90)


@dataclass
class Writer:
    """One run's model and settings: segments an image or a batch of frames and writes the image's files."""

    loaded: LoadedModel
    device: torch.device
    options: Dict                      # keyword arguments of segment
    amp_dtype: Optional[torch.dtype]
    output: Path
    probs: bool
    probs_npy: bool
    server: Optional[object] = None  # format=cityscapes / voc: its module in SUBMISSIONS

    def probabilities(self, images: np.ndarray, name: str) -> torch.Tensor:
        return probabilities(self.loaded.model, images, self.device, self.options, self.amp_dtype, name,
                             self.loaded.stats)

    def label_frames(self, frames: np.ndarray) -> np.ndarray:
        probabilities = self.probabilities(frames, f"{len(frames)} video frame(s)")
        return probabilities.argmax(1).to(torch.int32).cpu().numpy().astype(label_dtype(probabilities.shape[1]))

    def image(self, image: np.ndarray, relative: Path, label_ids: Optional[Path] = None, name: str = "") -> None:
        """The files of one image (``name``: its path, for messages); ``label_ids``: its submission file
        (format=cityscapes / voc) instead of labels and overlays."""
        probs = self.probabilities(image[None], name or str(relative))[0]
        summary = summarise(probs, maps=self.probs)
        started: List[Path] = []

        def target(path: Path) -> Path:
            started.append(path)
            return path

        try:
            if label_ids is not None:
                self.server.save(summary.labels, target(self.output / self.server.FOLDER / label_ids))
            else:
                save_prediction(summary.labels, image, self.loaded.palette,
                                target(self.output / "labels" / f"{relative}.png"),
                                target(self.output / "overlays" / f"{relative}.jpg"))
            if self.probs:
                save_map(summary.confidence, target(self.output / "confidence" / f"{relative}.png"))
                save_map(summary.entropy, target(self.output / "entropy" / f"{relative}.png"))
            if self.probs_npy:
                save_probabilities(probs, target(self.output / "probs" / f"{relative}.npy"))
        except OSError as error:  # a full disk or a folder turned read-only: no cut-short file is left
            for path in started:
                path.unlink(missing_ok=True)
            raise cannot_write(self.output, error, f"the outputs of {relative} were removed") from None


def submission_targets(files: List[Path], relatives: List[Path], num_classes: int, fmt: str) -> Dict[Path, Path]:
    """format=cityscapes / voc: each image's submission file, after checking names, model and inputs."""
    videos = [path for path in files if is_video(path)]
    if videos:
        raise submission.SubmissionError(f"format={fmt} takes images, not videos: {videos[0]}")
    SUBMISSIONS[fmt].check_classes(num_classes)
    return dict(zip(relatives, SUBMISSIONS[fmt].submission_paths(relatives)))


def planned_outputs(output: Path, files: List[Path], relatives: List[Path], cfg: Mapping) -> List[Path]:
    """Every file ``predict`` will write for these inputs (``Writer.image``, ``overlay_video``, the submission zip),
    for ``seg.outputs.check_outputs`` to see before any work."""
    images = [relative for path, relative in zip(files, relatives) if not is_video(path)]
    planned = [output / "overlays" / f"{relative}.mp4" for path, relative in zip(files, relatives) if is_video(path)]
    server = SUBMISSIONS.get(cfg["format"])
    if server:
        planned += [output / server.FOLDER / name for name in server.submission_paths(images)]
        planned.append(output / server.ARCHIVE_NAME)
    else:
        planned += [output / folder / f"{relative}{suffix}" for relative in images
                    for folder, suffix in (("labels", ".png"), ("overlays", ".jpg"))]
    if cfg["probs"]:
        planned += [output / folder / f"{relative}.png" for relative in images for folder in ("confidence", "entropy")]
    if cfg["probs_npy"]:
        planned += [output / "probs" / f"{relative}.npy" for relative in images]
    return planned


def read_or_report(path: Path, max_pixels: Optional[int], channels: int = 3) -> Optional[np.ndarray]:
    try:
        return read_image(path, max_pixels=max_pixels, channels=channels)
    except DatasetError as error:
        hint = "; raise max_image_pixels=... to read it" if isinstance(error, ImageTooLarge) else ""
        log.error("skipped: %s%s", error, hint)
        return None


def cannot_write(output: Path, error: OSError, detail: str = "") -> UserError:
    reason = error.strerror or type(error).__name__
    if detail:
        reason += f" ({detail})"
    remedy = "free some space or choose another" if is_disk_full(error) else "choose a writable"
    return UserError(f"cannot write predictions into {output}: {reason}; {remedy} output= folder")


def predict(config: Mapping, source: Optional[ModelSource] = None) -> Dict:
    """Run ``configs/predict.yaml``; returns ``{"written": n, "failed": [paths], "output": folder}`` (plus
    ``"submission"``, the archive, with ``format=cityscapes`` or ``format=voc``).

    A file that cannot be read is reported and skipped; if any were, a ``UserError`` follows at the end.
    """
    cfg = to_plain(config)
    validate_predict(cfg)
    device = torch.device(resolve_device(cfg["device"]))
    output = Path(cfg["output"])
    ckpt = checkpoint_in(cfg["ckpt"])
    if not Path(ckpt).exists():  # first: no use listing inputs for a model that is not there
        raise MissingFileError(f"model not found: {ckpt}")
    root, files = list_inputs(Path(cfg["input"]), output)
    relatives = [path.relative_to(root).with_suffix("") for path in files]
    planned = planned_outputs(output, files, relatives, cfg)
    check_outputs(planned, {"ckpt": ckpt, "input": cfg["input"]}, "predictions", overwrite_flag(cfg))
    source = source or CheckpointSource(cfg.get("weights", "auto"), cfg.get("channels_last", True))
    loaded = load_model(ckpt, cfg["os"], device, source, cfg.get("weights", "auto"))  # a model that fails: no folder
    if loaded.stats.channels != 3 and any(is_video(path) for path in files):
        video = next(path for path in files if is_video(path))
        raise UserError(f"{video} is a video (RGB frames) and the model takes {loaded.stats.channels}-channel "
                        "images (dataset.channels): give its frames as image files with that many channels")
    try:
        check_writable(output)  # before any file is segmented
        record_outputs(output, planned, "predictions")  # claimed before written: an interrupted run's files too
    except OSError as error:
        raise cannot_write(output, error) from None
    packer = SUBMISSIONS.get(cfg["format"])
    targets = submission_targets(files, relatives, loaded.num_classes, cfg["format"]) if packer else {}
    if cfg["probs"] and any(is_video(path) for path in files):
        log.info("probs=true applies to images: videos get an overlay video only")
    amp_dtype = resolve_amp(cfg["amp"] if cfg["amp"] is not None else loaded.amp, device.type, key="amp")
    writer = Writer(loaded, device, {**inference_kwargs(cfg, loaded.crop_size), "progress": True}, amp_dtype,
                    output, cfg["probs"], cfg["probs_npy"], packer)
    failed: List[str] = []
    try:
        for path, relative in zip(tqdm(files, desc="predict", dynamic_ncols=True, disable=len(files) == 1),
                                  relatives):
            if is_video(path):
                overlay_video(path, output / "overlays" / f"{relative}.mp4", writer.label_frames, loaded.palette,
                              cfg["batch_size"])
                continue
            image = read_or_report(path, cfg["max_image_pixels"], loaded.stats.channels)
            if image is None:
                failed.append(str(path))
                continue
            writer.image(image, relative, targets.get(relative), str(path))
        result = {"written": len(files) - len(failed), "failed": failed, "output": str(output)}
        written = [targets[r] for p, r in zip(files, relatives) if packer and str(p) not in failed]
        if written:
            result["submission"] = str(packer.pack(output / packer.FOLDER, written, output / packer.ARCHIVE_NAME))
    except OSError as error:  # the folder turned read-only, the disk is full
        if isinstance(error, UserError):
            raise
        raise cannot_write(output, error) from None
    if written:
        log.info("wrote %d %s to %s and packed them into %s", len(written), packer.WHAT, output / packer.FOLDER,
                 result["submission"])
    else:
        log.info("wrote the outputs of %d input file(s) to %s", result["written"], output)
    if failed:
        raise UserError(f"{len(failed)} of {len(files)} files could not be read (see the log): {failed[:3]}")
    return result
