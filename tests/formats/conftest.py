"""Fixtures for the format reader, signal and gate tests: real signals and encoded files."""

from __future__ import annotations

import numpy as np
import pytest

from ecgcad.integration.formats.ecg import Ecg
from ecgcad.testing import ecg_writers as w


@pytest.fixture(scope="session")
def real_bytes() -> bytes:
    """pydicom's real Mortara 12-lead ECG."""
    return w.real_dicom_ecg_bytes()


@pytest.fixture(scope="session")
def x500() -> np.ndarray:
    """The real ECG, 10 s at 500 Hz, (12, 5000) mV."""
    return w.real_signal(500.0)


@pytest.fixture(scope="session")
def x1000() -> np.ndarray:
    """The real ECG, 10 s at 1000 Hz, (12, 10000) mV."""
    return w.real_signal(1000.0)


@pytest.fixture
def real(real_bytes: bytes) -> Ecg:
    """The real ECG decoded (fresh per test: tests may modify it)."""
    from ecgcad.integration.formats.readers import decode

    return decode(real_bytes)
