"""Write a small "own data" folder to try dataset=folder on: python scripts/make_example_folder.py out=DIR

``format=coco_json|labelme|cvat|roboflow`` writes the same images as that annotation tool's export instead (CVAT's
COCO 1.0 layout, LabelMe files, CVAT's Segmentation mask 1.1, Roboflow's Semantic Segmentation Masks), to see the
layout ``dataset=<format>`` reads (docs/datasets.md, "Annotation tools' exports").

``DIR/images/`` and ``DIR/masks/`` (two sub-folders each) with the synthetic shapes, colour-coded RGB masks and their
colour table ``DIR/classes.csv`` (``masks=index``: palette PNGs of class indices instead).
docs/own-data.md goes from this folder to a checked, trained, evaluated and exported model.
"""

import hydra
from omegaconf import DictConfig

from seg.config import overwrite_flag, to_plain
from seg.data.export_examples import write_export_example
from seg.data.synthetic import write_folder_example
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_example_folder")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    cfg = to_plain(cfg)
    if cfg["format"] != "folder":
        written = write_export_example(cfg["out"], cfg["format"], num_images=cfg["num_images"],
                                       image_size=cfg["image_size"], num_classes=cfg["num_classes"], seed=cfg["seed"],
                                       overwrite=overwrite_flag(cfg))
        print(f"wrote {len(written)} images as a {cfg['format']} export to {cfg['out']}: python scripts/train.py "
              f"dataset={cfg['format']} dataset.root={cfg['out']}")
        return
    out = write_folder_example(cfg["out"], num_images=cfg["num_images"], image_size=cfg["image_size"],
                               num_classes=cfg["num_classes"], masks=cfg["masks"], seed=cfg["seed"],
                               overwrite=overwrite_flag(cfg))
    extra = f" and the colour table {out / 'classes.csv'}" if cfg["masks"] == "rgb" else ""
    print(f"wrote {cfg['num_images']} images to {out / 'images'}, their masks to {out / 'masks'}{extra}")


if __name__ == "__main__":
    check_overrides(__file__, "make_example_folder")
    main()
