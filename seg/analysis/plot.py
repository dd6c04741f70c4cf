"""PNG figures of an analysis report (matplotlib, an optional dependency, is imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from seg.analysis.feature_map import valid_taps
from seg.analysis.layers import Layer
from seg.outputs import FIGURE_SOFTWARE


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError('saving a PNG needs matplotlib: pip install -e ".[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heat_map(axis, coverage: Dict, title: str) -> None:
    """log10 of the path counts around the centre pixel; holes (never used) stay white."""
    profile = np.array(coverage["profile"], dtype=float)
    counts = np.outer(profile, profile)
    image = np.ma.masked_where(counts == 0, np.log10(np.maximum(counts, 1)))
    half = coverage["size"] / 2
    artist = axis.imshow(image, cmap="viridis", interpolation="nearest", extent=(-half, half, half, -half))
    axis.set_facecolor("white")
    axis.figure.colorbar(artist, ax=axis, fraction=0.046, pad=0.04).set_label("log10(paths)", fontsize=8)
    holes = f", {1 - coverage['used_fraction']:.0%} holes (white)" if coverage["holes"] else ", no holes"
    axis.set_title(f"{title}\nRF {coverage['size']}x{coverage['size']}{holes}", fontsize=9)
    axis.set_xlabel("offset from the centre (pixels)", fontsize=8)
    axis.tick_params(labelsize=7)


def _taps_curve(axis, report: Dict) -> None:
    """Fraction of 3x3 weights inside the feature map against the rate (DeepLabv3 Fig. 4), ASPP rates marked."""
    size = report["feature_size"]
    rates = np.arange(1, 2 * size + 1)
    stats = [valid_taps(size, Layer(3, int(rate))) for rate in rates]
    for key, label in (("mean_fraction", "mean fraction of weights"), ("all_valid", "positions with all 9"),
                       ("one_valid", "positions with only the centre")):
        axis.plot(rates, [s[key] for s in stats], label=label)
    axis.axhline(1 / 9, color="grey", linestyle=":", linewidth=1)
    for branch in report["aspp"]:
        if branch["kind"] == "conv" and branch["kernel"] > 1:
            axis.axvline(branch["rate"], color="black", linestyle="--", linewidth=0.8)
    axis.set_title(f"3x3 taps inside a {size}x{size} map\n(dashed: ASPP rates, dotted: 1/9)", fontsize=9)
    axis.set_xlabel("rate", fontsize=8)
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=7)
    axis.tick_params(labelsize=7)


def save_png(report: Dict, path: Union[str, Path]) -> Path:
    """Coverage heat map(s) of a report; for a model also its last dilated stage and the ASPP tap fractions."""
    plt = _pyplot()
    if report["mode"] == "model":
        panels = 2 + bool(report["dilated_stages"])
        figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), dpi=80)
        model = report["model"]
        _heat_map(axes[0], report["coverage"], f"{model['backbone']} OS{model['output_stride']}: "
                                               f"input pixels of one output")
        if report["dilated_stages"]:
            stage = report["dilated_stages"][-1]
            _heat_map(axes[1], stage["coverage"], f"{stage['stage']} (rates {', '.join(map(str, stage['rates']))}) "
                                                  f"over its input grid")
        _taps_curve(axes[-1], report)
    else:
        figure, axis = plt.subplots(figsize=(4.2, 4), dpi=80)
        rates = ", ".join(str(row["dilation"]) for row in report["layers"])
        _heat_map(axis, report["coverage"], f"rates {rates}: input pixels of one output")
    figure.tight_layout()
    figure.canvas.draw()
    # The viridis heat maps have at most 256 colours: a palette PNG is about five times smaller, same image.
    image = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3])
    plt.close(figure)
    info = PngInfo()
    info.add_text("Software", FIGURE_SOFTWARE)  # how seg.outputs knows the file as this command's figure
    image.quantize(256).save(path, optimize=True, pnginfo=info)
    return Path(path)
