"""Scan a dataset split: python scripts/check_dataset.py dataset=voc dataset.root=/data/VOC [dataset.split=val]

Reads every sample, prints every problem found (files that cannot be paired, missing, truncated or unreadable
files, bad mask values, colours or modes, size mismatches), the class pixel frequencies with suggested class
weights, the image sizes and the per-channel mean and std (with the command that trains with them). Exit code 1
if anything is wrong.
"""

import sys

import hydra
from omegaconf import DictConfig

from seg.config import dataset_kwargs, to_plain
from seg.data import build_dataset, check_dataset
from seg.errors import exit_on_user_error
from seg.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../configs", config_name="check_dataset")
@exit_on_user_error  # a split that cannot even be listed is the one problem to report
def main(cfg: DictConfig) -> None:
    dataset = build_dataset(**dataset_kwargs(to_plain(cfg)["dataset"]), strict=False)
    print(f"{dataset.root}: split {dataset.split!r}, {dataset.num_classes} classes")
    report = check_dataset(dataset)
    train = f"python scripts/train.py dataset={cfg.dataset.name} dataset.root={cfg.dataset.root} ..."
    print(report.format(command=train))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    check_overrides(__file__, "check_dataset")
    main()
