"""DICOM waveform reader: the real Mortara ECG and built edge cases."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.integration.formats.readers import decode
from ecgcad.testing import ecg_writers as w

STEP_MV = 2.5e-3  # default builder sensitivity: 2.5 µV per count


def _row(ecg, name):
    return ecg.signal[LEADS.index(name)]


def test_real_ecg_decodes_rhythm_group_in_mv_like_pydicom(real_bytes):
    ecg = decode(real_bytes)
    ds = pydicom.dcmread(io.BytesIO(real_bytes))
    expected = ds.waveform_array(0).T / 1000.0  # group 0 is ORIGINAL, µV
    assert ecg.format == "dicom"
    assert ecg.sampling_rate == 1000.0
    assert ecg.signal.shape == (12, 10000)
    assert ecg.signal.dtype == np.float32
    assert ecg.source_units == "uV"
    assert ecg.source_leads == list(LEADS)
    assert ecg.derived_leads == []
    np.testing.assert_allclose(ecg.signal, expected, atol=1e-6)


def test_real_ecg_identifiers_are_copied_unchanged(real_bytes):
    ids = decode(real_bytes).identifiers
    ds = pydicom.dcmread(io.BytesIO(real_bytes))
    assert ids.patient_id == ds.PatientID
    assert ids.accession_number == ds.AccessionNumber
    assert ids.study_instance_uid == ds.StudyInstanceUID
    assert ids.series_instance_uid == ds.SeriesInstanceUID
    assert ids.sop_instance_uid == ds.SOPInstanceUID
    assert ids.sop_class_uid == "1.2.840.10008.5.1.4.1.1.9.1.1"
    assert ids.patient_birth_date == "19710123"
    assert ids.patient_age == "042Y"
    assert ids.manufacturer == "Mortara Instrument, Inc."
    assert ids.acquisition_datetime is not None and ids.acquisition_datetime.year == 2013


def test_signal_is_written_once_into_an_owned_array(real_bytes):
    ecg = decode(real_bytes)
    assert ecg.signal.flags.owndata and ecg.signal.flags.c_contiguous


@pytest.mark.parametrize("median_first", [True, False])
def test_derived_median_group_is_never_read(x500, median_first):
    ecg = decode(w.build_dicom_ecg(x500, 500, median_first=median_first))
    assert ecg.signal.shape == (12, 5000)
    np.testing.assert_allclose(ecg.signal, x500, atol=STEP_MV)


def test_only_derived_groups_is_a_decode_error(x500):
    data = w.build_dicom_ecg(x500, 500, rhythm_originality="DERIVED")
    with pytest.raises(DecodeError, match="DERIVED"):
        decode(data)


@pytest.mark.parametrize("coding", ["MDC", "SCPECG", "meaning", "label"])
def test_leads_map_by_code_meaning_or_label(x500, coding):
    order = [11, 3, 0, 7, 5, 1, 9, 2, 10, 4, 8, 6]  # shuffled channel order
    ecg = decode(w.build_dicom_ecg(x500, 500, coding=coding, channel_order=order))
    np.testing.assert_allclose(ecg.signal, x500, atol=STEP_MV)
    assert ecg.source_leads == list(LEADS)


def test_eight_lead_object_derives_limb_leads(x500):
    ecg = decode(w.build_dicom_ecg(x500, 500, leads=w.EIGHT_LEADS))
    assert ecg.derived_leads == ["III", "aVR", "aVL", "aVF"]
    assert ecg.source_leads == list(w.EIGHT_LEADS)
    assert any("derived" in n for n in ecg.notes)
    i, ii = _row(ecg, "I"), _row(ecg, "II")
    np.testing.assert_allclose(_row(ecg, "III"), ii - i, atol=1e-6)
    np.testing.assert_allclose(_row(ecg, "aVR"), -(i + ii) / 2, atol=1e-6)
    np.testing.assert_allclose(_row(ecg, "aVL"), i - ii / 2, atol=1e-6)
    np.testing.assert_allclose(_row(ecg, "aVF"), ii - i / 2, atol=1e-6)
    # the real leads agree with the derived ones (Einthoven holds for a real recording)
    np.testing.assert_allclose(ecg.signal, x500, atol=4 * STEP_MV + 0.01)


def test_minus_avr_is_negated(x500):
    ecg = decode(w.build_dicom_ecg(x500, 500, minus_avr=True))
    np.testing.assert_allclose(_row(ecg, "aVR"), x500[3], atol=STEP_MV)


def test_mv_units_correction_factor_and_baseline_are_applied(x500):
    data = w.build_dicom_ecg(x500, 500, units="mV", sensitivity=0.004, correction=0.5, baseline=0.25)
    ecg = decode(data)
    assert ecg.source_units == "mV"
    np.testing.assert_allclose(ecg.signal, x500, atol=0.002)


def test_channel_without_sensitivity_is_refused_with_a_note(x500):
    ecg = decode(w.build_dicom_ecg(x500, 500, no_sensitivity=("V3",)))
    assert "V3" not in ecg.source_leads
    assert np.isnan(_row(ecg, "V3")).all()
    assert any("V3" in n and "sensitivity" in n for n in ecg.notes)


def test_padding_samples_are_masked_not_read_as_voltage(x500):
    ecg = decode(w.build_dicom_ecg(x500, 500, padding_value=-32768, pad_samples=(0, 1, 2, 4999)))
    assert np.isnan(ecg.signal[:, [0, 1, 2, 4999]]).all()
    assert not np.isnan(ecg.signal[:, 3:4999]).any()
    assert any("padding" in n for n in ecg.notes)


def test_250_hz_object_keeps_its_rate():
    x = w.real_signal(250.0)
    ecg = decode(w.build_dicom_ecg(x, 250))
    assert ecg.sampling_rate == 250.0 and ecg.signal.shape == (12, 2500)


def test_five_second_record_decodes(x500):
    ecg = decode(w.build_dicom_ecg(x500[:, :2500], 500))
    assert ecg.duration_s == pytest.approx(5.0)


@pytest.mark.parametrize("ts", ["implicit", "deflated"])
def test_other_transfer_syntaxes(x500, ts):
    ecg = decode(w.build_dicom_ecg(x500, 500, transfer_syntax=ts))
    np.testing.assert_allclose(ecg.signal, x500, atol=STEP_MV)


@pytest.mark.parametrize("sop", [w.GENERAL_ECG, w.GENERAL_32BIT_ECG])
def test_general_ecg_classes_are_accepted(x500, sop):
    ecg = decode(
        w.build_dicom_ecg(x500, 500, sop_class_uid=sop, bits=32 if sop == w.GENERAL_32BIT_ECG else 16)
    )
    assert ecg.identifiers.sop_class_uid == sop
    np.testing.assert_allclose(ecg.signal, x500, atol=STEP_MV)


@pytest.mark.parametrize("sop", [w.AMBULATORY_ECG, w.HEMODYNAMIC])
def test_other_waveform_classes_are_refused(x500, sop):
    with pytest.raises(UnsupportedFormatError, match="not a resting ECG"):
        decode(w.build_dicom_ecg(x500, 500, sop_class_uid=sop))


def test_duplicate_lead_is_a_decode_error(x500):
    with pytest.raises(DecodeError, match="twice"):
        decode(w.build_dicom_ecg(x500, 500, duplicate_lead="V2", include_median=False))


def test_unknown_lead_is_a_decode_error(x500):
    with pytest.raises(DecodeError, match="unknown lead"):
        decode(w.build_dicom_ecg(x500, 500, unknown_label="Channel 13", include_median=False))


def test_dicom_image_is_unsupported():
    from pydicom.data import get_testdata_file

    with open(get_testdata_file("CT_small.dcm"), "rb") as fh:
        data = fh.read()
    with pytest.raises(UnsupportedFormatError):
        decode(data)


@pytest.mark.parametrize("cut", [140, 400, 2000, 20000])
def test_truncated_object_is_a_decode_error(real_bytes, cut):
    with pytest.raises(DecodeError):
        decode(real_bytes[:cut])


def test_order_numbers_from_referenced_request_sequence(x500):
    ids = decode(w.build_dicom_ecg(x500, 500)).identifiers
    assert ids.placer_order_number == w.TEST_IDENTIFIERS.placer_order_number
    assert ids.filler_order_number == w.TEST_IDENTIFIERS.filler_order_number
    assert ids.issuer_of_patient_id == w.TEST_IDENTIFIERS.issuer_of_patient_id
