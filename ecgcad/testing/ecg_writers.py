"""Writers of ECG test material in every format ecgcad reads, built from real signals.

Shared by the test suites of all areas and by integrators who need sample input. Every writer takes a
canonical :class:`~ecgcad.integration.formats.ecg.Ecg` *or* a ``(12, n)`` millivolt array (rows in
:data:`~ecgcad.integration.formats.ecg.LEADS` order) plus its sampling rate, quantises it the way the vendor format
does, and returns the encoded bytes:

- :func:`real_dicom_ecg_bytes` / :func:`real_ecg` — pydicom's real Mortara 12-lead ECG (1000 Hz, µV);
- :func:`real_signal` — that ECG's 10 s as a ``(12, n)`` mV array at any rate;
- :func:`build_dicom_ecg` — DICOM waveform objects with edge cases (SCPECG/MDC/label-only coding, shuffled
  channels, −aVR, missing sensitivity, padding, median groups, 8-lead, other SOP classes, transfer syntaxes);
- :func:`write_muse_xml` — GE MUSE ``RestingECG`` (MUSE 9 and NX flavours);
- :func:`write_aecg_xml` — HL7 v3 ``AnnotatedECG``;
- :func:`write_hl7_oru_ed` — ORU^R01 with the ECG in an ``ED`` OBX;
- :func:`write_hl7_oru_waveform` — ORU^R01 with Chapter 7 waveform OBX (``CD`` + ``TS`` + ``MA``/``NA``).

The default identifiers are :data:`TEST_IDENTIFIERS` (a made-up patient), so tests can check that they
arrive unchanged and never appear in logs.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import io
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from ecgcad.integration.formats.ecg import LEADS, Ecg, EcgIdentifiers
from ecgcad.integration.transport.mllp import frame

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
GENERAL_32BIT_ECG = "1.2.840.10008.5.1.4.1.1.9.1.4"
AMBULATORY_ECG = "1.2.840.10008.5.1.4.1.1.9.1.3"
HEMODYNAMIC = "1.2.840.10008.5.1.4.1.1.9.2.1"

#: The 8 leads MUSE (and many carts) store; the other four are derived on reading.
EIGHT_LEADS: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")

#: A made-up patient and order used by every writer unless told otherwise.
TEST_IDENTIFIERS = EcgIdentifiers(
    patient_id="ZZTEST-4711",
    issuer_of_patient_id="ECGCAD-TEST",
    patient_name="Testperson^Quentin",
    patient_birth_date="19650412",
    patient_sex="M",
    patient_age="059Y",
    accession_number="ACC20240001",
    placer_order_number="PL-31337",
    filler_order_number="FI-42424",
    study_instance_uid="1.2.826.0.1.3680043.10.543.2024.1",
    series_instance_uid="1.2.826.0.1.3680043.10.543.2024.1.1",
    sop_instance_uid="1.2.826.0.1.3680043.10.543.2024.1.1.1",
    acquisition_datetime=dt.datetime(2024, 3, 5, 9, 30, 15),
    device="TESTCART 1",
    manufacturer="ecgcad tests",
    visit_number="V-9001",
)

_MDC_CODES = {
    "I": "2:1",
    "II": "2:2",
    "III": "2:61",
    "aVR": "2:62",
    "aVL": "2:63",
    "aVF": "2:64",
    **{f"V{i}": f"2:{i + 2}" for i in range(1, 7)},
}
_SCPECG_CODES = {
    "I": "5.6.3-9-1",
    "II": "5.6.3-9-2",
    "III": "5.6.3-9-61",
    "aVR": "5.6.3-9-62",
    "aVL": "5.6.3-9-63",
    "aVF": "5.6.3-9-64",
    **{f"V{i}": f"5.6.3-9-{i + 2}" for i in range(1, 7)},
}
_MEANINGS = {
    "I": "Lead I",
    "II": "Lead II",
    "III": "Lead III",
    "aVR": "Lead aVR",
    "aVL": "Lead aVL",
    "aVF": "Lead aVF",
}


# --------------------------------------------------------------------------------------------- real ECG


def real_dicom_ecg_bytes() -> bytes:
    """The bytes of pydicom's real 12-lead ECG (``waveform_ecg.dcm``: Mortara, 1000 Hz, µV, rhythm + median)."""
    return _real_bytes()


@functools.cache
def _real_bytes() -> bytes:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    if path is None:  # pragma: no cover - pydicom always ships it
        raise FileNotFoundError("pydicom test file waveform_ecg.dcm not found")
    with open(str(path), "rb") as fh:
        return fh.read()


def real_ecg() -> Ecg:
    """pydicom's real ECG decoded by ecgcad (a fresh object each call)."""
    from ecgcad.integration.formats.readers import decode

    return decode(real_dicom_ecg_bytes())


def real_signal(sampling_rate: float = 500.0, seconds: float = 10.0) -> np.ndarray:
    """The real ECG as a ``(12, n)`` float32 mV array at ``sampling_rate``, tiled to ``seconds`` if longer.

    Parameters
    ----------
    sampling_rate:
        Target rate in Hz (polyphase resampling from 1000 Hz).
    seconds:
        Duration; a record longer than 10 s repeats the real 10 s.
    """
    from ecgcad.integration.formats.signal import resample_to

    ecg = real_ecg()
    x = resample_to(ecg.signal, ecg.sampling_rate, sampling_rate)
    n = int(round(seconds * sampling_rate))
    reps = -(-n // x.shape[1])
    return np.ascontiguousarray(np.tile(x, (1, reps))[:, :n], dtype=np.float32)


def _as_signal(
    ecg_or_signal: Ecg | np.ndarray, sampling_rate: float | None
) -> tuple[np.ndarray, float, EcgIdentifiers]:
    if isinstance(ecg_or_signal, Ecg):
        return (
            ecg_or_signal.signal,
            float(sampling_rate or ecg_or_signal.sampling_rate),
            ecg_or_signal.identifiers,
        )
    signal = np.asarray(ecg_or_signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(LEADS):
        raise ValueError(f"signal must be (12, n) in LEADS order, got {signal.shape}")
    if sampling_rate is None:
        raise ValueError("sampling_rate is required with a bare array")
    return signal, float(sampling_rate), TEST_IDENTIFIERS


def _ids(
    identifiers: EcgIdentifiers | None, fallback: EcgIdentifiers, overrides: dict[str, Any]
) -> EcgIdentifiers:
    base = identifiers if identifiers is not None else TEST_IDENTIFIERS
    if fallback is not TEST_IDENTIFIERS and identifiers is None:
        base = dataclasses.replace(
            TEST_IDENTIFIERS, **{k: v for k, v in dataclasses.asdict(fallback).items() if v is not None}
        )
    return dataclasses.replace(base, **overrides) if overrides else base


def _quantise(x: np.ndarray, step_mv: float, dtype: str = "<i2") -> np.ndarray:
    info = np.iinfo(np.dtype(dtype))
    counts = np.rint(np.nan_to_num(x) / step_mv)
    return np.clip(counts, info.min, info.max).astype(dtype)


# ------------------------------------------------------------------------------------------------ DICOM


def build_dicom_ecg(
    signal: np.ndarray | Ecg | None = None,
    sampling_rate: float | None = None,
    *,
    leads: Sequence[str] = LEADS,
    coding: str = "MDC",
    channel_order: Sequence[int] | None = None,
    units: str = "uV",
    sensitivity: float = 2.5,
    correction: float = 1.0,
    baseline: float = 0.0,
    padding_value: int | None = None,
    pad_samples: Sequence[int] = (),
    no_sensitivity: Sequence[str] = (),
    minus_avr: bool = False,
    include_median: bool = True,
    median_first: bool = True,
    rhythm_originality: str = "ORIGINAL",
    sop_class_uid: str = TWELVE_LEAD_ECG,
    bits: int = 16,
    transfer_syntax: str = "explicit",
    duplicate_lead: str | None = None,
    unknown_label: str | None = None,
    identifiers: EcgIdentifiers | None = None,
) -> bytes:
    """Build a DICOM ECG waveform object.

    Parameters
    ----------
    signal, sampling_rate:
        ``(12, n)`` mV (LEADS order) or an :class:`Ecg`; default: the real ECG at 500 Hz.
    leads:
        Which leads to store (e.g. :data:`EIGHT_LEADS`).
    coding:
        ``"MDC"``, ``"SCPECG"``, ``"meaning"`` (CodeMeaning only, unknown code) or ``"label"`` (no
        ChannelSourceSequence code; ChannelLabel only).
    channel_order:
        Permutation of ``leads`` positions for the stored channel order (shuffled channels).
    units, sensitivity, correction, baseline:
        Channel sensitivity units (UCUM), sensitivity (units per count), correction factor and baseline
        (in ``units``); physical = count × sensitivity × correction + baseline.
    padding_value, pad_samples:
        WaveformPaddingValue and the sample indices (all channels) written with it.
    no_sensitivity:
        Leads written without ChannelSensitivity.
    minus_avr:
        Store −aVR (MDC ``2:65``, negated values) instead of aVR.
    include_median, median_first:
        Add a DERIVED median-beat group (1.2 s), before the rhythm group by default.
    rhythm_originality:
        WaveformOriginality of the rhythm group.
    sop_class_uid:
        SOP Class UID (e.g. :data:`AMBULATORY_ECG` to test refusal).
    bits:
        16 (``SS``) or 32 (``SL``, General 32-bit ECG).
    transfer_syntax:
        ``"explicit"``, ``"implicit"`` or ``"deflated"``.
    duplicate_lead, unknown_label:
        Add a channel duplicating this lead / a channel with this unknown label.
    identifiers:
        Patient / study identifiers (default :data:`TEST_IDENTIFIERS`).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    if signal is None:
        sampling_rate = sampling_rate or 500.0
        signal = real_signal(sampling_rate)
    x, rate, source_ids = _as_signal(signal, sampling_rate)
    ids = _ids(identifiers, source_ids, {})
    order = list(leads)
    if channel_order is not None:
        order = [order[i] for i in channel_order]
    unit_mv = {"uV": 1e-3, "mV": 1.0, "V": 1e3}[units]
    step_mv = sensitivity * correction * unit_mv
    dtype, interp = ("<i2", "SS") if bits == 16 else ("<i4", "SL")

    def channel_item(name: str, stored_name: str) -> Dataset:
        ch = Dataset()
        src = Dataset()
        if coding == "MDC":
            src.CodeValue = "2:65" if stored_name == "-aVR" else _MDC_CODES[name]
            src.CodingSchemeDesignator = "MDC"
            src.CodeMeaning = "-aVR" if stored_name == "-aVR" else _MEANINGS.get(name, f"Lead {name}")
        elif coding == "SCPECG":
            src.CodeValue = _SCPECG_CODES[name]
            src.CodingSchemeDesignator = "SCPECG"
            src.CodingSchemeVersion = "1.3"
            src.CodeMeaning = _MEANINGS.get(name, f"Lead {name}") + (" (Einthoven)" if name == "I" else "")
        elif coding == "meaning":
            src.CodeValue = "99-LOCAL"
            src.CodingSchemeDesignator = "99VENDOR"
            src.CodeMeaning = "Lead " + stored_name
        if coding != "label":
            ch.ChannelSourceSequence = DicomSequence([src])
        ch.ChannelLabel = stored_name
        if stored_name.split()[0] not in no_sensitivity and name not in no_sensitivity:
            ch.ChannelSensitivity = f"{sensitivity:g}"
            unit = Dataset()
            unit.CodeValue = units
            unit.CodingSchemeDesignator = "UCUM"
            unit.CodeMeaning = {"uV": "microvolt", "mV": "millivolt", "V": "volt"}[units]
            ch.ChannelSensitivityUnitsSequence = DicomSequence([unit])
        ch.ChannelSensitivityCorrectionFactor = f"{correction:g}"
        ch.ChannelBaseline = f"{baseline:g}"
        ch.ChannelSampleSkew = "0"
        ch.WaveformBitsStored = bits
        return ch

    def group(data: np.ndarray, originality: str, label: str) -> Dataset:
        cols, chans = [], []
        for name in order:
            values = data[LEADS.index(name)]
            stored = name
            if name == "aVR" and minus_avr:
                values, stored = -values, "-aVR"
            cols.append(_quantise(values - baseline * unit_mv, step_mv, dtype))
            chans.append(channel_item(name, stored))
        if duplicate_lead is not None:
            cols.append(_quantise(data[LEADS.index(duplicate_lead)], step_mv, dtype))
            chans.append(channel_item(duplicate_lead, duplicate_lead))
        if unknown_label is not None:
            cols.append(np.zeros(data.shape[1], dtype=dtype))
            extra = Dataset()
            extra.ChannelLabel = unknown_label
            extra.ChannelSensitivity = f"{sensitivity:g}"
            chans.append(extra)
        arr = np.stack(cols, axis=1)
        if padding_value is not None and originality == "ORIGINAL":
            for s in pad_samples:
                arr[s, :] = padding_value
        g = Dataset()
        g.MultiplexGroupTimeOffset = "0"
        g.WaveformOriginality = originality
        g.NumberOfWaveformChannels = arr.shape[1]
        g.NumberOfWaveformSamples = arr.shape[0]
        g.SamplingFrequency = f"{rate:g}"
        g.MultiplexGroupLabel = label
        g.ChannelDefinitionSequence = DicomSequence(chans)
        g.WaveformBitsAllocated = bits
        g.WaveformSampleInterpretation = interp
        if padding_value is not None:
            g.WaveformPaddingValue = np.array([padding_value], dtype=dtype).tobytes()
        g.WaveformData = np.ascontiguousarray(arr).tobytes()
        return g

    groups = [group(x, rhythm_originality, "RHYTHM")]
    if include_median:
        median = x[:, : int(round(1.2 * rate))]
        med = group(median, "DERIVED", "MEDIAN BEAT")
        groups = [med, *groups] if median_first else [*groups, med]

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ids.sop_instance_uid or pydicom.uid.generate_uid()
    acq = ids.acquisition_datetime or dt.datetime(2024, 1, 1, 8, 0, 0)
    ds.StudyDate = acq.strftime("%Y%m%d")
    ds.ContentDate = acq.strftime("%Y%m%d")
    ds.AcquisitionDateTime = acq.strftime("%Y%m%d%H%M%S")
    ds.StudyTime = acq.strftime("%H%M%S")
    ds.ContentTime = acq.strftime("%H%M%S")
    ds.AccessionNumber = ids.accession_number or ""
    ds.Modality = "ECG"
    ds.Manufacturer = ids.manufacturer or ""
    ds.ManufacturerModelName = ids.device or ""
    ds.PatientName = ids.patient_name or ""
    ds.PatientID = ids.patient_id or ""
    if ids.issuer_of_patient_id:
        ds.IssuerOfPatientID = ids.issuer_of_patient_id
    ds.PatientBirthDate = ids.patient_birth_date or ""
    ds.PatientSex = ids.patient_sex or ""
    if ids.patient_age:
        ds.PatientAge = ids.patient_age
    ds.StudyInstanceUID = ids.study_instance_uid or pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = ids.series_instance_uid or pydicom.uid.generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    if ids.placer_order_number or ids.filler_order_number:
        req = Dataset()
        req.AccessionNumber = ids.accession_number or ""
        req.StudyInstanceUID = ds.StudyInstanceUID
        req.PlacerOrderNumberImagingServiceRequest = ids.placer_order_number or ""
        req.FillerOrderNumberImagingServiceRequest = ids.filler_order_number or ""
        ds.ReferencedRequestSequence = DicomSequence([req])
    ds.WaveformSequence = DicomSequence(groups)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = {
        "explicit": ExplicitVRLittleEndian,
        "implicit": ImplicitVRLittleEndian,
        "deflated": DeflatedExplicitVRLittleEndian,
    }[transfer_syntax]
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- MUSE


def write_muse_xml(
    ecg_or_signal: Ecg | np.ndarray | None = None,
    sampling_rate: float | None = None,
    *,
    leads: Sequence[str] = EIGHT_LEADS,
    units_per_bit: float = 4.88,
    variant: str = "muse9",
    include_median: bool = True,
    identifiers: EcgIdentifiers | None = None,
    patient_age_years: int | None = None,
) -> bytes:
    """Write a GE MUSE ``RestingECG`` XML export.

    Parameters
    ----------
    ecg_or_signal, sampling_rate:
        The ECG or a ``(12, n)`` mV array; default: the real ECG at 500 Hz.
    leads:
        Leads to store (MUSE stores :data:`EIGHT_LEADS`).
    units_per_bit:
        ``LeadAmplitudeUnitsPerBit`` in µV (MUSE: 4.88).
    variant:
        ``"muse9"`` (ISO-8859-1, DOCTYPE, single-line Base64) or ``"nx"`` (UTF-8, Base64 wrapped at 76
        characters, lower-case waveform type, decimal comma in units per bit).
    include_median:
        Add a ``Median`` waveform before the rhythm (the reader must skip it).
    identifiers:
        Patient and order (default :data:`TEST_IDENTIFIERS`).
    patient_age_years:
        ``PatientAge`` in years; default computed from the birth date.
    """
    if ecg_or_signal is None:
        sampling_rate = sampling_rate or 500.0
        ecg_or_signal = real_signal(sampling_rate)
    x, rate, source_ids = _as_signal(ecg_or_signal, sampling_rate)
    ids = _ids(identifiers, source_ids, {})
    nx = variant == "nx"
    step = units_per_bit * 1e-3

    def b64(values: np.ndarray) -> str:
        text = base64.b64encode(_quantise(values, step).tobytes()).decode("ascii")
        if nx:
            text = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
        return text

    def lead_data(name: str, values: np.ndarray) -> str:
        upb = f"{units_per_bit:g}".replace(".", ",") if nx else f"{units_per_bit:g}"
        return (
            "<LeadData>"
            f"<LeadByteCountTotal>{values.size * 2}</LeadByteCountTotal>"
            "<LeadTimeOffset>0</LeadTimeOffset>"
            f"<LeadSampleCountTotal>{values.size}</LeadSampleCountTotal>"
            f"<LeadAmplitudeUnitsPerBit>{upb}</LeadAmplitudeUnitsPerBit>"
            "<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits>"
            "<LeadHighLimit>32767</LeadHighLimit><LeadLowLimit>-32768</LeadLowLimit>"
            f"<LeadID>{name}</LeadID>"
            "<LeadOffsetFirstSample>0</LeadOffsetFirstSample><FirstSampleBaseline>0</FirstSampleBaseline>"
            "<LeadSampleSize>2</LeadSampleSize><LeadOff>FALSE</LeadOff><BaselineSway>FALSE</BaselineSway>"
            f"<WaveFormData>{b64(values)}</WaveFormData>"
            "</LeadData>"
        )

    def waveform(kind: str, data: np.ndarray) -> str:
        return (
            "<Waveform>"
            f"<WaveformType>{kind.lower() if nx else kind}</WaveformType>"
            "<WaveformStartTime>0</WaveformStartTime>"
            f"<NumberofLeads>{len(leads)}</NumberofLeads>"
            "<SampleType>CONTINUOUS_SAMPLES</SampleType>"
            f"<SampleBase>{rate:g}</SampleBase><SampleExponent>0</SampleExponent>"
            "<HighPassFilter>16</HighPassFilter><LowPassFilter>150</LowPassFilter><ACFilter>60</ACFilter>"
            + "".join(lead_data(n, data[LEADS.index(n)]) for n in leads)
            + "</Waveform>"
        )

    acq = ids.acquisition_datetime or dt.datetime(2024, 1, 1, 8, 0, 0)
    birth = ids.patient_birth_date
    dob = f"{birth[4:6]}-{birth[6:8]}-{birth[0:4]}" if birth and len(birth) >= 8 else ""
    if patient_age_years is None and birth and len(birth) >= 8:
        b = dt.date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        patient_age_years = int((acq.date() - b).days // 365.25)
    last, _, first = (ids.patient_name or "").partition("^")
    sex = {"M": "MALE", "F": "FEMALE"}.get(ids.patient_sex or "", "UNKNOWN")
    e = escape
    body = (
        "<RestingECG>"
        f"<MuseInfo><MuseVersion>{'10.1.0' if nx else '9.0.9.18167'}</MuseVersion></MuseInfo>"
        "<PatientDemographics>"
        f"<PatientID>{e(ids.patient_id or '')}</PatientID>"
        + (
            f"<PatientAge>{patient_age_years}</PatientAge><AgeUnits>YEARS</AgeUnits>"
            if patient_age_years is not None
            else ""
        )
        + f"<DateofBirth>{dob}</DateofBirth><Gender>{sex}</Gender>"
        f"<PatientLastName>{e(last)}</PatientLastName><PatientFirstName>{e(first)}</PatientFirstName>"
        "</PatientDemographics>"
        "<TestDemographics><DataType>RESTING</DataType><Site>1</Site><SiteName>TEST SITE</SiteName>"
        f"<AcquisitionDevice>{e(ids.device or 'MAC5500')}</AcquisitionDevice>"
        f"<AcquisitionTime>{acq:%H:%M:%S}</AcquisitionTime><AcquisitionDate>{acq:%m-%d-%Y}</AcquisitionDate>"
        "</TestDemographics>"
        "<Order>"
        f"<OrderNumber>{e(ids.placer_order_number or '')}</OrderNumber>"
        f"<AccessionNumber>{e(ids.accession_number or '')}</AccessionNumber>"
        "</Order>"
        + (waveform("Median", x[:, : int(round(1.2 * rate))]) if include_median else "")
        + waveform("Rhythm", x)
        + "</RestingECG>"
    )
    if nx:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode("utf-8")
    head = '<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE RestingECG SYSTEM "restecg.dtd">\n'
    return (head + body).encode("iso-8859-1")


# ------------------------------------------------------------------------------------------------- aECG


def write_aecg_xml(
    ecg_or_signal: Ecg | np.ndarray | None = None,
    sampling_rate: float | None = None,
    *,
    leads: Sequence[str] = LEADS,
    scale_uv: float = 5.0,
    origin_uv: float = 0.0,
    include_median: bool = True,
    identifiers: EcgIdentifiers | None = None,
) -> bytes:
    """Write an HL7 v3 ``AnnotatedECG`` document.

    Parameters
    ----------
    ecg_or_signal, sampling_rate:
        The ECG or a ``(12, n)`` mV array; default: the real ECG at 500 Hz.
    leads:
        Leads to store as ``MDC_ECG_LEAD_*`` sequences.
    scale_uv, origin_uv:
        ``SLIST_PQ`` scale and origin in µV (physical = origin + scale × digit).
    include_median:
        Add a derived median-beat series (the reader must skip it).
    identifiers:
        Patient (default :data:`TEST_IDENTIFIERS`).
    """
    if ecg_or_signal is None:
        sampling_rate = sampling_rate or 500.0
        ecg_or_signal = real_signal(sampling_rate)
    x, rate, source_ids = _as_signal(ecg_or_signal, sampling_rate)
    ids = _ids(identifiers, source_ids, {})
    acq = ids.acquisition_datetime or dt.datetime(2024, 1, 1, 8, 0, 0)
    ts = acq.strftime("%Y%m%d%H%M%S")

    def seq_set(data: np.ndarray) -> str:
        parts = [
            '<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
            f'<value xsi:type="GLIST_TS"><head value="{ts}.000"/>'
            f'<increment value="{1.0 / rate:.10g}" unit="s"/></value></sequence></component>'
        ]
        for name in leads:
            digits = _quantise(data[LEADS.index(name)] - origin_uv * 1e-3, scale_uv * 1e-3, "<i4")
            code = "MDC_ECG_LEAD_" + (name.upper() if name.startswith("a") else name)
            parts.append(
                f'<component><sequence><code code="{code}" codeSystem="2.16.840.1.113883.6.24"/>'
                f'<value xsi:type="SLIST_PQ"><origin value="{origin_uv:g}" unit="uV"/>'
                f'<scale value="{scale_uv:g}" unit="uV"/><digits>{" ".join(map(str, digits.tolist()))}</digits>'
                "</value></sequence></component>"
            )
        return "<sequenceSet>" + "".join(parts) + "</sequenceSet>"

    derived = ""
    if include_median:
        derived = (
            '<derivation><derivedSeries><code code="REPRESENTATIVE_BEAT" codeSystem="2.16.840.1.113883.5.4"/>'
            f"<component>{seq_set(x[:, : int(round(1.2 * rate))])}</component></derivedSeries></derivation>"
        )
    last, _, first = (ids.patient_name or "").partition("^")
    e = escape
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id root="2.16.840.1.113883.3.1000.1" extension="AECG-1"/>'
        '<code code="93000" codeSystem="2.16.840.1.113883.6.12"/>'
        f'<effectiveTime><low value="{ts}"/><high value="{ts}"/></effectiveTime>'
        "<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>"
        f'<id root="{e(ids.issuer_of_patient_id or "")}" extension="{e(ids.patient_id or "")}"/>'
        f"<subjectDemographicPerson><name><family>{e(last)}</family><given>{e(first)}</given></name>"
        f'<administrativeGenderCode code="{e(ids.patient_sex or "UN")}" codeSystem="2.16.840.1.113883.5.1"/>'
        f'<birthTime value="{e(ids.patient_birth_date or "")}"/></subjectDemographicPerson>'
        "</trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>"
        '<component><series><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>'
        f'<effectiveTime><low value="{ts}"/></effectiveTime>'
        f"<component>{seq_set(x)}</component>{derived}</series></component>"
        "</AnnotatedECG>"
    )
    return doc.encode("utf-8")


# -------------------------------------------------------------------------------------------------- HL7


def _hl7_header(ids: EcgIdentifiers, control_id: str) -> list[str]:
    acq = ids.acquisition_datetime or dt.datetime(2024, 1, 1, 8, 0, 0)
    ts = acq.strftime("%Y%m%d%H%M%S")
    pid3 = f"{ids.patient_id or ''}^^^{ids.issuer_of_patient_id or ''}^MR"
    segs = [
        f"MSH|^~\\&|ECGCART|TESTHOSP|ECGCAD|TESTHOSP|{ts}||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{pid3}||{ids.patient_name or ''}||{ids.patient_birth_date or ''}|{ids.patient_sex or ''}",
        f"PV1|1|O|||||||||||||||||{ids.visit_number or ''}",
        f"ORC|RE|{ids.placer_order_number or ''}|{ids.filler_order_number or ''}",
        f"OBR|1|{ids.placer_order_number or ''}|{ids.filler_order_number or ''}|93000^12-lead ECG^CPT|||{ts}"
        f"|||||||||||{ids.accession_number or ''}||||{ts}||EC|F",
    ]
    if ids.study_instance_uid:
        segs.append(f"IPC|{ids.accession_number or ''}||{ids.study_instance_uid}|||ECG")
    return segs


def _frame(segments: list[str], mllp: bool) -> bytes:
    body = ("\r".join(segments) + "\r").encode("latin-1")
    return frame(body) if mllp else body


def write_hl7_oru_ed(
    payload: bytes,
    subtype: str = "DICOM",
    *,
    mllp: bool = False,
    encoding: str = "Base64",
    identifiers: EcgIdentifiers | None = None,
    control_id: str = "MSG00001",
    **overrides: Any,  # noqa: ANN401 - EcgIdentifiers fields (text and datetimes)
) -> bytes:
    """Write an ORU^R01 (v2.5.1) carrying ``payload`` in an ``ED`` OBX.

    Parameters
    ----------
    payload:
        The embedded object (DICOM, MUSE XML, aECG XML bytes).
    subtype:
        ED data subtype as declared by the sender (``DICOM``, ``XML``, … — the reader does not trust it).
    mllp:
        Wrap in MLLP framing (0x0B … 0x1C 0x0D).
    encoding:
        ``Base64`` or ``Hex``.
    identifiers:
        PID / ORC / OBR / IPC values (default :data:`TEST_IDENTIFIERS`).
    control_id:
        MSH-10.
    overrides:
        Single identifier fields to replace (``patient_id="X"``, ``accession_number=None``, …).
    """
    ids = dataclasses.replace(identifiers or TEST_IDENTIFIERS, **overrides)
    data = (
        base64.b64encode(payload).decode("ascii") if encoding.lower() == "base64" else payload.hex().upper()
    )
    mime = "application" if subtype.upper() == "DICOM" else "text"
    segs = _hl7_header(ids, control_id)
    segs.append(
        f"OBX|1|ED|93000^12-lead ECG waveform^CPT|1|ECGCART^{mime}^{subtype}^{encoding}^{data}||||||F"
    )
    return _frame(segs, mllp)


def write_hl7_oru_waveform(
    ecg_or_signal: Ecg | np.ndarray | None = None,
    sampling_rate: float | None = None,
    *,
    leads: Sequence[str] = EIGHT_LEADS,
    array_type: str = "MA",
    sensitivity_uv: float = 2.5,
    mllp: bool = False,
    identifiers: EcgIdentifiers | None = None,
    control_id: str = "MSG00002",
    **overrides: Any,  # noqa: ANN401 - EcgIdentifiers fields (text and datetimes)
) -> bytes:
    """Write an ORU^R01 with Chapter 7 waveform OBX: ``CD`` per channel (CHN), ``TS`` (TIM), data (WAV).

    Parameters
    ----------
    ecg_or_signal, sampling_rate:
        The ECG or a ``(12, n)`` mV array; default: the real ECG at 500 Hz.
    leads:
        Channels to write, in order.
    array_type:
        ``"MA"`` (one multiplexed OBX) or ``"NA"`` (one OBX per channel).
    sensitivity_uv:
        Channel sensitivity (µV per count); values are written as integer counts.
    mllp, identifiers, control_id, overrides:
        As :func:`write_hl7_oru_ed`.
    """
    if ecg_or_signal is None:
        sampling_rate = sampling_rate or 500.0
        ecg_or_signal = real_signal(sampling_rate)
    x, rate, source_ids = _as_signal(ecg_or_signal, sampling_rate)
    ids = dataclasses.replace(_ids(identifiers, source_ids, {}), **overrides)
    acq = ids.acquisition_datetime or dt.datetime(2024, 1, 1, 8, 0, 0)
    segs = _hl7_header(ids, control_id)
    counts = np.stack([_quantise(x[LEADS.index(n)], sensitivity_uv * 1e-3, "<i4") for n in leads])
    k = 1
    for i, name in enumerate(leads, start=1):
        segs.append(
            f"OBX|{k}|CD|CHN^Channel definition^HL7|1|{i}&{name}^{name}^{sensitivity_uv:g}&uV^1&0&0^{rate:g}^-32768&32767||||||F"
        )
        k += 1
    segs.append(f"OBX|{k}|TS|TIM^Time^HL7|1|{acq:%Y%m%d%H%M%S}.000||||||F")
    k += 1
    if array_type == "MA":
        value = "~".join("^".join(map(str, row)) for row in counts.T.tolist())
        segs.append(f"OBX|{k}|MA|WAV^Waveform^HL7|1|{value}||||||F")
    elif array_type == "NA":
        for row in counts.tolist():
            segs.append(f"OBX|{k}|NA|WAV^Waveform^HL7|1|{'^'.join(map(str, row))}||||||F")
            k += 1
    else:
        raise ValueError("array_type must be 'MA' or 'NA'")
    return _frame(segs, mllp)
