"""Scan a dataset split: python scripts/check_dataset.py dataset=voc dataset.root=/data/VOC [dataset.split=val]

Reads every sample, prints every problem found (missing, truncated or unreadable files, bad mask values or
modes, size mismatches), the class pixel frequencies and the image sizes. Exit code 1 if anything is wrong.
"""

import sys

import hydra
from omegaconf import DictConfig

from seg.config import dataset_kwargs, to_plain
from seg.data import DatasetError, build_dataset, check_dataset


@hydra.main(version_base="1.3", config_path="../configs", config_name="check_dataset")
def main(cfg: DictConfig) -> None:
    try:
        dataset = build_dataset(**dataset_kwargs(to_plain(cfg)["dataset"]))
    except DatasetError as error:  # the split cannot even be listed: that is the one problem to report
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"{dataset.root}: split {dataset.split!r}, {dataset.num_classes} classes")
    report = check_dataset(dataset)
    print(report.format())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
