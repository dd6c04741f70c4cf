"""Static int8 quantization of an exported model: ``python scripts/quantize.py ckpt=... calibration=val n=64
output=model.int8.onnx``.

ONNX Runtime's ``quantize_static`` writes a QDQ model (QuantizeLinear / DequantizeLinear pairs around the int8
convolutions): weights int8 per output channel, activations uint8 with ranges from MinMax calibration on ``n``
images of the dataset (a split of the checkpoint's dataset, or a folder of images). A QDQ file is the one int8
format both runtimes execute with int8 kernels: ONNX Runtime directly, OpenVINO by folding the pairs into its own
int8 operations, so one file serves ``backend=onnxruntime`` and ``backend=openvino`` (OpenVINO's NNCF would
write an OpenVINO-only IR). Before writing, the fp32 and the int8 model are evaluated on the validation split:
the log gives both mIoUs and the share of pixels on which their labels agree.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional

import numpy as np
import torch

from seg.config import ConfigError, dataset_kwargs, number, overwrite_flag, require, to_plain
from seg.data import build_dataset
from seg.data.base import read_image
from seg.deployment.runtimes import onnx_metadata, runtime_model
from seg.deployment.sources import RuntimeSource, cached_onnx, is_onnx
from seg.engine.checkpoint import checkpoint_in
from seg.engine.device import size_cpu_threads
from seg.engine.evaluation import check_classes, evaluate, evaluation_dataset
from seg.engine.inference import segment
from seg.engine.predict import IMAGE_SUFFIXES
from seg.errors import UserError
from seg.io import METADATA_FILE, replacing
from seg.outputs import check_outputs

log = logging.getLogger("seg.deployment")

CPU = torch.device("cpu")


def calibration_images(source: str, n: int, dataset_cfg: Mapping) -> Iterator[np.ndarray]:
    """``n`` images ``[H, W, channels]`` on the 0..255 scale (RGB uint8 for 3 channels; the checkpoint's
    ``dataset.channels`` otherwise): the first of a folder (sorted, searched recursively), or of the dataset split
    ``source`` (the checkpoint's dataset, ``dataset.root=`` where it lives now)."""
    folder = Path(source)
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"calibration={source} is a folder without images ({', '.join(IMAGE_SUFFIXES)})")
        channels = int((dataset_cfg or {}).get("channels") or 3)
        return (read_image(path, channels=channels) for path in files[:n])
    if not dataset_cfg or not dataset_cfg.get("name"):
        raise ConfigError(f"calibration={source} is no folder, and the model records no dataset to take the split "
                          "from: give a folder of images, or dataset=<name> dataset.root=...")
    dataset = build_dataset(**dataset_kwargs(dataset_cfg, split=source))
    return (dataset[i][0] for i in range(min(n, len(dataset))))


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader``: the images as the exported model takes them ([0, 1], NCHW)."""

    def __init__(self, images: Iterator[np.ndarray], input_name: str):
        self.images, self.input_name, self.count = images, input_name, 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        image = next(self.images, None)
        if image is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255}


def quantize_onnx(fp32: Path, output: Path, images: Iterator[np.ndarray]) -> int:
    """Write the QDQ int8 model of the ONNX file ``fp32`` to ``output`` (its metadata carried over, with the
    quantization settings added); returns the number of calibration images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    metadata = onnx_metadata(fp32)
    with tempfile.TemporaryDirectory(prefix="seg-quantize-") as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # folds constants, infers shapes
        reader = _Reader(images, onnx.load(str(prepared), load_external_data=False).graph.input[0].name)
        quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        if reader.count == 0:
            raise UserError("no calibration image was read: check calibration= and n=")
        proto = onnx.load(str(quantized))
        metadata["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                                    "weights": "int8 per channel", "activations": "uint8",
                                    "calibration": "MinMax", "images": reader.count}
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, {METADATA_FILE: json.dumps(metadata)})
        with replacing(output, hint="free some space and quantize again") as temporary:
            onnx.save(proto, str(temporary))
    return reader.count


class _Agreement:
    """A ``segment`` predictor for the int8 model that also runs the fp32 one and counts the pixels on which their
    labels agree."""

    def __init__(self, reference: torch.nn.Module):
        self.reference, self.same, self.total = reference, 0, 0

    def __call__(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        probabilities = segment(model, images)
        expected = segment(self.reference, images).argmax(1)
        self.same += int((probabilities.argmax(1) == expected).sum())
        self.total += expected.numel()
        return probabilities


class _First(torch.utils.data.Subset):
    """The first ``n`` samples of a dataset, with what ``evaluate`` reads of the dataset."""

    def __init__(self, dataset, n: int):
        super().__init__(dataset, range(min(n, len(dataset))))
        self.num_classes, self.class_names = dataset.num_classes, dataset.class_names
        self.ignore_index = dataset.ignore_index


def compare(fp32: Path, int8: Path, dataset, backend: str, limit: Optional[int]) -> Dict:
    """mIoU of both models on ``dataset`` (its first ``limit`` images) and their label agreement."""
    if limit is not None:
        dataset = _First(dataset, limit)
    models = {name: runtime_model(path, backend, CPU, "fp32", onnx_metadata(path))[0]
              for name, path in (("fp32", fp32), ("int8", int8))}
    before = evaluate(models["fp32"], dataset, CPU).metrics
    agreement = _Agreement(models["fp32"])
    after = evaluate(models["int8"], dataset, CPU, predictor=agreement).metrics
    return {"mIoU_fp32": before["mIoU"], "mIoU_int8": after["mIoU"], "label_agreement": agreement.same /
            max(agreement.total, 1), "num_images": after["num_images"], "backend": backend}


def quantize_checkpoint(config: Mapping) -> Dict:
    """quantize.py: ``ckpt`` (a checkpoint, run folder or fp32 ONNX file) to the int8 ONNX file ``output``."""
    cfg = to_plain(config)
    require(cfg, "ckpt", "python scripts/quantize.py ckpt=outputs/<run>/checkpoints/best.pt output=model.int8.onnx")
    require(cfg, "output", "python scripts/quantize.py ckpt=PATH calibration=val n=64 output=model.int8.onnx")
    number(cfg["n"], "n", integer=True)
    if cfg["eval_n"] is not None:
        number(cfg["eval_n"], "eval_n", integer=True)
    if cfg["backend"] not in ("onnxruntime", "openvino"):
        raise ConfigError(f"backend must be one of onnxruntime, openvino, got {cfg['backend']!r}")
    size_cpu_threads(0)
    ckpt = Path(cfg["ckpt"]) if is_onnx(cfg["ckpt"]) else checkpoint_in(cfg["ckpt"])
    source = RuntimeSource("onnxruntime")
    state = source.state(ckpt)
    fp32 = ckpt if is_onnx(ckpt) else cached_onnx(ckpt, state["config"]["os"])
    output = Path(cfg["output"])
    calibration = cfg["calibration"] if Path(str(cfg["calibration"])).is_dir() else None
    check_outputs([output], {"ckpt": ckpt, "ckpt (its ONNX export)": fp32, "calibration": calibration},
                  "exported model", overwrite_flag(cfg))  # before the export: a refusal costs nothing
    if not is_onnx(ckpt):
        fp32 = source.export(state, ckpt, None)[0]
    trained = state["config"].get("dataset") or {}
    override = {k: v for k, v in cfg["dataset"].items() if v is not None}
    dataset_cfg = {**trained, **override}
    count = quantize_onnx(fp32, output, calibration_images(str(cfg["calibration"]), cfg["n"], dataset_cfg))
    size = {name: path.stat().st_size / 2 ** 20 for name, path in (("fp32", fp32), ("int8", output))}
    log.info("wrote %s: int8 (QDQ), calibrated on %d images of %s; %.1f MB (fp32: %.1f MB)", output, count,
             cfg["calibration"], size["int8"], size["fp32"])
    result = {"output": str(output), "calibration_images": count, "file_mb": size}
    if cfg["evaluate"]:
        if not dataset_cfg.get("name"):
            raise ConfigError(f"{ckpt} records no dataset to evaluate on: dataset=<name> dataset.root=..., or "
                              "evaluate=false")
        dataset_cfg, split = evaluation_dataset(dataset_cfg, {})
        dataset = build_dataset(**dataset_kwargs(dataset_cfg, split=split))
        check_classes(state, dataset.class_names, f"dataset {dataset_cfg['name']} split {split!r}")
        result["comparison"] = compare(fp32, output, dataset, cfg["backend"], cfg["eval_n"])
        c = result["comparison"]
        log.info("on %s (%d images, %s): mIoU fp32 %.2f, int8 %.2f (%+.2f points); labels agree on %.2f%% of pixels",
                 split, c["num_images"], cfg["backend"], 100 * c["mIoU_fp32"], 100 * c["mIoU_int8"],
                 100 * (c["mIoU_int8"] - c["mIoU_fp32"]), 100 * c["label_agreement"])
    return result

