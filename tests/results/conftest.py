"""Fixtures for the result-object tests: report inputs built from pydicom's real ECG, validator tools."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ecgcad.integration.formats.ecg import EcgIdentifiers
from ecgcad.integration.reports.content import StenosisReportInput

ECG_PATH = Path(str(get_testdata_file("waveform_ecg.dcm")))
THRESHOLDS = {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}
PROBABILITIES = {"rca": 0.42, "lm": 0.004, "lad": 0.09, "lcx": 0.15}
SHA = "ab" * 32


def identifiers_from(ds: pydicom.Dataset) -> EcgIdentifiers:
    """Identifiers as the DICOM reader copies them (unchanged strings)."""
    return EcgIdentifiers(
        patient_id=ds.PatientID,
        issuer_of_patient_id=ds.get("IssuerOfPatientID"),
        patient_name=str(ds.PatientName),
        patient_birth_date=ds.PatientBirthDate,
        patient_sex=ds.PatientSex,
        accession_number=ds.AccessionNumber,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        acquisition_datetime=dt.datetime(2013, 1, 25, 10, 59, 19),
        manufacturer=ds.get("Manufacturer"),
    )


def synthetic_signal(seed: int = 0) -> np.ndarray:
    """A plausible 10-s 12-lead ECG in mV (QRS-like spikes at 75 bpm plus noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(5000) / 500.0
    beat = np.zeros_like(t)
    for centre in np.arange(0.4, 10, 0.8):
        beat += 1.2 * np.exp(-(((t - centre) / 0.012) ** 2)) - 0.2 * np.exp(
            -(((t - centre - 0.03) / 0.02) ** 2)
        )
        beat += 0.25 * np.exp(-(((t - centre - 0.25) / 0.06) ** 2))
    gains = np.linspace(0.4, 1.3, 12)[:, None]
    return (gains * beat + 0.02 * rng.standard_normal((12, 5000))).astype(np.float32)


@pytest.fixture(scope="session")
def ecg_dataset() -> pydicom.Dataset:
    """pydicom's real Mortara ECG, with an issuer of Patient ID added (to prove issuers are copied)."""
    ds = pydicom.dcmread(ECG_PATH)
    ds.IssuerOfPatientID = "HOSP-MRN"
    return ds


@pytest.fixture(scope="session")
def ecg_bytes(ecg_dataset: pydicom.Dataset, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("src") / "ecg.dcm"
    ecg_dataset.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def make_input(
    ecg_dataset: pydicom.Dataset | None, ecg_bytes: bytes | None, **over: object
) -> StenosisReportInput:
    """A scored report input; keyword arguments override fields."""
    ident = identifiers_from(ecg_dataset) if ecg_dataset is not None else EcgIdentifiers(patient_id="P1")
    flags = {v: PROBABILITIES[v] >= THRESHOLDS[v] for v in THRESHOLDS}
    sig = synthetic_signal()
    kwargs: dict[str, object] = dict(
        identifiers=ident,
        source_dataset_bytes=ecg_bytes,
        result_id=7,
        result_version=1,
        scorable=True,
        probabilities=dict(PROBABILITIES),
        thresholds=dict(THRESHOLDS),
        flags=flags,
        model_name="ecgfounder-cad4",
        model_version="0.1.0-demo",
        checkpoint_sha256=SHA,
        preprocessing={"notch_hz": 50, "bandpass_hz": [0.67, 40], "zscore": "per_lead"},
        window_policy="first",
        demonstration=True,
        intended_use="Decision support for adults; not a diagnosis.",
        result_time=dt.datetime(2024, 5, 6, 7, 8, 9),
        signal=sig,
        explanations={
            "rca": [{"lead": "III", "start": 1000, "end": 1400}],
            "lcx": [{"lead": "V5", "start": 6.0, "end": 6.8}],
        },
        median_beats=sig[:, 100:500].copy(),
        placer_order_number="PL123",
        filler_order_number="FL456",
    )
    kwargs.update(over)
    return StenosisReportInput(**kwargs)  # type: ignore[arg-type]


def not_evaluated_input(
    ecg_dataset: pydicom.Dataset, ecg_bytes: bytes, **over: object
) -> StenosisReportInput:
    """A not-evaluated report input (the ECG failed the gate)."""
    kw: dict[str, object] = dict(
        scorable=False,
        probabilities={},
        flags={},
        not_evaluated_reason=("AGE", "Patient younger than 18 years"),
    )
    kw.update(over)
    return make_input(ecg_dataset, ecg_bytes, **kw)


def tool(name: str) -> str:
    """Path of an external tool, or a visible skip."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def pyscp() -> Iterator[Any]:
    """A pynetdicom storage SCP (``tests.results.test_senders.StorageScp``), closed after the test."""
    from tests.results.test_senders import StorageScp  # the module imports this one

    scp = StorageScp()
    try:
        yield scp
    finally:
        scp.close()
