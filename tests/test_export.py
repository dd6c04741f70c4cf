import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import compose_config, run_script, tiny_checkpoint

from seg import export as export_module
from seg.engine.checkpoint import restore
from seg.export import ExportedModel, ExportError, export_checkpoint, export_model, load_torchscript
from seg.models import build_model

SIZES = [[64, 64], [48, 80]]
METADATA = {"class_names": ["a", "b", "c"]}


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
    assert [r["input"] for r in report["parity"]] == [[1, 3, 64, 64], [2, 3, 48, 80]]
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    loaded, metadata = load_torchscript(path)
    assert metadata["class_names"] == ["a", "b", "c"] and metadata["input"].startswith("float32 RGB")
    images = torch.rand(1, 3, 57, 83)
    with torch.inference_mode():
        out = loaded(images)
        expected = model((images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                         / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))["out"]
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 57, 83)
    assert torch.allclose(out, expected, atol=1e-4)
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


def test_export_script_at_another_output_stride(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt.pt", tmp_path / "data")
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


def test_torch_export_program(model, tmp_path):
    path = tmp_path / "model.pt2"
    report = export_model(model, path, "export", METADATA, check_sizes=SIZES)
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    extra = {"metadata.json": ""}
    program = torch.export.load(str(path), extra_files=extra)
    assert json.loads(extra["metadata.json"])["class_names"] == ["a", "b", "c"]
    assert program.module()(torch.rand(1, 3, 70, 50)).shape == (1, 3, 70, 50)


def test_onnx(model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    report = export_model(model, path, "onnx", METADATA, check_sizes=SIZES)
    assert all(r["max_abs_diff"] <= 1e-4 for r in report["parity"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["metadata.json"])["class_names"] == ["a", "b", "c"]
    (out,) = session.run(None, {"images": torch.rand(1, 3, 70, 50).numpy()})
    assert out.shape == (1, 3, 70, 50)


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
