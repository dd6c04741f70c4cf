"""backend=onnxruntime | openvino in evaluate.py and predict.py: the same outputs as eager torch, from a checkpoint
(exported on the fly and cached) or from export.py's ONNX file; one line for what cannot run."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, compose_config, needed, run_script
from PIL import Image
from test_predict import decisive_checkpoint

from seg import export as export_module
from seg.deployment import model_source
from seg.deployment.runtimes import fp16_onnx
from seg.engine.evaluation import evaluate_checkpoint
from seg.engine.predict import predict
from seg.errors import UserError
from seg.export import export_checkpoint

NEWER = export_module.DYNAMIC_EXPORT_TORCH
pytestmark = pytest.mark.skipif(torch.__version__ < NEWER, reason=f"ONNX export keeps H, W free from torch {NEWER} on")
# probabilities stored as float16 by probs_npy; fp32 runtimes agree with torch far closer than that
FP32_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    needed("onnxruntime")
    return decisive_checkpoint(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, size in (("a", (70, 90)), ("b", (64, 64))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def probabilities(ckpt, images, output, *overrides):
    cfg = compose_config("predict", [f"ckpt={ckpt}", f"input={images}", f"output={output}", "device=cpu",
                                     "probs=true", "probs_npy=true", *overrides])
    predict(cfg, source=model_source(cfg))
    return {path.stem: np.load(path).astype(np.float32) for path in sorted((output / "probs").glob("*.npy"))}


@pytest.fixture(scope="module")
def eager(ckpt, images, tmp_path_factory):
    return probabilities(ckpt, images, tmp_path_factory.mktemp("eager"), "tta.flip=true")


def assert_close(ours, theirs, tolerance):
    assert ours.keys() == theirs.keys() and len(ours) == 2
    for name in ours:
        assert ours[name].shape == theirs[name].shape
        assert np.abs(ours[name] - theirs[name]).max() <= tolerance, name


def test_onnxruntime_from_a_checkpoint_is_exported_once_and_matches_torch(ckpt, images, eager, tmp_path, caplog):
    with caplog.at_level("INFO", logger="seg.deployment"):
        assert_close(probabilities(ckpt, images, tmp_path / "a", "backend=onnxruntime", "tta.flip=true"), eager,
                     FP32_TOLERANCE)
    cached = ckpt.with_name("ckpt.os16.onnx")
    assert cached.is_file() and f"exporting {ckpt} to {cached}" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="seg.deployment"):
        probabilities(ckpt, images, tmp_path / "b", "backend=onnxruntime")
    assert f"using {cached}, the ONNX export of {ckpt}" in caplog.text and "exporting" not in caplog.text
    ckpt.touch()  # a resumed run rewrites last.pt: its export is made again
    caplog.clear()
    with caplog.at_level("INFO", logger="seg.deployment"):
        probabilities(ckpt, images, tmp_path / "c", "backend=onnxruntime")
    assert "exporting" in caplog.text


def test_openvino_runs_export_py_files_in_fp32_and_bf16(ckpt, images, eager, tmp_path):
    needed("openvino")
    onnx_file = tmp_path / "model.onnx"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={onnx_file}", "format=onnx"]))
    fp32 = probabilities(onnx_file, images, tmp_path / "fp32", "backend=openvino", "tta.flip=true")
    assert_close(fp32, eager, FP32_TOLERANCE)
    bf16 = probabilities(onnx_file, images, tmp_path / "bf16", "backend=openvino", "precision=bf16",
                         "tta.flip=true")
    assert_close(bf16, eager, 0.1)  # bf16 keeps 8 bits of mantissa


def test_openvino_runs_an_ir_converted_by_openvino(ckpt, images, eager, tmp_path):
    """ckpt=model.xml (+ model.bin), as OpenVINO's converter writes it from export.py's ONNX file: the class names
    and normalisation come through in the IR's runtime info, the outputs are eager torch's."""
    ov = needed("openvino")
    onnx_file, xml = tmp_path / "model.onnx", tmp_path / "ir" / "model.xml"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={onnx_file}", "format=onnx"]))
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)  # what `ovc` does
    assert_close(probabilities(xml, images, tmp_path / "fp32", "backend=openvino", "tta.flip=true"), eager,
                 FP32_TOLERANCE)
    refusals = {"backend=onnxruntime": f"{xml} is an OpenVINO model, which onnxruntime cannot read: backend=openvino",
                "backend=torch": f"{xml} is an OpenVINO model: run it with backend=openvino"}
    for options, message in refusals.items():
        with pytest.raises(UserError, match=re.escape(message)):
            probabilities(xml, images, tmp_path / "x", options)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(UserError, match=re.escape(f"whose weights file {xml.with_suffix('.bin')} is missing")):
        probabilities(xml, images, tmp_path / "x", "backend=openvino")
    assert not (tmp_path / "x").exists()


def test_missing_corrupt_and_foreign_exported_files_are_one_line_refusals(images, tmp_path):
    """Files a user may hand over by mistake: absent, not ONNX, an IR OpenVINO cannot parse, an ONNX model that
    export.py did not write; each is one line naming the file, and nothing is written."""
    needed("onnxruntime")
    needed("openvino")
    onnx = needed("onnx")
    junk, foreign, xml = tmp_path / "junk.onnx", tmp_path / "foreign.onnx", tmp_path / "broken.xml"
    junk.write_bytes(b"\x08\x07junk")
    xml.write_text("<net name='x'"), xml.with_suffix(".bin").write_bytes(b"")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    refusals = {(tmp_path / "absent.onnx", "onnxruntime"): f"model not found: {tmp_path / 'absent.onnx'}",
                (tmp_path / "absent.xml", "openvino"): f"model not found: {tmp_path / 'absent.xml'}",
                (junk, "onnxruntime"): f"{junk} is not an ONNX file (",
                (xml, "openvino"): f"{xml} is not an OpenVINO model OpenVINO can read (",
                (foreign, "openvino"): f"{foreign} is an ONNX file that scripts/export.py did not write (no class"}
    for (path, backend), message in refusals.items():
        with pytest.raises(UserError, match=re.escape(message)):
            probabilities(path, images, tmp_path / "out", f"backend={backend}")
    assert not (tmp_path / "out").exists()


def test_evaluate_with_a_runtime_gives_torchs_metrics(ckpt, data_root, tmp_path):
    overrides = [f"ckpt={ckpt}", "device=cpu", f"dataset.root={data_root}", "num_workers=0",
                 "inference.mode=slide", "inference.window=[48,48]"]
    torch_metrics = evaluate_checkpoint(compose_config("evaluate", overrides), tmp_path / "torch")
    cfg = compose_config("evaluate", overrides + ["backend=onnxruntime"])
    runtime_metrics = evaluate_checkpoint(cfg, tmp_path / "ort", source=model_source(cfg))
    assert runtime_metrics["num_images"] == torch_metrics["num_images"] > 0
    assert runtime_metrics["mIoU"] == pytest.approx(torch_metrics["mIoU"], abs=1e-3)


def test_predict_script_takes_an_onnx_file_and_says_what_cannot_run(ckpt, images, tmp_path):
    onnx_file = tmp_path / "model.onnx"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={onnx_file}", "format=onnx"]))
    run_script("predict.py", [f"ckpt={onnx_file}", f"input={images}", f"output={tmp_path / 'out'}",
                              "backend=onnxruntime", "device=cpu"])
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["a.png", "b.png"]
    result = run_script("predict.py", [f"ckpt={onnx_file}", f"input={images}", f"output={tmp_path / 'x'}",
                                       "device=cpu"], check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and lines == [
        f"error: {onnx_file} is an ONNX file: run it with backend=onnxruntime or backend=openvino (evaluate.py and "
        "predict.py)"], result.stderr
    refusals = {
        "backend=tensorrt": "backend must be one of ['torch', 'onnxruntime', 'openvino']",
        "backend=onnxruntime precision=bf16": "backend=onnxruntime has no bf16 on the CPU here",
        "backend=openvino precision=int8": f"precision=int8 runs an int8 model, and {onnx_file} is fp32",
        "backend=torch precision=int8": "precision=int8 runs the int8 ONNX file of scripts/quantize.py",
        "backend=openvino os=8": "os=8 cannot change an exported model's output stride (it is 16)",
    }
    for options, message in refusals.items():
        cfg = compose_config("predict", [f"ckpt={onnx_file}", f"input={images}", f"output={tmp_path / 'x'}",
                                         "device=cpu", *options.split()])
        with pytest.raises(UserError, match=re.escape(message)):
            predict(cfg, source=model_source(cfg))
    assert not (tmp_path / "x").exists()


def test_fp16_without_a_gpu_device_names_what_is_missing(ckpt, images, tmp_path):
    """precision=fp16 runs on onnxruntime's CUDA execution provider or OpenVINO's GPU device: on a machine without
    them (CI's), one line naming the missing one."""
    ort, ov = needed("onnxruntime"), needed("openvino")
    refusals = {"backend=torch": "amp=fp16 needs a CUDA device"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        refusals["backend=onnxruntime"] = ("precision=fp16 with backend=onnxruntime runs on its CUDA execution "
                                           "provider, which this onnxruntime lacks (it has ")
    if not any(name.startswith("GPU") for name in ov.Core().available_devices):
        refusals["backend=openvino"] = "precision=fp16 with backend=openvino runs on an OpenVINO GPU device"
    for options, message in refusals.items():
        with pytest.raises(UserError, match=re.escape(message)) as error:
            probabilities(ckpt, images, tmp_path / options[8:], options, "precision=fp16")
        assert "\n" not in str(error.value)


def test_the_fp16_graph_agrees_with_fp32(ckpt, tmp_path):
    """The graph precision=fp16 hands to onnxruntime's CUDA execution provider (fp16 weights and arithmetic,
    float32 input and output), run here by its CPU provider: fp32's logits to fp16's rounding, the same labels.
    The CUDA provider itself needs a GPU, which CI does not have."""
    ort, onnx = needed("onnxruntime"), needed("onnx")
    onnx_file = tmp_path / "model.onnx"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={onnx_file}", "format=onnx"]))
    half = fp16_onnx(onnx_file)
    graph = onnx.load_from_string(half).graph
    convolutions = [tensor for tensor in graph.initializer if len(tensor.dims) == 4]
    assert convolutions and all(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in convolutions)
    assert {value.type.tensor_type.elem_type for value in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
    images = np.random.default_rng(0).random((2, 3, 70, 90), dtype=np.float32)

    def logits(model):
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]

    fp32, fp16 = logits(str(onnx_file)), logits(half)
    assert fp16.dtype == np.float32 and fp16.shape == fp32.shape
    assert 0 < np.abs(fp16 - fp32).max() <= 1e-2 * np.abs(fp32).max()  # not fp32 itself, and within fp16's rounding
    assert (fp16.argmax(1) == fp32.argmax(1)).mean() >= 0.99


def test_a_missing_runtime_names_its_extra(ckpt, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(UserError, match=r'backend=openvino needs the openvino extra .*pip install -e "\.\[openvino\]"'):
        probabilities(ckpt, images, tmp_path, "backend=openvino")


def test_the_docs_serving_examples_run_without_seg(ckpt, tmp_path):
    """docs/deployment.md's ONNX Runtime and OpenVINO blocks, as written, on export.py's file, where `import seg`
    fails; their logits equal the checkpoint's (through the backends tested above)."""
    needed("openvino")
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={tmp_path / 'model.onnx'}", "format=onnx"]))
    text = (REPO / "docs" / "deployment.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "model.onnx" in b]
    assert len(blocks) == 2 and "onnxruntime" in blocks[0] and "openvino" in blocks[1]
    for block in blocks:
        check = "\nimport numpy\nnumpy.save('labels.npy', labels)\nassert len(meta['class_names']) == logits.shape[1]\n"
        program = "import sys\nsys.modules['seg'] = None\n" + block + check
        subprocess.run([sys.executable, "-c", program], cwd=tmp_path, check=True, timeout=300)
        labels = np.load(tmp_path / "labels.npy")
        assert labels.shape == (1, 512, 683) and len(np.unique(labels)) > 1
