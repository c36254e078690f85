"""Fixtures of the training tests: one intra-op thread (two cores are shared), small synthetic stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecgcad.training.dataset import DatasetStore, build_synthetic_store

torch.set_num_threads(1)

#: A Net1D small enough for CPU tests (filters 4…32, one block per stage).
TINY_WIDTH = 4


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> DatasetStore:
    """40 synthetic ECGs (seeded), with covariates."""
    return build_synthetic_store(tmp_path_factory.mktemp("tiny") / "data", 40, seed=3)


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    """An empty folder."""
    return tmp_path
