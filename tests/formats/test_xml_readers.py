"""GE MUSE and HL7 aECG XML readers: round trips, dialects, identifiers and unsafe XML."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ecgcad.errors import DecodeError, UnsupportedFormatError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.integration.formats.readers import decode
from ecgcad.testing import ecg_writers as w

MUSE_STEP = 4.88e-3


@pytest.mark.parametrize("variant", ["muse9", "nx"])
def test_muse_round_trip_derives_the_four_limb_leads(x500, variant):
    ecg = decode(w.write_muse_xml(x500, 500, variant=variant))
    assert ecg.format == "muse"
    assert ecg.sampling_rate == 500.0
    assert ecg.source_leads == list(w.EIGHT_LEADS)
    assert ecg.derived_leads == ["III", "aVR", "aVL", "aVF"]
    for name in w.EIGHT_LEADS:
        i = LEADS.index(name)
        np.testing.assert_allclose(ecg.signal[i], x500[i], atol=MUSE_STEP / 2 + 1e-6)
    np.testing.assert_allclose(ecg.signal, x500, atol=2 * MUSE_STEP + 0.01)


def test_muse_twelve_lead_export_derives_nothing(x500):
    ecg = decode(w.write_muse_xml(x500, 500, leads=LEADS))
    assert ecg.derived_leads == []
    np.testing.assert_allclose(ecg.signal, x500, atol=MUSE_STEP / 2 + 1e-6)


def test_muse_250_hz_and_other_units_per_bit():
    x = w.real_signal(250.0)
    ecg = decode(w.write_muse_xml(x, 250, units_per_bit=2.5))
    assert ecg.sampling_rate == 250.0
    np.testing.assert_allclose(ecg.signal[0], x[0], atol=1.3e-3)


def test_muse_identifiers_and_stated_age(x500):
    ids = decode(w.write_muse_xml(x500, 500, patient_age_years=59)).identifiers
    t = w.TEST_IDENTIFIERS
    assert ids.patient_id == t.patient_id
    assert ids.patient_birth_date == t.patient_birth_date
    assert ids.patient_sex == "M"
    assert ids.patient_age == "059Y"
    assert ids.accession_number == t.accession_number
    assert ids.patient_name == t.patient_name
    assert ids.acquisition_datetime == t.acquisition_datetime


def test_muse_utf16_document_is_read(x500):
    doc = w.write_muse_xml(x500, 500, variant="nx").decode("utf-8")
    data = doc.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    ecg = decode(data)
    assert ecg.format == "muse"


def test_muse_with_only_median_is_a_decode_error(x500):
    doc = w.write_muse_xml(x500, 500).replace(b"<WaveformType>Rhythm<", b"<WaveformType>Median<")
    with pytest.raises(DecodeError, match="median"):
        decode(doc)


def test_muse_unknown_lead_is_a_decode_error(x500):
    doc = w.write_muse_xml(x500, 500).replace(b"<LeadID>V6<", b"<LeadID>QQ<")
    with pytest.raises(DecodeError, match="unknown MUSE lead"):
        decode(doc)


def test_aecg_round_trip(x500):
    ecg = decode(w.write_aecg_xml(x500, 500))
    assert ecg.format == "aecg"
    assert ecg.sampling_rate == 500.0
    assert ecg.source_leads == list(LEADS)
    np.testing.assert_allclose(ecg.signal, x500, atol=2.5e-3 + 1e-6)


def test_aecg_origin_scale_and_eight_leads():
    x = w.real_signal(1000.0)
    ecg = decode(w.write_aecg_xml(x, 1000, leads=w.EIGHT_LEADS, scale_uv=1.0, origin_uv=-100.0))
    assert ecg.sampling_rate == 1000.0
    assert ecg.derived_leads == ["III", "aVR", "aVL", "aVF"]
    np.testing.assert_allclose(ecg.signal[0], x[0], atol=0.5e-3 + 1e-6)


def test_aecg_identifiers(x500):
    ids = decode(w.write_aecg_xml(x500, 500)).identifiers
    t = w.TEST_IDENTIFIERS
    assert (ids.patient_id, ids.patient_birth_date, ids.patient_sex) == (
        t.patient_id,
        t.patient_birth_date,
        t.patient_sex,
    )
    assert ids.acquisition_datetime == t.acquisition_datetime


def test_aecg_without_increment_is_a_decode_error(x500):
    doc = w.write_aecg_xml(x500, 500).replace(b"<increment", b"<incrementX")
    with pytest.raises(DecodeError, match="increment"):
        decode(doc)


def test_aecg_unknown_lead_is_a_decode_error(x500):
    doc = w.write_aecg_xml(x500, 500).replace(b"MDC_ECG_LEAD_V6", b"MDC_ECG_LEAD_FOO")
    with pytest.raises(DecodeError, match="unknown aECG lead"):
        decode(doc)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><RestingECG><MuseInfo>&c;</MuseInfo></RestingECG>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE AnnotatedECG [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<AnnotatedECG xmlns="urn:hl7-org:v3"><title>&x;</title></AnnotatedECG>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, XXE], ids=["entity-expansion", "external-entity"])
def test_entities_are_refused(doc):
    with pytest.raises(DecodeError, match="refused"):
        decode(doc)


def test_other_xml_is_unsupported():
    with pytest.raises(UnsupportedFormatError, match="root"):
        decode(b"<?xml version='1.0'?><ClinicalDocument/>")


def test_writers_accept_an_ecg_and_keep_its_identifiers(real):
    real.identifiers = dataclasses.replace(real.identifiers, patient_id="OTHER-1")
    ecg = decode(w.write_aecg_xml(real))
    assert ecg.identifiers.patient_id == "OTHER-1"
    assert ecg.sampling_rate == 1000.0
