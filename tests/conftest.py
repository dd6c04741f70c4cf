"""Fixtures shared by the test files: tiny composed configurations of the real Hydra configs.

``cfg_train(**overrides)`` and ``cfg_eval(ckpt, *overrides)`` return plain dicts composed from ``configs/`` with
the tiny settings of ``helpers.tiny_overrides`` (resnet18, 64 px synthetic images, two iterations), so a test
states only what it changes. The synthetic images are generated once per test session.
"""

from __future__ import annotations

import seg  # noqa: F401  before torch, as in the scripts: the same OpenMP wait policy, so the same thread count

# isort: split
import pytest
from helpers import compose_config, tiny_overrides


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One tiny synthetic dataset for the whole session (generated on first use by the reader)."""
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture
def cfg_train(data_root):
    def make(**overrides) -> dict:
        return compose_config("train", tiny_overrides(data_root, **overrides))
    return make


@pytest.fixture
def cfg_eval():
    def make(ckpt, *overrides: str) -> dict:
        return compose_config("evaluate", [f"ckpt={ckpt}", "num_workers=0", *overrides])
    return make
