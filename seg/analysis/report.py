"""Analysis of a layer stack as one JSON-ready dict, and its text rendering.

``analyse_layers`` works on an explicit stack; ``seg.analysis.model.analyse_model`` builds the same kind of
dict from a built DeepLab model. ``format_report`` renders either one.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from seg.analysis.coverage import coverage_map, coverage_profile, coverage_summary, receptive_field, total_stride
from seg.analysis.feature_map import valid_taps
from seg.analysis.hdc import check_hdc
from seg.analysis.layers import Layer, layer_output_size

# Coverage grids larger than this many pixels, or wider than this many characters, are left to the PNG.
MAX_GRID_SIZE = 41
MAX_GRID_WIDTH = 120


def layer_rows(layers: Sequence[Layer], input_size: Optional[int] = None) -> List[Dict]:
    """Per layer: its geometry, the receptive field and jump (input pixels between neighbouring outputs) after
    it, and, given the input size, its output size and the mean fraction of its taps inside its input map."""
    rows, rf, jump, size = [], 1, 1, input_size
    for layer in layers:
        rf += (layer.span - 1) * jump
        jump *= layer.stride
        row = {"name": layer.name, "kernel": layer.kernel, "dilation": layer.dilation, "stride": layer.stride,
               "padding": layer.padding, "span": layer.span, "receptive_field": rf, "jump": jump,
               "input_size": size, "output_size": None, "valid_taps": None}
        if size is not None:
            row["output_size"] = layer_output_size(size, layer)
            row["valid_taps"] = valid_taps(size, layer)["mean_fraction"]
            size = row["output_size"]
        rows.append(row)
    return rows


def describe_stack(layers: Sequence[Layer], input_size: Optional[int] = None) -> Dict:
    return {
        "layers": layer_rows(layers, input_size),
        "receptive_field": receptive_field(layers),
        "total_stride": total_stride(layers),
        "coverage": coverage_summary(coverage_profile(layers)),
    }


def same_grid_segment(layers: Sequence[Layer]) -> List[Layer]:
    """The layers with a spatial kernel after the last strided one: they all work on one feature grid, which
    is what the HDC rules are about (a strided layer's taps are on the grid before it)."""
    last_strided = max((i for i, layer in enumerate(layers) if layer.stride > 1), default=-1)
    return [layer for layer in layers[last_strided + 1:] if layer.kernel > 1]


def hdc_for(layers: Sequence[Layer]) -> Optional[Dict]:
    """HDC checks of ``same_grid_segment``, None for fewer than two layers (HDC is about stacking).

    With mixed kernel sizes the checks, their hole test and the suggestions use the smallest kernel.
    """
    segment = same_grid_segment(layers)
    if len(segment) < 2:
        return None
    report = check_hdc([layer.dilation for layer in segment], kernel=min(layer.kernel for layer in segment))
    report["layers"] = [layer.name for layer in segment]
    return report


def analyse_layers(layers: Sequence[Layer], feature_size: Optional[int] = None) -> Dict:
    """Everything the tool reports for an explicit stack; ``feature_size`` is the size of its input map."""
    return {"mode": "layers", "feature_size": feature_size, **describe_stack(layers, feature_size),
            "hdc": hdc_for(layers)}


# ---------------------------------------------------------------------------------------------- text output


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def coverage_grid(profile: Sequence[int]) -> Optional[str]:
    """The 2-D coverage counts as a text grid ('.' for holes), or None when it would be too wide."""
    counts = coverage_map(profile)
    width = len(str(counts.max())) + 1
    if len(profile) > MAX_GRID_SIZE or len(profile) * width > MAX_GRID_WIDTH:
        return None
    return "\n".join("".join(f"{c if c else '.':>{width}}" for c in row) for row in counts)


def format_coverage(coverage: Dict, what: str) -> List[str]:
    size = coverage["size"]
    lines = []
    grid = coverage_grid(coverage["profile"])
    if grid is not None:
        lines += [f"coverage of {what} (paths through each pixel, '.' = never used):", grid]
    if coverage["holes"]:
        lines.append(f"holes: {coverage['holes']} of the {size * size} pixels of the {size}x{size} receptive "
                     f"field are never used ({1 - coverage['used_fraction']:.1%}): gridding; 1-D hole offsets "
                     f"{_join(coverage['hole_offsets'][:12])}{', ...' if len(coverage['hole_offsets']) > 12 else ''}")
    else:
        lines.append(f"no holes: every pixel of the {size}x{size} receptive field is used "
                     f"(up to {coverage['max_count']} paths per pixel)")
    if grid is None:
        lines.append("(grid too large for text: save a heat map with png=FILE)")
    return lines


def format_hdc(hdc: Dict, where: str) -> List[str]:
    verdict = "pass" if hdc["ok"] else "FAIL"
    lines = [f"HDC check of {where} (kernel {hdc['kernel']}, rates {_join(hdc['rates'])}): {verdict}"]
    for name, check in hdc["checks"].items():
        lines.append(f"  [{'ok' if check['ok'] else 'FAIL'}] {name.replace('_', ' ')}: {check['detail']}")
    lines.append(f"  [{'FAIL' if hdc['has_holes'] else 'ok'}] coverage: "
                 f"{'holes on its input grid' if hdc['has_holes'] else 'no holes on its input grid'}")
    if hdc["suggestions"]:
        lines.append("  suggested rates (same length, closest receptive field, pass every check, no holes):")
        for suggestion in hdc["suggestions"]:
            layers = ",".join(f"[{hdc['kernel']},{r}]" for r in suggestion["rates"])
            lines.append(f"    {_join(suggestion['rates'])}  (RF {suggestion['receptive_field']}, "
                         f"layers=[{layers}])")
    return lines


def _format_layers_report(report: Dict) -> List[str]:
    sized = report["feature_size"] is not None
    header = f"{'layer':<8}{'k':>3}{'d':>4}{'s':>3}{'p':>4}{'span':>6}{'RF':>6}{'jump':>6}"
    lines = [header + (f"{'in':>6}{'out':>6}{'taps in map':>13}" if sized else "")]
    for row in report["layers"]:
        line = (f"{row['name']:<8}{row['kernel']:>3}{row['dilation']:>4}{row['stride']:>3}{row['padding']:>4}"
                f"{row['span']:>6}{row['receptive_field']:>6}{row['jump']:>6}")
        if sized:
            line += f"{row['input_size']:>6}{row['output_size']:>6}{row['valid_taps']:>13.1%}"
        lines.append(line)
    lines.append(f"receptive field: {report['receptive_field']}x{report['receptive_field']} input pixels "
                 f"(total stride {report['total_stride']})")
    lines += format_coverage(report["coverage"], "one output pixel over the input")
    if report["hdc"] is not None:
        lines += format_hdc(report["hdc"], f"layers {_join(report['hdc']['layers'])}")
    return lines


def _format_model_report(report: Dict) -> List[str]:
    model = report["model"]
    head = model.get("head", "deeplabv3")
    blocks = model.get("cascade_blocks", 0)
    last = f"block{4 + blocks}" if head == "cascade" else "backbone"
    rates = _join(model["aspp_rates"])
    what = {"cascade": f"cascade {'block5' if blocks == 1 else 'block5-' + last} after block4, then a 1x1 classifier"
            if blocks else
            "cascade of no block (block4, then a 1x1 classifier)",
            "deeplabv2": f"DeepLab v2 ASPP-L rates {rates} (summed)"}.get(head, f"ASPP rates {rates}")
    lines = [f"{model['backbone']}, output stride {model['output_stride']}, multi-grid {_join(model['multi_grid'])}, "
             f"{what}; input {report['input_size']}x{report['input_size']} -> "
             f"features {report['feature_size']}x{report['feature_size']}",
             f"main path read from the model: {len(report['layers'])} layers",
             f"{'stage':<8}{'layers':>7}  {'k x k convs: kernel/dilation':<36}{'stride':>7}{'RF':>6}{'size':>6}"]
    for stage in report["stages"]:
        spatial = " ".join(f"{k}/{d}" for k, d in stage["spatial"])
        lines.append(f"{stage['stage']:<8}{stage['layers']:>7}  {spatial:<36}{stage['stride']:>7}"
                     f"{stage['receptive_field']:>6}{stage['output_size']:>6}")
    lines.append(f"receptive field of the {last} output: {report['receptive_field']}x{report['receptive_field']} "
                 f"input pixels (total stride {report['total_stride']})")
    lines += format_coverage(report["coverage"], f"one {last} output pixel over the input")
    size = report["feature_size"]
    if report["aspp"]:
        lines.append(f"{'ASPP-L' if head == 'deeplabv2' else 'ASPP'} branches at a {size}x{size} feature map (RF: "
                     f"backbone + branch conv; taps inside the map: mean fraction / positions with all / with one)")
    for branch in report["aspp"]:
        if branch["kernel"] is None:
            lines.append(f"  {branch['branch']}  image pooling: global, every input pixel at any image size")
            continue
        taps = branch["valid_taps"]
        holes = f"{branch['holes']} holes" if branch["holes"] else "no holes"
        lines.append(f"  {branch['branch']}  {branch['kernel']}x{branch['kernel']} rate {branch['rate']:<3} "
                     f"RF {branch['receptive_field']:>5} ({holes})  taps {taps['mean_fraction']:6.1%} / "
                     f"{taps['all_valid']:6.1%} / {taps['one_valid']:6.1%}")
    for stage in report["dilated_stages"]:
        lines.append(f"dilated stage {stage['stage']}: its {len(stage['rates'])} spatial convs on one feature grid "
                     f"(rates {_join(stage['rates'])})")
        lines += format_coverage(stage["coverage"], f"one {stage['stage']} output over that grid")
        lines += format_hdc(stage["hdc"], stage["stage"])
        if stage["note"]:
            lines.append(f"  note: {stage['note']}")
    return lines


def format_stack_report(report: Dict) -> List[str]:
    """The lines of a ``layers`` or ``model`` report (``seg.analysis.text.format_report`` takes every mode)."""
    return (_format_model_report if report["mode"] == "model" else _format_layers_report)(report)
