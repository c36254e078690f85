"""Fixtures of the model tests: the shipped demonstration predictor, real and synthetic signals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecgcad.model.synthetic import generate

# Two cores are shared by several test runs; one intra-op thread keeps timings stable and results exact.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_predictor():
    """The shipped demonstration model on the CPU."""
    from ecgcad.model.demo import load_demo_model
    from ecgcad.model.predictor import TorchPredictor

    return TorchPredictor(load_demo_model(), device="cpu", max_batch=16)


@pytest.fixture(scope="session")
def real_ecg() -> np.ndarray:
    """pydicom's real 12-lead ECG (1000 Hz, µV), decimated to 500 Hz and scaled to mV: (12, 5000)."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    raw = ds.waveform_array(0).T  # (12, 10000), channel order I … V6
    return np.ascontiguousarray(raw[:, ::2] / 1000.0).astype(np.float32)


@pytest.fixture(scope="session")
def synthetic_small():
    """Twelve synthetic ECGs with labels (seeded)."""
    return generate(12, seed=4242)
