"""The benchmark on tiny CPU shapes: its JSON schema, the torchvision comparison model, the script end to end.

No timing is asserted: figures from a shared CPU say nothing; these tests check that every figure is produced.
"""

import json
import mmap
import numbers
import runpy

import numpy as np
import pytest
import torch
from helpers import REPO, compose_config, needed, run_script
from test_predict import decisive_checkpoint
from torchvision.models.segmentation import deeplabv3_resnet50

from seg import export as export_module
from seg.benchmark import measure
from seg.benchmark.backends import RssPeak
from seg.benchmark.measure import build_torchvision_deeplabv3, peak_tflops, structure
from seg.benchmark.run import (
    _restrided,
    data_phase,
    format_table,
    make_setup,
    ratios,
    run_benchmark,
    train_phase,
    validate_benchmark,
)
from seg.config import ConfigError, dataset_kwargs, model_kwargs, to_plain
from seg.data import build_dataset
from seg.deployment import model_source
from seg.deployment.quantize import quantize_checkpoint
from seg.engine.evaluation import evaluate_checkpoint
from seg.export import export_checkpoint
from seg.models import build_model

NUM = numbers.Real
OPT_NUM = (numbers.Real, type(None))

# The tiny CPU run, plus a private dataset folder and one thread (the machine is shared).
TINY = ["backbone=resnet18", "batch_size=2", "crop_size=64", "eval_size=[64,96]", "steps=3", "warmup=1",
        "num_workers=0", "data_steps=4", "device=cpu", "cpu_threads=1"]


def tiny_data(tmp_path):
    return [f"dataset.root={tmp_path / 'data'}", "dataset.image_size=48", "dataset.num_train=4", "dataset.num_val=2"]


TRAIN_KEYS = {"step_ms": NUM, "step_ms_p10": NUM, "step_ms_p90": NUM, "images_per_s": NUM, "wall_images_per_s": NUM,
              "first_step_s": NUM, "peak_memory_mib": NUM, "tflops": NUM, "peak_fraction": type(None)}
INFERENCE_KEYS = {"batch_size": int, "batch_ms": NUM, "images_per_s": NUM, "latency_ms": NUM, "latency_ms_p90": NUM,
                  "peak_memory_mib": NUM, "tflops": NUM, "peak_fraction": type(None)}
FLOPS_KEYS = {"forward_per_image": int, "train_per_image": int, "train_multiplier": int,
              "train_per_image_counted": int, "eval_forward_per_image": int}
# docs/benchmarks.md's list of ratios (ours / torchvision)
RATIO_KEYS = {"train_step_ms", "train_images_per_s", "train_wall_images_per_s", "train_peak_memory_mib",
              "same_step_images_per_s", "inference_batch_ms", "inference_images_per_s", "latency_ms",
              "inference_peak_memory_mib", "forward_flops_per_image", "eval_forward_flops_per_image", "params"}
DATA_KEYS = ("dataset", "num_workers", "batches", "samples_per_s", "first_batch_s", "run_steps", "wait_share",
             "wait_ms_per_step", "run_images_per_s")
TOP_KEYS = {"schema", "device", "versions", "config", "settings", "model", "flops", "peak", "train", "inference",
            "data", "micro", "torchvision", "ratios", "output", "inference_backends"}


def check_types(section, expected):
    assert set(section) == set(expected), sorted(set(section) ^ set(expected))
    for key, kind in expected.items():
        assert isinstance(section[key], kind), (key, section[key])


def check_common(result, data=True, micro=True, aspp=True):
    assert set(result) == TOP_KEYS
    assert result["schema"] == "seg.benchmark/1"
    check_types(result["device"], {"type": str, "name": str, "capability": type(None), "memory_gib": type(None),
                                   "cpu_threads": int, "cpu_count": int})
    assert result["device"]["type"] == "cpu"
    assert set(result["versions"]) == {"python", "torch", "torchvision", "cuda", "cudnn", "seg"}
    assert result["versions"]["torch"] == torch.__version__
    settings = result["settings"]
    assert settings["memory"] == "process_peak_rss" and settings["timer"] == "perf_counter"
    assert settings["amp_dtype"] is None and settings["channels_last"] is False  # auto on the CPU
    check_types(result["train"], TRAIN_KEYS)
    check_types(result["inference"], INFERENCE_KEYS)
    check_types(result["flops"], FLOPS_KEYS)
    assert result["flops"]["train_per_image"] == 3 * result["flops"]["forward_per_image"]
    # No known peak for a CPU: the figure and the fractions are null.
    assert result["peak"] == {"name": None, "precision": "fp32", "tflops": None, "source": None}
    data_types = {"dataset": str, "num_workers": int, "batches": int, "samples_per_s": NUM, "first_batch_s": NUM,
                  "run_steps": int, "wait_share": NUM, "wait_ms_per_step": NUM, "run_images_per_s": NUM}
    check_types(result["data"], data_types if data else {key: type(None) for key in data_types})
    if data:
        assert 0 <= result["data"]["wait_share"] <= 1
    model = result["model"]
    assert set(model) == {"params", "aspp_rates", "eval_aspp_rates", "dilations", "aspp_input_shape",
                          "eval_aspp_input_shape"}
    if aspp:
        assert model["aspp_rates"] == [6, 12, 18] and model["eval_aspp_rates"] == [12, 24, 36]
    else:  # LR-ASPP: no ASPP to describe, nothing for the micro-benchmarks to time
        assert [model[k] for k in model if "aspp" in k] == [None] * 4
    micro_result = result["micro"]
    assert set(micro_result) == {"train", "eval", "image_pool"}
    pool_keys = {"shape", "expand_fwd_ms", "interpolate_fwd_ms", "expand_fwd_bwd_ms", "interpolate_fwd_bwd_ms"}
    if not micro or not aspp:  # disabled: every key present, every value null
        assert micro_result["train"] == micro_result["eval"] == {"shape": None, "dtype": None, "conv3x3": None}
        assert micro_result["image_pool"] == dict.fromkeys(pool_keys)
        return
    for part, rates in (("train", [1, 6, 12, 18]), ("eval", [1, 12, 24, 36])):
        assert micro_result[part]["shape"] == model[f"{'eval_' if part == 'eval' else ''}aspp_input_shape"]
        assert micro_result[part]["dtype"] == "float32"
        assert [row["dilation"] for row in micro_result[part]["conv3x3"]] == rates
        for row in micro_result[part]["conv3x3"]:
            check_types(row, {"dilation": int, "fwd_ms": NUM, "fwd_bwd_ms": NUM if part == "train" else type(None),
                              "fwd_ratio": NUM, "fwd_bwd_ratio": NUM if part == "train" else type(None)})
    check_types(micro_result["image_pool"], {"shape": list, **{k: NUM for k in pool_keys - {"shape"}}})


def test_compare_run_writes_every_field(tmp_path):
    """resnet50 against torchvision's DeepLabV3 in one process, at a tiny shape (data and micro figures off)."""
    cfg = compose_config("benchmark", [
        "backbone=resnet50", "batch_size=2", "crop_size=32", "eval_size=[32,48]", "steps=1", "warmup=0",
        "data_steps=0", "micro=false", "device=cpu", "cpu_threads=1", "compare=torchvision", "model.aux_loss=true",
        "dataset=voc", "output=null"])  # no dataset.root needed without data figures; num_classes from the config
    result = run_benchmark(cfg, tmp_path / "run", echo=False)
    check_common(result, data=False, micro=False)
    assert result["output"] is None and not (tmp_path / "run").exists()  # output=null: no file
    assert result["settings"]["num_classes"] == 21
    assert result["model"]["aspp_input_shape"] == [2, 2048, 2, 2]

    tv = result["torchvision"]
    assert set(tv) == {"model", "builder", "recipe", "params", "aspp_rates", "eval_aspp_rates", "dilations", "flops",
                       "train", "train_same_step", "inference"}
    assert tv["model"] == "deeplabv3_resnet50"
    assert tv["aspp_rates"] == result["model"]["aspp_rates"] == [6, 12, 18]
    assert tv["eval_aspp_rates"] == result["model"]["eval_aspp_rates"] == [12, 24, 36]
    assert tv["params"] == result["model"]["params"]  # the same layers: only the dilations differ
    check_types(tv["train"], TRAIN_KEYS)
    check_types(tv["inference"], INFERENCE_KEYS)
    check_types(tv["flops"], FLOPS_KEYS)
    check_types(tv["train_same_step"], {"step_ms": NUM, "images_per_s": NUM})

    ratios = result["ratios"]
    assert set(ratios) == RATIO_KEYS
    for key, value in ratios.items():
        if "memory" in key:
            assert value is None  # peak RSS cannot be reset between the two models on the CPU
        else:
            assert isinstance(value, float) and value > 0, key
    assert ratios["forward_flops_per_image"] == pytest.approx(1.0)
    assert ratios["params"] == 1.0


@pytest.mark.parametrize("output_stride, tv_layer4, ours_layer4", [(16, [1, 2, 2], [2, 4, 8]),
                                                                  (8, [2, 4, 4], [4, 8, 16])])
def test_torchvision_model_matches_ours(output_stride, tv_layer4, ours_layer4):
    """Same ASPP rates, output stride and layers; per-unit dilations follow torchvision's own rule."""
    with torch.device("meta"):  # structure only: no weights are initialised
        tv = build_torchvision_deeplabv3("resnet50", 21, output_stride, aux_loss=True)
        ours = build_model("resnet50", 21, output_stride=output_stride, aux_loss=True)
        reference = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    rates = [r * 16 // output_stride for r in (6, 12, 18)]
    assert structure(tv)["aspp_rates"] == structure(ours)["aspp_rates"] == rates
    assert structure(tv)["dilations"]["layer4"] == tv_layer4
    assert structure(ours)["dilations"]["layer4"] == ours_layer4
    x = torch.zeros(1, 3, 65, 97, device="meta")
    tv_features, ours_features = tv.backbone(x), ours.backbone(x)
    assert tv_features["out"].shape == ours_features[2].shape  # the same output stride
    assert tv_features["aux"].shape == ours_features[1].shape
    assert {k: v.shape for k, v in tv.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in tv.parameters()) == sum(p.numel() for p in ours.parameters())
    if output_stride == 8:  # torchvision's own builder, unchanged
        assert structure(tv) == structure(reference)


def test_deployment_table_rows(tmp_path):
    """backends=[onnxruntime,openvino] precisions=[fp32,bf16,int8]: eager torch fp32 (the baseline, ratio 1),
    bf16 autocast, both in channels_last, then each runtime at each precision, in the JSON and the printed table."""
    for package in ("onnxruntime", "openvino"):
        needed(package)
    if torch.__version__ < export_module.DYNAMIC_EXPORT_TORCH:
        pytest.skip(f"runtimes run ONNX exports, which keep H, W free from torch {export_module.DYNAMIC_EXPORT_TORCH}")
    cfg = compose_config("benchmark", [*TINY[:-4], "data_steps=0", "micro=false", "device=cpu", "cpu_threads=1",
                                       "backends=[onnxruntime,openvino]", "precisions=[fp32,bf16,int8,fp16]",
                                       "output=null"])
    result = run_benchmark(cfg, tmp_path, echo=False)
    rows = result["inference_backends"]
    assert [(r["backend"], r["precision"], r["layout"]) for r in rows] == [
        ("torch", "fp32", "contiguous"), ("torch", "bf16", "contiguous"), ("torch", "fp32", "channels_last"),
        ("torch", "bf16", "channels_last"),
        ("onnxruntime", "fp32", "onnx"), ("onnxruntime", "bf16", "onnx"), ("onnxruntime", "int8", "onnx int8 (QDQ)"),
        ("onnxruntime", "fp16", "onnx"), ("openvino", "fp32", "onnx"), ("openvino", "bf16", "onnx"),
        ("openvino", "int8", "onnx int8 (QDQ)"), ("openvino", "fp16", "onnx")]
    fp16 = [rows.pop(7), rows.pop(-1)]  # on the CPU: a row saying which GPU device is missing
    assert all(r["latency_ms"] is None and r["note"].startswith("precision=fp16 with backend=") for r in fp16)
    assert rows[0]["ratio_vs_torch"] == 1.0
    for row in rows:
        assert row["batch"] == 2 and row["size"] == [64, 96] and row["miou"] is None  # no ckpt=: no accuracy
        if (row["backend"], row["precision"]) == ("onnxruntime", "bf16"):
            assert row["latency_ms"] is None and row["peak_mem_mb"] is None and "no bf16" in row["note"]
            continue
        assert isinstance(row["peak_mem_mb"], float)  # CPU: the peak RSS, reset per row (RssPeak)
        assert row["latency_ms"] > 0 and row["img_per_s"] > 0
        assert row["ratio_vs_torch"] == pytest.approx(rows[0]["latency_ms"] / row["latency_ms"])
        assert row["file_mb"] is None if row["backend"] == "torch" else row["file_mb"] > 1  # ResNet-18: ~60 MB
    assert rows[-1]["file_mb"] < 0.3 * rows[-2]["file_mb"]  # int8 weights: about a quarter of fp32's
    table = format_table(result)
    assert "inference backends (latency at batch 1, img/s at batch 2" in table and "openvino     bf16" in table


def touch_fresh_pages(mib: int) -> None:
    """Write ``mib`` MiB of new anonymous pages, then unmap them. Not ``np.ones``: after a long test session malloc
    may serve it from heap memory that earlier tests freed but the process still holds, which adds no RSS."""
    block = mmap.mmap(-1, mib * 2 ** 20)
    pages = np.frombuffer(block, dtype=np.uint8)
    pages[::mmap.PAGESIZE] = 1
    del pages
    block.close()


def test_rss_peak_is_the_memory_touched_inside():
    """The per-row CPU memory figure: 100 MiB written inside the block and freed at once still show up, and a
    larger peak before the block is not counted (the high-water mark was reset)."""
    touch_fresh_pages(300)
    with RssPeak() as peak:
        touch_fresh_pages(100)
    assert 95 <= peak.mib <= 140
    with RssPeak() as idle:
        pass
    assert idle.mib < 20


def test_deployment_table_with_a_checkpoint_scores_every_row_at_every_size(tmp_path):
    """ckpt= a checkpoint, sizes=[...]: each variant timed at each size, with its mIoU on the checkpoint's
    validation split; eager torch's equals evaluate.py's on the same images, onnxruntime fp32's agrees."""
    needed("onnxruntime")
    if torch.__version__ < export_module.DYNAMIC_EXPORT_TORCH:
        pytest.skip(f"runtimes run ONNX exports, which keep H, W free from torch {export_module.DYNAMIC_EXPORT_TORCH}")
    ckpt = decisive_checkpoint(tmp_path)
    reference = evaluate_checkpoint(compose_config("evaluate", [f"ckpt={ckpt}", "device=cpu", "num_workers=0"]),
                                    tmp_path / "eval")["mIoU"]
    cfg = compose_config("benchmark", [*TINY[:-4], "data_steps=0", "micro=false", "device=cpu", "cpu_threads=1",
                                       "eval_os=16", f"ckpt={ckpt}", "sizes=[[64,64],[64,96]]", "eval_batch_size=1",
                                       "steps=1", "warmup=0",
                                       "backends=[onnxruntime]", "precisions=[fp32,int8]", "output=null"])
    rows = run_benchmark(cfg, tmp_path, echo=False)["inference_backends"]
    variants = [("torch", "fp32", "contiguous"), ("torch", "fp32", "channels_last"), ("onnxruntime", "fp32", "onnx"),
                ("onnxruntime", "int8", "onnx int8 (QDQ)")]
    assert [(r["size"], (r["backend"], r["precision"], r["layout"])) for r in rows] == [
        (size, variant) for size in ([64, 64], [64, 96]) for variant in variants]
    for first, second in zip(rows[:4], rows[4:]):
        assert first["miou"] == second["miou"]  # scored once per variant, on the validation images' own sizes
        assert first["latency_ms"] > 0 and second["latency_ms"] > 0 and second["ratio_vs_torch"] > 0
    assert rows[0]["miou"] == pytest.approx(reference, abs=1e-6)
    assert rows[1]["miou"] == pytest.approx(reference, abs=1e-3)
    assert rows[2]["miou"] == pytest.approx(reference, abs=1e-3)
    assert 0 <= rows[3]["miou"] <= 1
    assert rows[0]["ratio_vs_torch"] == rows[4]["ratio_vs_torch"] == 1.0  # each size has its own baseline


def test_deployment_table_of_exported_files(tmp_path):
    """ckpt= an exported file (an ONNX file, its int8 file, an OpenVINO IR), no checkpoint: each runtime runs the
    file as evaluate.py runs it, scored on dataset=; there is no eager torch row, so no ratio; what a runtime cannot
    do with the file is a row that says why."""
    needed("onnxruntime")
    ov = needed("openvino")
    if torch.__version__ < export_module.DYNAMIC_EXPORT_TORCH:
        pytest.skip(f"runtimes run ONNX exports, which keep H, W free from torch {export_module.DYNAMIC_EXPORT_TORCH}")
    ckpt = decisive_checkpoint(tmp_path)
    fp32, int8, xml = tmp_path / "model.onnx", tmp_path / "model.int8.onnx", tmp_path / "ir" / "model.xml"
    export_checkpoint(compose_config("export", [f"ckpt={ckpt}", f"output={fp32}", "format=onnx"]))
    data = [f"dataset.root={tmp_path / 'data'}", "dataset.image_size=64", "dataset.num_train=8", "dataset.num_val=3"]
    quantize_checkpoint(compose_config("quantize", [f"ckpt={ckpt}", f"output={int8}", "calibration=val", "n=2",
                                                    data[0]]))
    ov.save_model(ov.convert_model(str(fp32)), str(xml), compress_to_fp16=False)  # what `ovc` writes
    common = [*TINY[:-4], "data_steps=0", "micro=false", "device=cpu", "cpu_threads=1", "eval_batch_size=1",
              "steps=1", "warmup=0", "output=null", "dataset=synthetic", *data]

    def reference(file, backend):  # evaluate.py on the same file and images
        cfg = compose_config("evaluate", [f"ckpt={file}", f"backend={backend}", "device=cpu", "num_workers=0",
                                          "dataset=synthetic", *data, *(["precision=int8"] if file == int8 else [])])
        return evaluate_checkpoint(cfg, tmp_path / f"eval-{file.stem}-{backend}", source=model_source(cfg))["mIoU"]

    result = run_benchmark(compose_config("benchmark", [*common, f"ckpt={fp32}", "backends=[onnxruntime,openvino]",
                                                        "precisions=[fp32,int8]"]), tmp_path, echo=False)
    rows = result["inference_backends"]
    assert [(r["backend"], r["precision"], r["layout"]) for r in rows] == [
        ("onnxruntime", "fp32", "onnx"), ("onnxruntime", "int8", "onnx"), ("openvino", "fp32", "onnx"),
        ("openvino", "int8", "onnx")]
    for row in rows[0], rows[2]:
        assert row["latency_ms"] > 0 and row["ratio_vs_torch"] is None and row["peak_mem_mb"] > 0
        assert row["file_mb"] == pytest.approx(fp32.stat().st_size / 2 ** 20)
        assert row["miou"] == pytest.approx(reference(fp32, row["backend"]), abs=1e-6)
    for row in rows[1], rows[3]:
        assert row["latency_ms"] is None and row["miou"] is None
        assert f"precision=int8 runs an int8 model, and {fp32} is fp32: python scripts/quantize.py" in row["note"]
    assert "onnxruntime  fp32       onnx" in format_table(result)

    rows = run_benchmark(compose_config("benchmark", [*common, f"ckpt={int8}", "backends=[onnxruntime]",
                                                      "precisions=[int8]"]), tmp_path, echo=False)["inference_backends"]
    assert [(r["backend"], r["precision"], r["layout"]) for r in rows] == [("onnxruntime", "int8", "onnx int8 (QDQ)")]
    assert rows[0]["miou"] == pytest.approx(reference(int8, "onnxruntime"), abs=1e-6)

    rows = run_benchmark(compose_config("benchmark", [*common, f"ckpt={xml}", "backends=[onnxruntime,openvino]",
                                                      "precisions=[fp32]"]), tmp_path, echo=False)["inference_backends"]
    assert "is an OpenVINO model, which onnxruntime cannot read" in rows[0]["note"] and rows[0]["latency_ms"] is None
    assert rows[1]["layout"] == "openvino ir" and rows[1]["latency_ms"] > 0
    assert rows[1]["file_mb"] == pytest.approx((xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2 ** 20)
    assert rows[1]["miou"] == pytest.approx(reference(fp32, "openvino"), abs=1e-6)
    with pytest.raises(ConfigError, match=r"is an exported model, which eager torch cannot run"):
        run_benchmark(compose_config("benchmark", [*common, f"ckpt={fp32}", "backends=[torch]"]), tmp_path)


def test_four_channel_model_is_timed_on_four_channel_images(tmp_path):
    """dataset.channels=4 (RGB-D): the timed batches, the FLOP count and the runtimes' export have four bands."""
    needed("onnxruntime")
    if torch.__version__ < export_module.DYNAMIC_EXPORT_TORCH:
        pytest.skip(f"runtimes run ONNX exports, which keep H, W free from torch {export_module.DYNAMIC_EXPORT_TORCH}")
    common = [*TINY[:-4], "data_steps=0", "micro=false", "device=cpu", "cpu_threads=1", "steps=1", "warmup=0",
              "output=null", "backends=[onnxruntime]"]
    rgb, rgbd = (run_benchmark(compose_config("benchmark", [*common, *extra]), tmp_path, echo=False)
                 for extra in ([], ["dataset.channels=4", "train.color_jitter=false"]))
    # The fourth band adds one input channel to the stem's 7x7 convolution (stride 2, 64 filters) and nothing else:
    # its output pixels (eval_size [64, 96] / 2) x 64 filters x 7 x 7 weights x 2 FLOPs per multiply-add.
    stem_band = (64 // 2) * (96 // 2) * 64 * 7 * 7 * 2
    assert rgbd["flops"]["eval_forward_per_image"] - rgb["flops"]["eval_forward_per_image"] == stem_band
    assert rgbd["flops"]["forward_per_image"] > rgb["flops"]["forward_per_image"]
    assert all(row["latency_ms"] > 0 for row in rgbd["inference_backends"])


def test_ckpt_needs_backends():
    cfg = compose_config("benchmark", ["ckpt=model.pt"])
    with pytest.raises(ConfigError, match=r"ckpt= scores the deployment table's rows: add backends=\[torch\]"):
        validate_benchmark(cfg)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34"])
def test_compare_refuses_basic_block_backbones(backbone):
    cfg = compose_config("benchmark", [f"backbone={backbone}", "compare=torchvision"])
    with pytest.raises(ConfigError, match=r"compare=torchvision supports backbone \['resnet50', 'resnet101'\]"):
        validate_benchmark(cfg)


@pytest.mark.parametrize("override, key", [("amp=fp8", "amp"), ("channels_last=maybe", "channels_last"),
                                           ("compare=timm", "compare"), ("eval_os=12", "eval_os"),
                                           ("steps=0", "steps"), ("os=4", "os"), ("train.loss=lovasz", "train.loss"),
                                           ("backends=[tensorrt]", "backends"), ("precisions=fp32", "precisions")])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key} must be"):
        validate_benchmark(compose_config("benchmark", [override]))


def test_config_composes_train():
    """benchmark.yaml extends train.yaml: the same model and train blocks, the benchmark's own keys mirrored into
    train.*, and a dataset's recipe (dataset=voc: batch 16, crop 513, lr 0.007) never overrides the command line."""
    train, bench = compose_config("train", []), compose_config("benchmark", [])
    assert bench["model"] == train["model"] and bench["backbone"] == train["backbone"]
    mirrored = {"batch_size", "crop_size", "amp", "compile", "num_workers"}
    assert {k: v for k, v in bench["train"].items() if k not in mirrored} == {
        k: v for k, v in train["train"].items() if k not in mirrored}
    assert bench["dataset"]["name"] == "synthetic"  # the default benchmark runs on the embedded dataset
    voc = compose_config("benchmark", ["dataset=voc", "batch_size=2", "crop_size=64"])
    assert (voc["batch_size"], voc["train"]["batch_size"], voc["train"]["crop_size"]) == (2, 2, 64)
    assert voc["train"]["lr"] == 0.007 and voc["dataset"]["num_classes"] == 21


def test_argv_rewrite():
    rewrite_argv = runpy.run_path(str(REPO / "scripts" / "benchmark.py"))["rewrite_argv"]
    assert rewrite_argv(["b.py", "--compare", "torchvision", "os=8"]) == ["b.py", "compare=torchvision", "os=8"]
    assert rewrite_argv(["b.py", "--compare=torchvision"]) == ["b.py", "compare=torchvision"]
    assert rewrite_argv(["b.py", "os=8", "--compare"]) == ["b.py", "os=8", "compare=torchvision"]
    assert rewrite_argv(["b.py", "compare=torchvision"]) == ["b.py", "compare=torchvision"]


def test_peak_table():
    gpu, cpu = torch.device("cuda"), torch.device("cpu")  # no GPU needed: the name is given
    h100 = peak_tflops(gpu, torch.bfloat16, device_name="NVIDIA H100 80GB HBM3")
    assert (h100["name"], h100["precision"], h100["tflops"]) == ("H100 SXM", "bf16", 989.4)
    assert peak_tflops(gpu, torch.bfloat16, device_name="NVIDIA H100 PCIe")["name"] == "H100 PCIe"
    assert peak_tflops(gpu, torch.bfloat16, device_name="NVIDIA H200")["tflops"] == 989.4
    a100 = [peak_tflops(gpu, dtype, device_name="NVIDIA A100-SXM4-80GB") for dtype in (torch.bfloat16, torch.float16)]
    assert [p["tflops"] for p in a100] == [312.0, 312.0]
    if torch.backends.cudnn.allow_tf32:  # full precision on CUDA: TF32 convolutions (PyTorch's default)
        assert peak_tflops(gpu, None, device_name="NVIDIA A100-SXM4-80GB")["tflops"] == 156.0
    unknown = peak_tflops(gpu, None, device_name="Tesla T4")
    assert (unknown["name"], unknown["tflops"], unknown["source"]) == (None, None, None)
    assert peak_tflops(cpu, None)["tflops"] is None
    assert peak_tflops(cpu, torch.bfloat16, override=100.0) == {
        "name": "config", "precision": "bf16", "tflops": 100.0, "source": "config peak_tflops"}


@pytest.mark.parametrize("backbone, head, last_stage, dilations", [
    ("resnet18", "deeplabv3", "layer4", [2, 2, 4, 4]),  # BasicBlock: two 3x3 convs per unit, multi-grid 1, 2, 4
    ("mobilenet_v3_large", "lraspp", "C4", [2, 2, 2]),  # one depthwise conv per block, as torchvision's OS16
])
def test_script_end_to_end(tmp_path, backbone, head, last_stage, dilations):
    run_dir = tmp_path / "run"
    result = run_script("benchmark.py", [*TINY, *tiny_data(tmp_path), f"hydra.run.dir={run_dir}", "output=sub/b.json",
                                         f"backbone={backbone}", f"model.head={head}"])
    assert "train images/s" in result.stdout and "inference latency ms (batch 1)" in result.stdout
    data = json.loads((run_dir / "sub" / "b.json").read_text())  # relative to the run directory
    assert data["output"] == str(run_dir / "sub" / "b.json")
    check_common(data, aspp=head != "lraspp")
    assert data["torchvision"] is None and data["ratios"] is None
    assert data["settings"]["backbone"] == backbone and data["settings"]["crop_size"] == [64, 64]
    assert data["model"]["dilations"][last_stage] == dilations
    assert data["model"]["params"] == sum(p.numel() for p in build_model(**model_kwargs(
        data["config"], data["settings"]["num_classes"])).parameters())
    assert data["config"]["data_steps"] == 4


def test_phases_one_by_one(tmp_path):
    """Each phase of the driver alone, on resnet18 at 32 px: what it fills in and what it does to the model."""
    cfg = to_plain(compose_config("benchmark", [
        *TINY, *tiny_data(tmp_path), "crop_size=32", "eval_size=[32,32]", "steps=1", "warmup=0", "data_steps=2"]))
    train_set = build_dataset(**dataset_kwargs(cfg["dataset"]))
    s, settings = make_setup(cfg, train_set.num_classes)
    assert (s.warmup, s.steps, s.batch, s.crop, s.num_classes) == (0, 1, 2, (32, 32), 6)
    assert (settings["crop_size"], settings["eval_batch_size"], settings["amp_dtype"]) == ([32, 32], 2, None)

    assert data_phase({**cfg, "data_steps": 0}, s, None) == {}
    data = {**dict.fromkeys(DATA_KEYS), **data_phase(cfg, s, train_set)}
    assert (data["dataset"], data["batches"], data["num_workers"]) == ("synthetic", 2, 0) and data["run_steps"] is None

    kwargs = model_kwargs(cfg, 6, pretrained="none")
    info, flops = measure.describe(lambda: build_model(**kwargs), lambda: build_model(**kwargs), s)
    assert flops["train_per_image"] == 3 * flops["forward_per_image"] and info["aspp_input_shape"] == [2, 512, 2, 2]
    model = build_model(**kwargs).train()
    before = [p.detach().clone() for p in model.parameters()]
    result = {"flops": flops, "data": data}
    train = train_phase(cfg, s, model, result, train_set)
    assert train["step_ms"] > 0 and data["run_steps"] == 1 and 0 <= data["wait_share"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # real optimizer steps ran

    inference = measure.time_inference(_restrided(model, cfg["eval_os"]).eval(), s, flops["eval_forward_per_image"])
    assert inference["batch_size"] == 2 and not model.training
    # re-strided to eval_os 8: layer4 at rate 4 x multi-grid (1, 2) for resnet18's two units of two 3x3 convs
    assert structure(model)["aspp_rates"] == [12, 24, 36] and structure(model)["dilations"]["layer4"] == [4, 4, 8, 8]

    micro = measure.time_micro({**info, "eval_aspp_rates": [12, 24, 36]}, s)
    assert [r["dilation"] for r in micro["eval"]["conv3x3"]] == [1, 12, 24, 36]
    assert micro["train"]["conv3x3"][0]["fwd_ratio"] == micro["train"]["conv3x3"][0]["fwd_bwd_ratio"] == 1.0


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_ratios_by_hand(device):
    """ours / torchvision, computed by hand; memory ratios only where peak memory can be reset (CUDA)."""
    ours = {"train": {"step_ms": 2.0, "images_per_s": 8.0, "wall_images_per_s": 6.0, "peak_memory_mib": 100.0},
            "inference": {"batch_ms": 3.0, "images_per_s": 10.0, "latency_ms": 1.0, "peak_memory_mib": 50.0},
            "flops": {"forward_per_image": 30, "eval_forward_per_image": 90}, "model": {"params": 7}}
    tv = {"train": {"step_ms": 4.0, "images_per_s": 4.0, "wall_images_per_s": 3.0, "peak_memory_mib": 200.0},
          "train_same_step": {"images_per_s": 5.0},
          "inference": {"batch_ms": 6.0, "images_per_s": 5.0, "latency_ms": 2.0, "peak_memory_mib": 25.0},
          "flops": {"forward_per_image": 30, "eval_forward_per_image": 45}, "params": 7}
    got = ratios({**ours, "device": {"type": device}, "torchvision": tv})
    memory = {"train_peak_memory_mib": 0.5, "inference_peak_memory_mib": 2.0}
    assert got == {"train_step_ms": 0.5, "train_images_per_s": 2.0, "train_wall_images_per_s": 2.0,
                   "same_step_images_per_s": 1.6, "inference_batch_ms": 0.5, "inference_images_per_s": 2.0,
                   "latency_ms": 0.5, "forward_flops_per_image": 1.0, "eval_forward_flops_per_image": 2.0,
                   "params": 1.0, **(memory if device == "cuda" else dict.fromkeys(memory))}


def test_time_loader_counts_batches():
    """Warm-up batches are fed to the step but not counted; the first batch is timed alone."""
    s, _ = make_setup(to_plain(compose_config("benchmark", ["device=cpu"])), 6)
    fed = []
    first, waited, wall = measure.time_loader([(i, -i) for i in range(5)], 2, 3, s, lambda a, b: fed.append((a, b)))
    assert fed == [(i, -i) for i in range(5)]
    assert 0 <= first and 0 <= waited <= wall
    with pytest.raises(StopIteration):  # asks for no more batches than warm-up + timed
        measure.time_loader([(0, 0)] * 3, 2, 2, s)


def test_models_table_rows():
    """scripts/models_table.py's rows: parameters as torchvision counts them, resnet50 the time baseline."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    from seg.benchmark.models import markdown, model_rows

    rows = model_rows(size=32, rounds=1, warmup=0, include_timm=False, names=["mobilenet_v3_large, LR-ASPP"])
    assert [row["name"] for row in rows] == ["resnet50", "mobilenet_v3_large, LR-ASPP"]
    theirs = sum(p.numel() for p in deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                       aux_loss=False).parameters())
    assert rows[0]["params_m"] == theirs / 1e6 and rows[0]["ratio"] == 1.0
    assert rows[1]["head"] == "lraspp" and 0 < rows[1]["gflops"] < rows[0]["gflops"]
    assert markdown(rows, 32, "CPU").count("\n") == 3
