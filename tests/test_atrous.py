"""Atrous analysis (seg.analysis and scripts/receptive_field.py) against known answers and brute force."""

import itertools
import json
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seg.analysis import (
    Layer,
    analyse_layers,
    check_hdc,
    coverage_map,
    coverage_profile,
    format_report,
    max_tap_distances,
    output_size,
    parse_layers,
    receptive_field,
    valid_taps,
)
from seg.analysis.model import analyse_config, analyse_model, main_path_layers
from seg.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "receptive_field.py"


def stack(*rates, kernel=3):
    return [Layer(kernel, r) for r in rates]


def brute_force_map(layers):
    """2-D path counts by enumerating every combination of tap offsets, one (dy, dx) pair per layer."""
    counts = Counter()
    per_layer = [list(itertools.product(range(layer.kernel), repeat=2)) for layer in layers]
    for taps in itertools.product(*per_layer):
        y = x = 0
        jump = 1
        for layer, (ty, tx) in zip(layers, taps):
            y += ty * layer.dilation * jump
            x += tx * layer.dilation * jump
            jump *= layer.stride
        counts[y, x] += 1
    size = receptive_field(layers)
    result = np.zeros((size, size), dtype=np.int64)
    for (y, x), count in counts.items():
        result[y, x] = count
    return result


def has_holes(layers):
    return any(c == 0 for c in coverage_profile(layers))


def test_hdc_rates_1_2_5_have_no_holes():
    report = analyse_layers(stack(1, 2, 5))
    assert report["receptive_field"] == 17
    assert report["coverage"]["holes"] == 0
    assert report["hdc"]["ok"] and report["hdc"]["suggestions"] == []


def test_rates_1_2_9_have_holes_with_m2_above_kernel():
    assert max_tap_distances([1, 2, 9]) == [3, 5, 9]
    assert max_tap_distances([1, 2, 5]) == [1, 2, 5]
    hdc = check_hdc([1, 2, 9])
    assert not hdc["checks"]["max_distance"]["ok"] and "M_2 = 5 > K = 3" in hdc["checks"]["max_distance"]["detail"]
    assert hdc["has_holes"] and not hdc["ok"]
    assert coverage_profile(stack(1, 2, 9)).tolist().count(0) == 4  # offsets +-4 and +-5 from the centre


def test_equal_rates_2_2_2_grid_against_brute_force():
    layers = stack(2, 2, 2)
    assert receptive_field(layers) == 13
    np.testing.assert_array_equal(coverage_map(coverage_profile(layers)).astype(np.int64), brute_force_map(layers))
    report = analyse_layers(layers)
    assert report["coverage"]["holes"] == 13 * 13 - 7 * 7  # only even offsets are reached
    checks = report["hdc"]["checks"]
    assert not checks["common_factor"]["ok"] and not checks["sawtooth"]["ok"]
    suggestions = report["hdc"]["suggestions"]
    assert suggestions and suggestions[0] == {"rates": [1, 2, 3], "receptive_field": 13}
    for suggestion in suggestions:
        assert len(suggestion["rates"]) == 3 and check_hdc(suggestion["rates"])["ok"]


def test_three_rate_1_layers():
    layers = stack(1, 1, 1)
    assert receptive_field(layers) == 7
    assert not has_holes(layers)
    assert check_hdc([1, 1, 1])["ok"]


@pytest.mark.parametrize("spec", [[[3, 1], [3, 2], [3, 5]], [[3, 2, 2], [3, 1], [3, 3]], [[7, 1, 2], [3, 1, 2], [3, 2]],
                                  [[5, 2], [1, 1, 2], [3, 3]]])
def test_coverage_matches_brute_force_and_torch_transposed_conv(spec):
    layers = parse_layers(spec)
    counts = coverage_map(coverage_profile(layers)).astype(np.int64)
    np.testing.assert_array_equal(counts, brute_force_map(layers))
    delta = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    for layer in reversed(layers):
        ones = torch.ones(1, 1, layer.kernel, layer.kernel, dtype=torch.float64)
        delta = F.conv_transpose2d(delta, ones, stride=layer.stride, dilation=layer.dilation)
    np.testing.assert_array_equal(counts, delta[0, 0].numpy().astype(np.int64))


def test_sawtooth_groups_pass_and_are_checked_per_group():
    hdc = check_hdc([1, 2, 5, 1, 2, 5])
    assert hdc["groups"] == [[1, 2, 5], [1, 2, 5]]
    assert hdc["ok"]


def test_output_size_known_answers():
    assert output_size(7, kernel=3, dilation=2) == 3
    assert output_size(7, kernel=3, dilation=1) == 5
    with pytest.raises(ValueError, match="too small"):
        output_size(4, kernel=3, dilation=2)


def test_output_size_matches_torch_conv2d():
    for kernel, dilation, stride, padding in itertools.product((1, 3, 5), (1, 2, 3), (1, 2, 3), (0, 1, 2)):
        conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        for size in (4, 7, 12):
            try:
                expected = conv(torch.zeros(1, 1, size, size)).shape[-1]
            except RuntimeError:  # the dilated kernel does not fit the padded map
                with pytest.raises(ValueError):
                    output_size(size, kernel, dilation, stride, padding)
                continue
            assert output_size(size, kernel, dilation, stride, padding) == expected


@pytest.mark.parametrize("size, rate", [(33, 1), (33, 6), (33, 18), (65, 24), (65, 64), (17, 30)])
def test_valid_taps_match_a_convolution_of_ones(size, rate):
    """An all-ones 3x3 filter on an all-ones map counts, at every output position, the taps inside the map."""
    counts = F.conv2d(torch.ones(1, 1, size, size, dtype=torch.float64),
                      torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=rate, dilation=rate)[0, 0]
    stats = valid_taps(size, Layer(3, rate))
    assert stats["output_size"] == size
    assert stats["mean_fraction"] == pytest.approx(counts.mean().item() / 9)
    assert stats["all_valid"] == pytest.approx((counts == 9).double().mean().item())
    assert stats["one_valid"] == pytest.approx((counts == 1).double().mean().item())


def test_filter_degenerates_to_1x1_as_rate_reaches_map_size():
    fractions = [valid_taps(65, Layer(3, rate))["mean_fraction"] for rate in range(1, 70)]
    assert all(a > b for a, b in zip(fractions[:64], fractions[1:65]))
    assert fractions[63] == pytest.approx(1 / 9, abs=0.01)  # rate 64
    assert fractions[64:] == [pytest.approx(1 / 9)] * 5  # rate >= 65: only the centre tap is inside


def test_resnet50_os16_multi_grid_read_from_model():
    report = analyse_config("resnet50", output_stride=16, multi_grid=(1, 2, 4))
    last_stage = [row["dilation"] for row in report["layers"]
                  if row["name"].startswith("backbone.layer4.") and row["kernel"] == 3]
    assert last_stage == [2, 4, 8]
    assert len(report["layers"]) == 2 + 16 * 3  # stem conv and pool, 16 bottlenecks x conv1/conv2/conv3
    assert report["feature_size"] == 33  # 513 px input at OS16
    aspp = [b for b in report["aspp"] if b["kind"] == "conv" and b["kernel"] == 3]
    assert [b["rate"] for b in aspp] == [6, 12, 18]
    fractions = [b["valid_taps"]["mean_fraction"] for b in aspp]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] < 1
    assert all(b["receptive_field"] > report["receptive_field"] for b in aspp)
    assert report["aspp"][-1]["kind"] == "image_pooling"
    assert report["coverage"]["holes"] == 0
    (layer4,) = report["dilated_stages"]
    assert layer4["stage"] == "layer4" and layer4["rates"] == [2, 4, 8]
    assert layer4["coverage"]["holes"] > 0 and not layer4["hdc"]["checks"]["common_factor"]["ok"]


def test_model_reading_follows_the_built_modules():
    model = build_model("resnet18", 2, output_stride=16)
    layers = main_path_layers(model)
    convs = [name for name, m in model.backbone.named_modules()
             if isinstance(m, (nn.Conv2d, nn.MaxPool2d)) and "downsample" not in name]
    assert [layer.name for layer in layers] == [f"backbone.{name}" for name in convs]
    model.set_output_stride(8)
    report = analyse_model(model, "resnet18")
    assert report["total_stride"] == 8 and report["feature_size"] == 65
    assert [s["stage"] for s in report["dilated_stages"]] == ["layer3", "layer4"]
    assert report["dilated_stages"][0]["rates"] == [2, 2, 2, 2]
    assert report["dilated_stages"][1]["rates"] == [4, 4, 8, 8]
    assert [b["rate"] for b in report["aspp"][1:4]] == [12, 24, 36]
    assert "layer4" in format_report(report)


def test_parse_layers_errors():
    with pytest.raises(ValueError, match=r"\[\[3,2\]\]"):
        parse_layers([3, 2])
    with pytest.raises(ValueError, match="dilation"):
        parse_layers([[3, 0]])


def test_png_heat_map(tmp_path):
    pytest.importorskip("matplotlib")
    from seg.analysis.plot import save_png

    path = save_png(analyse_layers(stack(2, 2, 2)), tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    from seg.analysis.plot import save_png

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[plot\]"'):
        save_png(analyse_layers(stack(2, 2, 2)), tmp_path / "grid.png")


def test_script_json_in_a_subprocess():
    result = subprocess.run([sys.executable, str(SCRIPT), "layers=[[3,1],[3,2],[3,5]]", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(result.stdout)
    assert report["receptive_field"] == 17 and report["coverage"]["holes"] == 0 and report["hdc"]["ok"]


def test_script_model_text_and_errors(capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["backbone.name=resnet18", "os=16", "model.multi_grid=[1,2]", "json=true"])
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["multi_grid"] == [1, 2] and report["dilated_stages"][0]["rates"] == [2, 2, 4, 4]
    main(["layers=[[3,2],[3,2],[3,2]]", "feature_size=9"])
    text = capsys.readouterr().out
    assert "receptive field: 13x13" in text and "FAIL" in text and "1, 2, 3" in text
    for bad in (["foo=1"], [], ["layers=[[3,1]]", "backbone=resnet18"]):
        with pytest.raises(SystemExit):
            main(bad)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["backbone=mobilenet_v3_large"])
    assert capsys.readouterr().err.strip().endswith(
        "error: the receptive-field analysis covers only the built-in ResNets (resnet18, resnet34, resnet50, "
        "resnet101), not 'mobilenet_v3_large' (MobileNetV3 and timm encoders included)")


def test_script_model_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["backbone=resnet18", "os=8", f"png={tmp_path / 'model.png'}"])
    assert (tmp_path / "model.png").is_file() and "figure saved to" in capsys.readouterr().out
