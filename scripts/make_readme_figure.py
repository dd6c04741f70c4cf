"""The picture on README.md's front page: validation images, their labels and a checkpoint's predictions, in rows.

    python scripts/make_readme_figure.py ckpt=outputs/<run> [out=docs/images/prediction.png] [n=4] [scale=2] \\
        [overwrite=true]

The images are the first ``n`` of the validation split the checkpoint was trained with (its stored dataset config).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image, PngImagePlugin

from seg.config import dataset_kwargs, flatten
from seg.data import build_dataset
from seg.data.transforms import normalize
from seg.engine.checkpoint import CheckpointSource, checkpoint_in, palette_of
from seg.engine.inference import segment
from seg.errors import UserError
from seg.outputs import FIGURE_SOFTWARE, check_outputs
from seg.visualize import colorize

KEYS = {"ckpt", "out", "n", "scale", "overwrite"}
GAP = 4  # white pixels between the pictures


def figure(ckpt: str, n: int) -> np.ndarray:
    """Rows of (image, label, prediction) for the first ``n`` validation images, as one RGB array."""
    path = checkpoint_in(ckpt)
    source = CheckpointSource()
    state = source.state(path)
    device = torch.device("cpu")
    model = source.model(state, path, None, device)
    dataset_cfg = state["config"]["dataset"]
    dataset = build_dataset(**dataset_kwargs(dataset_cfg, split=dataset_cfg.get("val_split", "val")))
    palette = palette_of(state)
    rows = []
    for index in range(min(n, len(dataset))):
        image, mask = dataset[index]
        with torch.no_grad():
            batch = normalize(torch.from_numpy(image).permute(2, 0, 1)[None])
            labels = segment(model, batch).argmax(1)[0].numpy()
        pictures = [image, colorize(mask, palette), colorize(labels.astype(mask.dtype), palette)]
        gap = np.full((image.shape[0], GAP, 3), 255, np.uint8)
        rows.append(np.concatenate([pictures[0], gap, pictures[1], gap, pictures[2]], axis=1))
    gap = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=f"keys: {', '.join(sorted(KEYS))}")
    args = parser.parse_args(argv)
    options = flatten(OmegaConf.to_container(OmegaConf.from_cli(args.overrides)))
    unknown = sorted(set(options) - KEYS)
    if unknown or "ckpt" not in options:
        parser.error(f"give ckpt=<checkpoint or run folder>; allowed keys: {', '.join(sorted(KEYS))}")
    out = options.get("out", "docs/images/prediction.png")
    try:
        check_outputs([out], {"ckpt": options["ckpt"]}, "figure", bool(options.get("overwrite", False)), key="out")
        picture = figure(options["ckpt"], int(options.get("n", 4)))
    except UserError as error:
        sys.exit(f"error: {error}")
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", FIGURE_SOFTWARE)  # seg.outputs knows it as a figure of this project's: replaceable
    scale = int(options.get("scale", 2))  # the synthetic images are 96 px: enlarged, pixels kept sharp
    image = Image.fromarray(picture)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(out, pnginfo=info)
    print(f"figure saved to {out} ({image.width * scale}x{image.height * scale})")


if __name__ == "__main__":
    main()
