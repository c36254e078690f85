"""The canonical ECG that every part of ecgcad downstream of the readers speaks.

An :class:`Ecg` holds the signal as float32 millivolts with shape ``(12, n_samples)`` in the lead order
:data:`LEADS`, the sampling rate, and the identifiers copied unchanged from the source object.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import numpy as np

#: Canonical lead order: I, II, III, aVR, aVL, aVF, V1–V6 (the model input order, docs/architecture.md).
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

#: Target sampling rate and window of the model input.
TARGET_RATE_HZ = 500
TARGET_SECONDS = 10
TARGET_SAMPLES = TARGET_RATE_HZ * TARGET_SECONDS


@dataclasses.dataclass(slots=True)
class EcgIdentifiers:
    """Identifiers copied byte-for-byte from the source object (DICOM keywords / HL7 fields)."""

    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    patient_age: str | None = None
    accession_number: str | None = None
    issuer_of_accession_number: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    acquisition_datetime: dt.datetime | None = None
    device: str | None = None
    manufacturer: str | None = None
    institution_name: str | None = None
    visit_number: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (datetimes as ISO 8601)."""
        # Every field is a scalar (str, None or a datetime): no deep copy needed (asdict deep-copies).
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.acquisition_datetime is not None:
            out["acquisition_datetime"] = self.acquisition_datetime.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EcgIdentifiers:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in fields}
        if isinstance(kwargs.get("acquisition_datetime"), str):
            kwargs["acquisition_datetime"] = dt.datetime.fromisoformat(kwargs["acquisition_datetime"])
        return cls(**kwargs)


@dataclasses.dataclass(slots=True)
class Ecg:
    """A decoded resting 12-lead ECG in canonical form.

    Parameters
    ----------
    signal:
        float32 array, shape ``(12, n_samples)``, millivolts, rows in :data:`LEADS` order. Masked
        (padding) samples are NaN.
    sampling_rate:
        Samples per second of ``signal``.
    format:
        Source format: ``"dicom"``, ``"muse"``, ``"aecg"``, ``"hl7v2"``.
    identifiers:
        Identifiers copied from the source.
    derived_leads:
        Leads computed from others (e.g. III, aVR, aVL, aVF from I and II).
    source_leads:
        Lead names found in the source, in canonical spelling.
    notes:
        Dialect notes: what the reader had to fix up.
    source_units:
        Units found in the source (e.g. ``"uV"``).
    lead_names:
        Row names of ``signal`` (always :data:`LEADS`).
    channel_sensitivity:
        Per recorded lead, the source's channel sensitivity times its correction factor (source units
        per count; DICOM ChannelSensitivity × ChannelSensitivityCorrectionFactor, HL7 CD-3 × CD-4),
        where the format declares one. The gate refuses a record where one is not a positive number.
    """

    signal: np.ndarray
    sampling_rate: float
    format: str
    identifiers: EcgIdentifiers = dataclasses.field(default_factory=EcgIdentifiers)
    derived_leads: list[str] = dataclasses.field(default_factory=list)
    source_leads: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    source_units: str | None = None
    lead_names: tuple[str, ...] = LEADS
    channel_sensitivity: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.signal.ndim != 2 or self.signal.shape[0] != len(LEADS):
            raise ValueError(f"signal must have shape (12, n), got {self.signal.shape}")
        if self.signal.dtype != np.float32:
            self.signal = self.signal.astype(np.float32)
        if not self.sampling_rate > 0:
            raise ValueError("sampling_rate must be positive")

    @property
    def duration_s(self) -> float:
        """Duration of the signal in seconds."""
        return float(self.signal.shape[1]) / float(self.sampling_rate)
