"""HL7 v2 ORU reader: ED payloads of each format, Chapter 7 waveforms, identifiers, framing."""

from __future__ import annotations

import numpy as np
import pytest

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.integration.formats.readers import decode
from ecgcad.testing import ecg_writers as w

T = w.TEST_IDENTIFIERS


@pytest.mark.parametrize("mllp", [False, True])
def test_ed_with_real_dicom(real_bytes, mllp):
    ecg = decode(w.write_hl7_oru_ed(real_bytes, "DICOM", mllp=mllp))
    direct = decode(real_bytes)
    assert ecg.format == "hl7v2"
    np.testing.assert_array_equal(ecg.signal, direct.signal)
    assert ecg.sampling_rate == 1000.0
    # HL7 identifiers win; the DICOM object fills the gaps
    assert ecg.identifiers.patient_id == T.patient_id
    assert ecg.identifiers.issuer_of_patient_id == T.issuer_of_patient_id
    assert ecg.identifiers.accession_number == T.accession_number
    assert ecg.identifiers.placer_order_number == T.placer_order_number
    assert ecg.identifiers.filler_order_number == T.filler_order_number
    assert ecg.identifiers.sop_instance_uid == direct.identifiers.sop_instance_uid
    assert ecg.identifiers.sop_class_uid == direct.identifiers.sop_class_uid
    assert any("differs" in n for n in ecg.notes)
    assert all(T.patient_id not in n for n in ecg.notes)


@pytest.mark.parametrize("kind", ["muse", "aecg"])
def test_ed_with_xml_detected_by_content_not_subtype(x500, kind):
    payload = w.write_muse_xml(x500, 500) if kind == "muse" else w.write_aecg_xml(x500, 500)
    ecg = decode(w.write_hl7_oru_ed(payload, "DICOM"))  # the declared subtype lies
    assert ecg.format == "hl7v2"
    assert any(f"embedded {kind}" in n for n in ecg.notes)
    assert any("subtype" in n for n in ecg.notes)
    np.testing.assert_allclose(ecg.signal[1], x500[1], atol=3e-3)


def test_ed_hex_encoding(x500):
    ecg = decode(w.write_hl7_oru_ed(w.build_dicom_ecg(x500, 500), "DICOM", encoding="Hex"))
    np.testing.assert_allclose(ecg.signal, x500, atol=2.5e-3)


@pytest.mark.parametrize("array_type", ["MA", "NA"])
def test_chapter7_waveform_round_trip(x500, array_type):
    ecg = decode(w.write_hl7_oru_waveform(x500, 500, array_type=array_type))
    assert ecg.format == "hl7v2"
    assert ecg.source_leads == list(w.EIGHT_LEADS)
    assert ecg.derived_leads == ["III", "aVR", "aVL", "aVF"]
    for name in w.EIGHT_LEADS:
        i = LEADS.index(name)
        np.testing.assert_allclose(ecg.signal[i], x500[i], atol=1.3e-3)
    assert ecg.identifiers.patient_id == T.patient_id


def test_identifiers_from_pid_orc_obr_ipc(x500):
    ids = decode(w.write_hl7_oru_waveform(x500, 500, mllp=True)).identifiers
    assert ids.patient_id == T.patient_id
    assert ids.issuer_of_patient_id == T.issuer_of_patient_id
    assert ids.patient_name == T.patient_name
    assert ids.patient_birth_date == T.patient_birth_date
    assert ids.patient_sex == T.patient_sex
    assert ids.accession_number == T.accession_number
    assert ids.study_instance_uid == T.study_instance_uid
    assert ids.placer_order_number == T.placer_order_number
    assert ids.filler_order_number == T.filler_order_number
    assert ids.visit_number == T.visit_number
    assert ids.acquisition_datetime == T.acquisition_datetime


def test_lf_segment_endings_and_leading_whitespace_are_tolerated(x500):
    msg = w.write_hl7_oru_waveform(x500, 500).replace(b"\r", b"\n")
    assert decode(b"\n  " + msg).identifiers.patient_id == T.patient_id


def test_escaped_characters_in_identifiers(x500):
    msg = w.write_hl7_oru_waveform(x500, 500, patient_name="O\\T\\Brien^Ann")
    assert decode(msg).identifiers.patient_name == "O&Brien^Ann"


def test_message_without_ecg_is_a_decode_error():
    msg = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1\rPID|1||123\rOBX|1|NM|8867-4^HR^LN||72|/min\r"
    with pytest.raises(DecodeError, match="no ECG"):
        decode(msg)


def test_broken_ed_payload_is_a_decode_error():
    msg = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|1|P|2.5.1\rOBX|1|ED|X||A^application^DICOM^Base64^!!!!\r"
    with pytest.raises(DecodeError):
        decode(msg)


def test_non_hl7_text_is_unsupported():
    with pytest.raises(UnsupportedFormatError):
        decode(b"PID|1||123\r")
