"""scripts/quantize.py: a static int8 QDQ ONNX file that ONNX Runtime and OpenVINO run, calibrated on a split or a
folder, with its labels checked against the fp32 model's (the issue's criterion: >= 98% of the pixels agree)."""

import json
import re

import numpy as np
import onnx
import pytest
import torch
from helpers import compose_config, needed, run_script, tiny_checkpoint
from PIL import Image
from test_predict import decisive_checkpoint

from seg import export as export_module
from seg.deployment import model_source
from seg.deployment.quantize import quantize_checkpoint
from seg.engine.predict import predict
from seg.errors import UserError
from seg.io import METADATA_FILE

NEWER = export_module.DYNAMIC_EXPORT_TORCH
pytestmark = pytest.mark.skipif(torch.__version__ < NEWER, reason=f"ONNX export keeps H, W free from torch {NEWER} on")
AGREEMENT = 0.98


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    needed("onnxruntime")
    folder = tmp_path_factory.mktemp("quantize")
    ckpt = decisive_checkpoint(folder)
    output = folder / "model.int8.onnx"
    result = run_script("quantize.py", [f"ckpt={ckpt}", f"output={output}", "calibration=val", "n=2",
                                        f"dataset.root={folder / 'data'}", f"hydra.run.dir={folder / 'run'}"])
    return ckpt, output, result.stdout + result.stderr


def test_int8_file_is_qdq_with_the_metadata_and_agrees_with_fp32(quantized):
    ckpt, output, log = quantized
    proto = onnx.load(str(output))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20  # every convolution's weights (ResNet-18 + ASPP)
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_FILE])
    fp32 = json.loads({p.key: p.value for p in onnx.load(str(ckpt.with_name("ckpt.os16.onnx")))
                       .metadata_props}[METADATA_FILE])
    assert metadata["class_names"] == fp32["class_names"] and metadata["palette"] == fp32["palette"]
    assert metadata["quantization"]["images"] == 2 and metadata["quantization"]["format"] == "QDQ"
    assert output.stat().st_size < 0.3 * ckpt.with_name("ckpt.os16.onnx").stat().st_size  # int8: about a quarter
    found = re.search(r"mIoU fp32 ([\d.]+), int8 ([\d.]+) \(([-+\d.]+) points\); labels agree on ([\d.]+)% of pixels",
                      log)
    assert found, log
    assert float(found.group(4)) >= 100 * AGREEMENT


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_both_runtimes_run_the_int8_file(quantized, backend, tmp_path):
    needed(backend)
    ckpt, output, _ = quantized
    images = next((ckpt.parent / "data").glob("synthetic-*")) / "JPEGImages"  # the validation images, and train's
    labels = {}
    for name, model, chosen in (("fp32", ckpt, "torch"), ("int8", output, backend)):
        cfg = compose_config("predict", [f"ckpt={model}", f"input={images}", f"output={tmp_path / name}",
                                         "device=cpu", f"backend={chosen}", f"precision={name}"])
        predict(cfg, source=model_source(cfg))
        labels[name] = np.stack([np.array(Image.open(p)) for p in sorted((tmp_path / name / "labels").glob("*.png"))])
    assert len(labels["int8"]) == 11 and (labels["int8"] == labels["fp32"]).mean() >= AGREEMENT


def test_grayscale_model_calibrates_on_grayscale_images(data_root, tmp_path):
    """dataset.channels=1: the calibration folder is read with the model's channels (an RGB read would give the
    exported model 3 channels where it takes 1)."""
    needed("onnxruntime")
    ckpt = tiny_checkpoint(tmp_path / "gray.pt", data_root, **{"dataset.channels": 1})
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 56), 90 * i, np.uint8)).save(folder / f"{i}.png")
    result = quantize_checkpoint(compose_config("quantize", [f"ckpt={ckpt}", f"output={tmp_path / 'q.onnx'}",
                                                             f"calibration={folder}", "evaluate=false"]))
    assert result["calibration_images"] == 2
    (images,) = onnx.load(str(tmp_path / "q.onnx")).graph.input
    assert images.type.tensor_type.shape.dim[1].dim_value == 1


def test_calibration_from_a_folder_and_one_line_refusals(quantized, tmp_path):
    ckpt, output, _ = quantized
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 56, 3), 60 * i, np.uint8)).save(folder / "sub" / f"{i}.jpg")
    cfg = compose_config("quantize", [f"ckpt={ckpt}", f"output={tmp_path / 'q.onnx'}", f"calibration={folder}",
                                      "n=5", "evaluate=false"])
    result = quantize_checkpoint(cfg)
    assert result["calibration_images"] == 3 and "comparison" not in result
    with pytest.raises(UserError, match=re.escape(f"{output} is ckpt={output}, an input of this command")):
        quantize_checkpoint(compose_config("quantize", [f"ckpt={output}", f"output={output}"]))
    with pytest.raises(UserError, match=r"calibration=val is no folder, and the model records no dataset"):
        quantize_checkpoint(compose_config("quantize", [f"ckpt={output}", f"output={tmp_path / 'x.onnx'}"]))
    with pytest.raises(UserError, match=r"calibration=.*empty is a folder without images"):
        (tmp_path / "empty").mkdir()
        quantize_checkpoint(compose_config("quantize", [f"ckpt={ckpt}", f"output={tmp_path / 'y.onnx'}",
                                                        f"calibration={tmp_path / 'empty'}"]))
