import errno
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import compose_config, needed, run_script, tiny_checkpoint

import seg
from seg import export as export_module
from seg.engine.checkpoint import restore
from seg.export import ExportedModel, ExportError, export_checkpoint, export_model, load_torchscript
from seg.io import DiskFullError
from seg.models import build_model

SIZES = [[64, 64], [48, 80], [65, 97]]  # square, non-square, odd
OTHER_SIZES = [(1, 72, 72), (2, 40, 88), (1, 57, 83)]  # sizes the export's own check did not use
PALETTE = [[i, 255 - i, i // 2] for i in range(256)]
METADATA = {"class_names": ["a", "b", "c"], "palette": PALETTE}
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def eager(model, images):
    """The model on [0, 1] RGB, normalised here by hand (ImageNet mean / std), as a deployed caller would."""
    with torch.inference_mode():
        return model((images - MEAN) / STD)["out"]


def assert_parity(run, model):
    """``run(images) -> logits`` agrees with the eager model at atol = rtol = 1e-4 on sizes of its own."""
    for batch, height, width in OTHER_SIZES:
        images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        expected = eager(model, images)
        actual = torch.as_tensor(run(images))
        assert actual.shape == (batch, 3, height, width)
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def assert_metadata(metadata):
    assert metadata["class_names"] == ["a", "b", "c"] and metadata["palette"] == PALETTE
    assert metadata["input"] == "float32 RGB [N, 3, H, W] in [0, 1]"
    assert metadata["mean"] == [0.485, 0.456, 0.406] and metadata["std"] == [0.229, 0.224, 0.225]
    assert metadata["seg_version"] == seg.__version__


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", 3, aux_loss=True).eval()


@pytest.fixture(scope="module")
def torchscript_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.ts"
    report = export_model(model, path, "torchscript", METADATA, check_sizes=SIZES)
    return path, report


def test_torchscript_matches_the_model_and_carries_metadata(model, torchscript_file):
    path, report = torchscript_file
    assert [r["input"] for r in report["parity"]] == [[1, 3, 64, 64], [2, 3, 48, 80], [1, 3, 65, 97]]
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    loaded, metadata = load_torchscript(path)
    assert_metadata(metadata)
    assert isinstance(loaded(torch.rand(1, 3, 57, 83)), torch.Tensor)
    assert_parity(loaded, model)
    assert not list(path.parent.glob(".*tmp*"))


def test_torchscript_runs_where_seg_cannot_be_imported(torchscript_file, tmp_path):
    path, _ = torchscript_file
    site_packages = Path(torch.__file__).resolve().parents[1]
    # -I: no PYTHONPATH, no script or cwd folder; -S: no .pth files, so seg's editable install is not on the path.
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.append({str(site_packages)!r})
        try:
            import seg
        except ImportError:
            pass
        else:
            raise SystemExit("seg is importable: " + seg.__file__)
        import torch
        extra = {{"metadata.json": ""}}
        model = torch.jit.load({str(path)!r}, _extra_files=extra)
        shapes = [list(model(torch.rand(n, 3, h, w)).shape) for n, h, w in [(1, 65, 97), (2, 40, 40)]]
        print(json.dumps({{"shapes": shapes, "classes": json.loads(extra["metadata.json"])["class_names"]}}))
    """)
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output == {"shapes": [[1, 3, 65, 97], [2, 3, 40, 40]], "classes": ["a", "b", "c"]}


def test_a_mismatch_fails_loudly_and_writes_nothing(model, tmp_path, monkeypatch):
    real = export_module.LOADERS["torchscript"]

    def drifting(path):
        module, metadata = real(path)
        return (lambda images: module(images) + 1e-2), metadata

    monkeypatch.setitem(export_module.LOADERS, "torchscript", drifting)
    with pytest.raises(ExportError, match=r"differs from the model .* exceeds atol 0\.0001"):
        export_model(model, tmp_path / "model.ts", check_sizes=[[64, 64]])
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(model, tmp_path, monkeypatch):
    """The file's bytes are written by Python (torch's own writer aborts the process on a full disk)."""
    path = tmp_path / "model.ts"
    path.write_bytes(b"the previous export")
    real = Path.write_bytes

    def full(self, data):
        real(self, bytes(data)[:4096])  # the disk fills part way through the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DiskFullError) as raised:
        export_model(model, path, check_sizes=[[64, 64]])
    assert str(raised.value) == (f"disk full: could not write {path}; the previous model.ts there is intact (free "
                                 "some space and export again)")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["model.ts"] and path.read_bytes() == b"the previous export"


@pytest.mark.parametrize("model", [{}, {"backbone": "mobilenet_v3_large", "model.head": "lraspp"}],
                         ids=["resnet18", "mobilenet_v3_large-lraspp"])
def test_export_script_at_another_output_stride(model, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data", **model)
    output = tmp_path / "os8.ts"
    run_script("export.py", [f"ckpt={ckpt}", f"output={output}", "os=8", "check.sizes=[[64,64],[48,80]]",
                             f"hydra.run.dir={tmp_path / 'run'}"])
    loaded, metadata = load_torchscript(output)
    assert metadata["output_stride"] == 8 and metadata["num_classes"] == 6 and len(metadata["palette"]) == 256
    assert metadata["crop_size"] == [64, 64]
    model, _ = restore(ckpt, output_stride=8)
    images = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.allclose(loaded(images), ExportedModel(model)(images), atol=1e-4)


OLD_TORCH = torch.__version__ < export_module.DYNAMIC_EXPORT_TORCH
NEEDS_DYNAMIC_EXPORT = pytest.mark.skipif(OLD_TORCH, reason=f"torch.export keeps H, W free from torch "
                                                            f"{export_module.DYNAMIC_EXPORT_TORCH} on")


@pytest.mark.parametrize("format", ["export", "onnx"])
def test_torch_export_on_an_older_torch_is_one_line(model, tmp_path, monkeypatch, format):
    if not OLD_TORCH:  # the oldest supported torch gets here for real (.ci/run); newer ones pretend to be it
        monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.4.1"))
    monkeypatch.setattr(export_module, "_require_onnx", lambda: None)
    with pytest.raises(ExportError, match=rf"^format={format} needs torch >= \d+\.\d+ for inputs of any size \(this "
                                          rf"is torch {re.escape(str(torch.__version__))}\): use format=torchscript"):
        export_model(model, tmp_path / "model.pt2", format, METADATA, check_sizes=SIZES)
    assert not list(tmp_path.iterdir())


@NEEDS_DYNAMIC_EXPORT
def test_torch_export_program_has_dynamic_height_and_width(model, tmp_path):
    path = tmp_path / "model.pt2"
    report = export_model(model, path, "export", METADATA, check_sizes=SIZES)
    assert [r["input"] for r in report["parity"]] == [[1, 3, 64, 64], [2, 3, 48, 80], [1, 3, 65, 97]]
    extra = {"metadata.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    assert_metadata(json.loads(extra["metadata.json"]))
    # batch, height and width are symbols of the program (torch.export.Dim), not the traced 2 x 97 x 129
    (images,) = [node for node in program.graph.nodes if node.op == "placeholder" and node.name == "images"]
    batch, channels, height, width = images.meta["val"].shape
    assert channels == 3 and all(isinstance(d, torch.SymInt) for d in (batch, height, width))
    assert_parity(program.module(), model)


@NEEDS_DYNAMIC_EXPORT
def test_torch_export_at_output_stride_32(tmp_path):
    """At OS32 a 32-pixel input gives a 1x1 last map, a size torch.export cannot keep symbolic: the smallest input
    of an exported program is 33 pixels, and every output stride exports."""
    torch.manual_seed(0)
    model = build_model("resnet18", 3, output_stride=32).eval()
    report = export_model(model, tmp_path / "model.pt2", "export", METADATA, check_sizes=SIZES)
    assert max(r["max_abs_diff"] for r in report["parity"]) <= 1e-4
    assert_parity(torch.export.load(str(tmp_path / "model.pt2")).module(), model)


@NEEDS_DYNAMIC_EXPORT
def test_onnx_runs_in_onnxruntime_with_dynamic_batch_height_and_width(model, tmp_path):
    onnx = needed("onnx")
    needed("onnxscript")
    onnxruntime = needed("onnxruntime")
    path = tmp_path / "model.onnx"
    report = export_model(model, path, "onnx", METADATA, check_sizes=SIZES)
    assert [r["input"] for r in report["parity"]] == [[1, 3, 64, 64], [2, 3, 48, 80], [1, 3, 65, 97]]
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    for value in (*proto.graph.input, *proto.graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["metadata.json"])
    assert_metadata(metadata)
    assert metadata["onnx_opset"] == 18
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_outputs()[0].name == "logits"
    assert_parity(lambda images: session.run(None, {"images": images.numpy()})[0], model)


def test_a_format_that_cannot_take_the_model_is_one_line(model, tmp_path, monkeypatch):
    def failing(module, path, metadata):  # e.g. torch.export's guards, TorchScript's compiler
        raise RuntimeError("Constraints violated (height, width)!\n  - Not all values of height ...")

    monkeypatch.setitem(export_module.WRITERS, "torchscript", failing)
    with pytest.raises(ExportError, match=r"^format=torchscript cannot export this model \(RuntimeError: Constraints "
                                          r"violated \(height, width\)!\): try format=onnx or format=export$"):
        export_model(model, tmp_path / "model.ts", check_sizes=[[64, 64]])
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_packages_say_what_to_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ExportError, match=r'pip install -e "\.\[onnx\]"'):
        export_model(model, tmp_path / "model.onnx", "onnx", check_sizes=[[64, 64]])
    assert list(tmp_path.iterdir()) == []


def test_bad_export_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"^format must be one of \['torchscript', 'onnx', 'export'\]"):
        export_checkpoint(compose_config("export", ["ckpt=x", "output=y", "format=tflite"]))
    with pytest.raises(ValueError, match="^ckpt is required"):
        export_checkpoint(compose_config("export", ["output=y"]))
