"""The benchmark's deployment table: the same model and ``segment`` call in eager torch (fp32, channels_last, bf16
autocast) and in the runtimes (``backends=[onnxruntime,openvino]`` x ``precisions=[fp32,bf16,int8]``), each timed as
``measure.time_inference`` times eager inference, with its speed as a ratio against eager torch fp32 measured in the
same run.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from seg.benchmark import measure
from seg.data import IMAGENET_MEAN, IMAGENET_STD
from seg.deployment.quantize import quantize_onnx
from seg.deployment.runtimes import runtime_model
from seg.engine.device import place
from seg.errors import UserError
from seg.export import export_model

ROW_KEYS = ("backend", "precision", "layout", "batch", "size", "latency_ms", "img_per_s", "ratio_vs_torch",
            "peak_mem_mb", "file_mb", "note")
# What a runtime cannot run here: (backend, precision) -> why (a row says so instead of a figure)
CALIBRATION_IMAGES = 4
UNSUPPORTED = {("onnxruntime", "bf16"): "onnxruntime's CPU execution provider has no bf16 kernels for this model"}


def _row(backend: str, precision: str, layout: str, s: measure.Setup, timed: Optional[Mapping],
         baseline: Optional[Mapping], file_mb: Optional[float] = None, note: Optional[str] = None) -> Dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(backend=backend, precision=precision, layout=layout, batch=s.eval_batch, size=list(s.eval_hw),
               file_mb=file_mb, note=note)
    if timed:
        row.update(latency_ms=timed["latency_ms"], img_per_s=timed["images_per_s"],
                   ratio_vs_torch=baseline["latency_ms"] / timed["latency_ms"] if baseline else 1.0,
                   peak_mem_mb=timed["peak_memory_mib"] if s.device.type == "cuda" else None)
    return row


def backends_phase(model: nn.Module, s: measure.Setup, backends: Sequence[str],
                   precisions: Sequence[str]) -> List[Dict]:
    """Rows of the table for ``model`` (eval mode, at the evaluation stride): eager torch fp32 first (the
    baseline of every ratio), then bf16 autocast (with bf16 in ``precisions``), both again in channels_last
    (evaluate.py's default), and each runtime of ``backends`` at each precision.

    CPU peak memory is left null: the process's peak RSS cannot be reset between rows.
    """
    eager, bf16 = s._replace(amp_dtype=None), s._replace(amp_dtype=torch.bfloat16)
    contiguous = place(copy.deepcopy(model), s.device, channels_last=False)
    baseline = measure.time_inference(contiguous, eager, None)
    rows = [_row("torch", "fp32", "contiguous", s, baseline, None)]
    if "bf16" in precisions:  # what channels_last buys under bf16 autocast too (evaluate.py's channels_last=false)
        rows.append(_row("torch", "bf16", "contiguous", s, measure.time_inference(contiguous, bf16, None), baseline))
    del contiguous
    last = place(copy.deepcopy(model), s.device, channels_last=True)
    rows.append(_row("torch", "fp32", "channels_last", s, measure.time_inference(last, eager, None), baseline))
    if "bf16" in precisions:
        rows.append(_row("torch", "bf16", "channels_last", s, measure.time_inference(last, bf16, None), baseline))
    del last
    backends = [backend for backend in backends if backend != "torch"]
    if not backends:
        return rows
    with tempfile.TemporaryDirectory(prefix="seg-benchmark-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            export_model(model, path, "onnx", {"output_stride": getattr(model, "output_stride", None)})
        except UserError as error:
            return rows + [_row(b, p, "onnx", s, None, None, note=f"not exported: {error}")
                           for b in backends for p in precisions]
        metadata = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
        files = {"fp32": path, "bf16": path}
        if "int8" in precisions:  # calibrated on the timing's random images: the speed is the int8 file's, whatever
            files["int8"] = Path(folder) / "model.int8.onnx"  # the ranges (quantize.py calibrates on real images)
            images = measure.fake_batch(CALIBRATION_IMAGES, s.eval_hw, s)[0].permute(0, 2, 3, 1).cpu().numpy()
            quantize_onnx(path, files["int8"], iter(images))
        for backend in backends:
            for precision in precisions:
                size_mb = files[precision].stat().st_size / 2 ** 20
                layout = "onnx int8 (QDQ)" if precision == "int8" else "onnx"
                if (backend, precision) in UNSUPPORTED:
                    rows.append(_row(backend, precision, layout, s, None, None, size_mb,
                                     UNSUPPORTED[backend, precision]))
                    continue
                runner, _ = runtime_model(files[precision], backend, s.device, precision, metadata)
                rows.append(_row(backend, precision, layout, s, measure.time_inference(runner, eager, None), baseline,
                                 size_mb))
                del runner
    return rows


def format_rows(rows: Sequence[Mapping]) -> List[str]:
    """The table's lines: one per backend, precision and layout."""
    header = f"{'backend':<13}{'precision':<11}{'layout':<15}{'latency ms':>12}{'img/s':>10}{'x torch':>9}  note"
    lines = [f"inference backends (latency at batch 1, img/s at batch {rows[0]['batch']}, {rows[0]['size']}; "
             "x torch: eager torch fp32's latency / this one's)", header]
    for row in rows:
        figures = ("-", "-", "-") if row["latency_ms"] is None else (
            f"{row['latency_ms']:.1f}", f"{row['img_per_s']:.2f}", f"{row['ratio_vs_torch']:.2f}")
        lines.append(f"{row['backend']:<13}{row['precision']:<11}{row['layout']:<15}{figures[0]:>12}"
                     f"{figures[1]:>10}{figures[2]:>9}  {row['note'] or ''}")
    return lines
