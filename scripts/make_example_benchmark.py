"""Write a tiny copy of a benchmark dataset's layout: python scripts/make_example_benchmark.py format=ade20k out=DIR

``format`` is ``ade20k``, ``coco_stuff`` or ``pascal_context``; the synthetic shapes are stored with that dataset's
own values and file names, so ``dataset=<format> dataset.root=DIR`` checks, trains and evaluates on it. See
docs/datasets.md.
"""

import hydra
from omegaconf import DictConfig

from seg.config import overwrite_flag, to_plain
from seg.data.benchmark_examples import write_benchmark_example
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_example_benchmark")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    cfg = to_plain(cfg)
    out = write_benchmark_example(cfg["format"], cfg["out"], num_images=cfg["num_images"],
                                  image_size=cfg["image_size"], seed=cfg["seed"], overwrite=overwrite_flag(cfg))
    print(f"wrote {cfg['num_images']} images in the {cfg['format']} layout to {out}; try: python "
          f"scripts/check_dataset.py dataset={cfg['format']} dataset.root={out} dataset.split=all")


if __name__ == "__main__":
    check_overrides(__file__, "make_example_benchmark")
    main()
