"""The benchmark's deployment table: the same model and ``segment`` call in eager torch (fp32 and bf16 autocast,
contiguous and channels_last) and in the runtimes (``backends=[onnxruntime,openvino]`` x
``precisions=[fp32,bf16,int8]``), each timed as ``measure.time_inference`` times eager inference at each size of
``sizes``, with its speed as a ratio against eager torch fp32 measured in the same run, the memory it adds and, for
a checkpoint, its mIoU on the validation split.

CPU memory: before each row the process's peak RSS is reset (``RssPeak``); the row's figure is the peak while it
builds its model (the copy of the weights, or the runtime's session and compiled model) and runs, minus the RSS
before it.
"""

from __future__ import annotations

import copy
import gc
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from seg.benchmark import measure
from seg.deployment.quantize import quantize_onnx
from seg.deployment.runtimes import BackendError, runtime_model
from seg.deployment.sources import RuntimeSource
from seg.engine.device import place
from seg.errors import UserError
from seg.export import export_model

ROW_KEYS = ("backend", "precision", "layout", "batch", "size", "latency_ms", "img_per_s", "ratio_vs_torch",
            "peak_mem_mb", "file_mb", "miou", "note")
CALIBRATION_IMAGES = 4
# What a runtime cannot run here: (backend, precision) -> why (a row says so instead of a figure)
BASELINE = ("torch", "fp32", "contiguous")  # the row every ratio is against (absent for an exported file)
UNSUPPORTED = {("onnxruntime", "bf16"): "onnxruntime's CPU execution provider has no bf16 kernels for this model"}
# mIoU of a model run as the row runs it (eval mode, normalised input -> {"out": logits}) under an autocast dtype
Evaluation = Callable[[nn.Module, Optional[torch.dtype]], float]


class RssPeak:
    """The peak resident set size above the one at entry (MiB): ``with RssPeak() as peak: ...; peak.mib``.

    Linux keeps the process's high-water mark (``VmHWM`` in ``/proc/self/status``) and resets it to the current
    RSS when ``5`` is written to ``/proc/self/clear_refs`` (Linux >= 4.0), so the figure is exact, however short
    the peak. Where that file cannot be written (another OS, a locked-down /proc) ``mib`` stays None.
    """

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise OSError(f"/proc/self/status has no {field}")

    def __enter__(self) -> "RssPeak":
        gc.collect()
        self.mib = None
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.base_kib = self._status_kib("VmRSS")
        except OSError:
            self.base_kib = None
        return self

    def __exit__(self, *exc) -> None:
        if self.base_kib is not None:
            self.mib = (self._status_kib("VmHWM") - self.base_kib) / 1024


class Variant(NamedTuple):
    """One row of the table at every size: how to build what runs, and under which autocast."""
    backend: str
    precision: str
    layout: str
    build: Optional[Callable[[], nn.Module]]  # None: cannot run here (``note`` says why)
    amp_dtype: Optional[torch.dtype] = None
    file_mb: Optional[float] = None
    note: Optional[str] = None


def _row(v: Variant, s: measure.Setup, timed: Optional[Mapping], baseline: Optional[Mapping],
         peak_mb: Optional[float], miou: Optional[float]) -> Dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(backend=v.backend, precision=v.precision, layout=v.layout, batch=s.eval_batch, size=list(s.eval_hw),
               file_mb=v.file_mb, note=v.note, miou=miou)
    if timed:
        row.update(latency_ms=timed["latency_ms"], img_per_s=timed["images_per_s"],
                   ratio_vs_torch=baseline and baseline["latency_ms"] / timed["latency_ms"],
                   peak_mem_mb=timed["peak_memory_mib"] if s.device.type == "cuda" else peak_mb)
    return row


def _measure(v: Variant, s: measure.Setup) -> Tuple[Dict, Optional[float]]:
    """The row's timings at ``s`` and the memory its model and runs add (CPU: ``RssPeak``)."""
    with RssPeak() as peak:
        runner = v.build()
        timed = measure.time_inference(runner, s._replace(amp_dtype=v.amp_dtype), None)
        del runner
    return timed, peak.mib


def torch_variants(model: nn.Module, device: torch.device, precisions: Sequence[str]) -> List[Variant]:
    """Eager torch fp32 contiguous first (the baseline of every ratio), bf16 autocast with bf16 in ``precisions``;
    both again in channels_last (evaluate.py's default)."""
    def build(channels_last: bool) -> Callable[[], nn.Module]:
        return lambda: place(copy.deepcopy(model), device, channels_last=channels_last)

    dtypes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if "bf16" in precisions else [])
    return [Variant("torch", precision, layout, build(layout == "channels_last"), dtype)
            for layout in ("contiguous", "channels_last") for precision, dtype in dtypes]


def runtime_variants(model: nn.Module, s: measure.Setup, folder: Path, backends: Sequence[str],
                     precisions: Sequence[str], calibration: Optional[Iterable[np.ndarray]]) -> List[Variant]:
    """``model`` exported to ONNX in ``folder`` (int8: quantized, calibrated on ``calibration`` images, else on the
    timing's random images: the speed is the int8 file's whatever the ranges), for each runtime and precision."""
    path = folder / "model.onnx"
    try:
        export_model(model, path, "onnx", {"output_stride": getattr(model, "output_stride", None)}, stats=s.stats)
    except UserError as error:
        return [Variant(b, p, "onnx", None, note=f"not exported: {error}") for b in backends for p in precisions]
    metadata = s.stats.as_dict()
    files = {"fp32": path, "bf16": path, "fp16": path}
    if "int8" in precisions:
        files["int8"] = folder / "model.int8.onnx"
        if calibration is None:
            calibration = measure.fake_batch(CALIBRATION_IMAGES, s.eval_hw, s)[0].permute(0, 2, 3, 1).cpu().numpy()
        quantize_onnx(path, files["int8"], iter(calibration))

    def build(file: Path, backend: str, precision: str) -> Callable[[], nn.Module]:
        return lambda: runtime_model(file, backend, s.device, precision, metadata)[0]

    variants = []
    for backend in backends:
        for precision in precisions:
            file, layout = files[precision], "onnx int8 (QDQ)" if precision == "int8" else "onnx"
            note = UNSUPPORTED.get((backend, precision))
            variants.append(Variant(backend, precision, layout, None if note else build(file, backend, precision),
                                    file_mb=file.stat().st_size / 2 ** 20, note=note))
    return variants


def exported_variants(path: Path, backends: Sequence[str], precisions: Sequence[str],
                      device: torch.device) -> List[Variant]:
    """The exported file ``path`` (``.onnx``, or an OpenVINO ``.xml``) in each runtime at each precision, read and
    run as evaluate.py runs it (``seg.deployment.sources.RuntimeSource``): no eager torch row, so no ratio. What a
    runtime cannot do with the file (an IR in onnxruntime, int8 of an fp32 file) is a row whose note says why."""
    files = [path] + ([path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [])
    file_mb = sum(file.stat().st_size for file in files if file.is_file()) / 2 ** 20
    variants = []
    for backend in (backend for backend in backends if backend != "torch"):
        try:
            state = RuntimeSource(backend).state(path)  # the file's metadata: the same at every precision
        except UserError as error:
            variants += [Variant(backend, p, "exported", None, file_mb=file_mb, note=str(error)) for p in precisions]
            continue
        layout = "onnx int8 (QDQ)" if "quantization" in state["export_metadata"] else \
            "openvino ir" if files[1:] else "onnx"
        for precision in precisions:
            source, note = RuntimeSource(backend, precision), UNSUPPORTED.get((backend, precision))

            def build(source=source, state=state) -> nn.Module:
                return source.model(state, path, None, device)

            variants.append(Variant(backend, precision, layout, None if note else build, file_mb=file_mb, note=note))
    return variants


def backends_phase(model: nn.Module, s: measure.Setup, backends: Sequence[str], precisions: Sequence[str],
                   sizes: Optional[Sequence[Tuple[int, int]]] = None, evaluation: Optional[Evaluation] = None,
                   calibration: Optional[Iterable[np.ndarray]] = None) -> List[Dict]:
    """Rows of the table for ``model`` (eval mode, at the evaluation stride): its variants (``torch_variants``,
    then ``runtime_variants``) timed and scored by ``time_variants``."""
    backends = [backend for backend in backends if backend != "torch"]
    with tempfile.TemporaryDirectory(prefix="seg-benchmark-") as folder:
        variants = torch_variants(model, s.device, precisions)
        if backends:
            variants += runtime_variants(model, s, Path(folder), backends, precisions, calibration)
        return time_variants(variants, s, sizes, evaluation)


def time_variants(variants: Sequence[Variant], s: measure.Setup, sizes: Optional[Sequence[Tuple[int, int]]] = None,
                  evaluation: Optional[Evaluation] = None) -> List[Dict]:
    """A row per variant at each size of ``sizes`` (default: ``s.eval_hw``), each size's eager torch fp32
    contiguous row (when there is one) the baseline of its ratios; with ``evaluation``, each variant's mIoU (once:
    it does not depend on the timing's size)."""
    rows, mious = [], [_miou(v, evaluation) for v in variants]
    for size in sizes or [s.eval_hw]:
        sized, baseline = s._replace(eval_hw=tuple(size)), None
        for v, miou in zip(variants, mious):
            if v.build is None:
                rows.append(_row(v, sized, None, None, None, miou))
                continue
            try:
                timed, peak = _measure(v, sized)
            except (BackendError, UserError) as error:  # e.g. fp16 without a GPU execution provider: the row says
                rows.append(_row(v._replace(note=str(error)), sized, None, None, None, miou))
                continue
            if (v.backend, v.precision, v.layout) == BASELINE:
                baseline = timed
            rows.append(_row(v, sized, timed, baseline, peak, miou))
    return rows


def _miou(v: Variant, evaluation: Optional[Evaluation]) -> Optional[float]:
    if evaluation is None or v.build is None:
        return None
    try:
        runner = v.build()
    except (BackendError, UserError):  # the timing's row gives the reason
        return None
    try:
        return evaluation(runner, v.amp_dtype)
    finally:
        del runner


def format_rows(rows: Sequence[Mapping]) -> List[str]:
    """The table's lines: one per size, backend, precision and layout."""
    header = (f"{'size':<11}{'backend':<13}{'precision':<11}{'layout':<17}{'latency ms':>12}{'img/s':>10}"
              f"{'x torch':>9}{'mem MB':>9}{'mIoU':>8}  note")
    lines = [f"inference backends (latency at batch 1, img/s at batch {rows[0]['batch']}; x torch: eager torch fp32's "
             "latency / this one's; mem: the memory the row adds, its model included)", header]
    for row in rows:
        figures = ("-", "-", "-") if row["latency_ms"] is None else (
            f"{row['latency_ms']:.1f}", f"{row['img_per_s']:.2f}",
            "-" if row["ratio_vs_torch"] is None else f"{row['ratio_vs_torch']:.2f}")
        memory = "-" if row["peak_mem_mb"] is None else f"{row['peak_mem_mb']:.0f}"
        miou = "-" if row["miou"] is None else f"{100 * row['miou']:.2f}"
        size = "x".join(str(side) for side in row["size"])
        lines.append(f"{size:<11}{row['backend']:<13}{row['precision']:<11}{row['layout']:<17}{figures[0]:>12}"
                     f"{figures[1]:>10}{figures[2]:>9}{memory:>9}{miou:>8}  {row['note'] or ''}")
    return lines
