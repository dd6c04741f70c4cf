"""Videos for predict.py: frames read in batches with OpenCV, overlays written as an MP4 of the same size and rate.

Any container and codec the installed OpenCV (its FFmpeg backend) can decode is accepted; the output is always
MPEG-4 Part 2 (``mp4v``) in an ``.mp4``, the encoder every OpenCV wheel ships. The file is written under a
temporary name and renamed when complete, so an interrupted run leaves no half-written video under the final name.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import cv2
import numpy as np
from tqdm import tqdm

from seg.errors import UserError
from seg.io import replacing
from seg.visualize import overlay

log = logging.getLogger("seg.predict")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
FALLBACK_FPS = 25.0  # for containers that do not record a frame rate


class VideoError(UserError, ValueError):
    pass


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _batches(capture: cv2.VideoCapture, batch_size: int) -> Iterator[np.ndarray]:
    """RGB frames ``[B, H, W, 3]`` uint8, ``batch_size`` at a time (the last batch may be shorter)."""
    batch: List[np.ndarray] = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _check_written(path: Path, frames: int, target: Path) -> None:
    """OpenCV's writer does not report a failed write (a full disk only prints "Failed to write frame"): count
    the frames of the file it wrote."""
    capture = cv2.VideoCapture(str(path))
    written = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    if written != frames:
        raise VideoError(f"cannot write video {target}: {written} of {frames} frames reached the file (a full "
                         "disk?); nothing was written there")


def overlay_video(source: Path, target: Path, label_frames: Callable[[np.ndarray], np.ndarray], palette: np.ndarray,
                  batch_size: int) -> Dict:
    """Write the overlay of ``label_frames(frames [B, H, W, 3]) -> labels [B, H, W]`` on every frame of ``source``.

    Returns ``{"frames", "fps", "size": [width, height]}``. A progress bar shows frames per second.
    """
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise VideoError(f"cannot read video {source}: OpenCV could not open it (unknown container or codec)")
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        if not fps or math.isnan(fps) or fps <= 0:
            log.warning("%s records no frame rate; writing %g frames/s", source, FALLBACK_FPS)
            fps = FALLBACK_FPS
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        with replacing(target) as temporary:
            writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not writer.isOpened():
                raise VideoError(f"cannot write video {target}: OpenCV has no mp4v encoder here")
            frames = 0
            try:
                with tqdm(total=expected, desc=source.name, unit="frame", dynamic_ncols=True) as bar:
                    for batch in _batches(capture, batch_size):
                        for image, labels in zip(batch, label_frames(batch)):
                            writer.write(cv2.cvtColor(overlay(image, labels, palette), cv2.COLOR_RGB2BGR))
                        frames += len(batch)
                        bar.update(len(batch))
            finally:
                writer.release()
            if frames == 0:
                raise VideoError(f"video {source} has no frames OpenCV can decode")
            _check_written(temporary, frames, target)
    finally:
        capture.release()
    return {"frames": frames, "fps": fps, "size": [width, height]}
