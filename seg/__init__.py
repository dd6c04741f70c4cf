"""DeepLabv3 semantic segmentation: models, data, training and evaluation, usable without Hydra."""

__version__ = "0.1.0"
