"""Check a dilated-convolution design before training: receptive field, gridding holes, HDC, ASPP taps.

    python scripts/receptive_field.py layers=[[3,1],[3,2],[3,5]] [feature_size=65]
    python scripts/receptive_field.py backbone=resnet50 os=16 model.multi_grid=[1,2,4] \\
        [model.aspp_rates=[6,12,18]] [input_size=513] [feature_size=33] [png=out.png [overwrite=true]] [--json]
    python scripts/receptive_field.py backbone=resnet50 model.head=cascade [model.cascade_blocks=3]   # or deeplabv2
    python scripts/receptive_field.py backbone=resnet50 os=16 model.head=context [model.context=large]
    python scripts/receptive_field.py model=unet_dilated [model.unet_widths=[...]] [input_size=512]

A layer is [kernel, dilation(, stride(, padding))]; padding defaults to "same". Keys use the project's
names; no Hydra run directory is created. The analysis itself is in seg.analysis.
"""

from __future__ import annotations

import argparse
import json
import sys

from omegaconf import OmegaConf

from seg.analysis import analyse_layers, format_report, parse_layers
from seg.config import flatten
from seg.errors import UserError
from seg.outputs import check_outputs

KEYS = {"layers", "backbone", "backbone.name", "os", "model.multi_grid", "model.aspp_rates", "input_size",
        "feature_size", "png", "json", "overwrite", "model", "model.head", "model.cascade_blocks", "model.context",
        "model.unet_widths"}


def analyse(options: dict) -> dict:
    """The one place where command keys become keyword arguments."""
    if "layers" in options:
        if "backbone" in options or "backbone.name" in options:
            raise ValueError("give either layers=... or backbone=..., not both")
        if "input_size" in options:
            raise ValueError("for layers=..., the size of the map the stack runs on is feature_size=...")
        return analyse_layers(parse_layers(options["layers"]), options.get("feature_size"))
    if options.get("model") is not None or options.get("model.head") in ("context", "unet_dilated"):
        return analyse_family(options)
    backbone = options.get("backbone.name", options.get("backbone"))
    if backbone is None:
        raise ValueError("nothing to analyse: give layers=[[3,1],[3,2],[3,5]] or backbone=resnet50 os=16")
    from seg.analysis.model import analyse_config  # imports torch and builds the model

    return analyse_config(backbone, output_stride=options.get("os", 16),
                          multi_grid=options.get("model.multi_grid", (1, 2, 4)),
                          aspp_rates=options.get("model.aspp_rates"), input_size=options.get("input_size", 513),
                          feature_size=options.get("feature_size"), head=options.get("model.head", "deeplabv3"),
                          cascade_blocks=options.get("model.cascade_blocks", 3))


def analyse_family(options: dict) -> dict:
    """The context module (model.head=context) and the dilated U-Net (model=unet_dilated)."""
    if options.get("model", "unet_dilated") != "unet_dilated":
        raise ValueError(f"model must be unet_dilated here (a peer preset has the backbone's analysis: give its "
                         f"backbone= and os=), got {options['model']!r}")
    if options.get("png") or "feature_size" in options:
        raise ValueError("png= and feature_size= are for backbone=... with the ASPP and for layers=...")
    if options.get("model") == "unet_dilated" or options.get("model.head") == "unet_dilated":
        from seg.analysis.unet import analyse_unet_config

        return analyse_unet_config(options.get("model.unet_widths"), options.get("input_size", 512))
    from seg.analysis.context import analyse_context_config

    return analyse_context_config(options.get("backbone.name", options.get("backbone", "resnet50")),
                                  options.get("model.context") or "basic", options.get("os", 16),
                                  options.get("model.multi_grid", (1, 2, 4)), options.get("input_size", 513))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"keys: {', '.join(sorted(KEYS))}")
    parser.add_argument("--json", action="store_true", help="print the analysis as one JSON object")
    args = parser.parse_args(argv)
    # model=<preset> beside model.<key>=...: OmegaConf would make "model" a section and drop the preset's name
    presets = {arg.partition("=")[2] for arg in args.overrides if arg.startswith("model=")}
    try:
        options = flatten(OmegaConf.to_container(OmegaConf.from_cli(
            [arg for arg in args.overrides if not arg.startswith("model=")])))
    except Exception as error:  # OmegaConf's grammar errors
        parser.error(f"cannot parse {args.overrides}: {error}")
    if presets:
        options["model"] = presets.pop() if len(presets) == 1 else parser.error("give model= once")
    unknown = sorted(set(options) - KEYS)
    if unknown:
        parser.error(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KEYS))}")
    if options.get("png"):  # before any work: the file must be free, a figure of this command's, or overwrite=true
        if not isinstance(options.get("overwrite", False), bool):
            parser.error(f"overwrite must be true or false, got {options['overwrite']!r}")
        try:
            check_outputs([options["png"]], {}, "figure", options.get("overwrite", False), key="png")
        except UserError as error:
            sys.exit(f"error: {error}")
    try:
        report = analyse(options)
    except ValueError as error:
        parser.error(str(error))
    if options.get("png"):
        from seg.analysis.plot import save_png

        try:
            report["png"] = str(save_png(report, options["png"]))
        except ImportError as error:
            sys.exit(f"error: {error}")
    if args.json or options.get("json"):
        print(json.dumps(report))
    else:
        print(format_report(report))
        if report.get("png"):
            print(f"figure saved to {report['png']}")


if __name__ == "__main__":
    main()
