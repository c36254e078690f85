"""Every acknowledged ECG gets its report (issue 16, item 2): the SR, the ORU and the PDF build for every
"not evaluated" reason with the texts the pipeline stores, and for source dates that do not parse."""

from __future__ import annotations

import copy
import dataclasses
import io

import hl7
import pydicom
import pytest
from pydicom.dataset import Dataset

from ecgcad.integration.formats.ecg import LEADS
from ecgcad.integration.formats.gate import REASON_TEXTS, REPORT_TEXT_MAX
from ecgcad.integration.reports.oru import build_oru, control_id_for
from ecgcad.integration.reports.pdf import build_encapsulated_pdf, render_report_pdf
from ecgcad.integration.reports.sr import PRIVATE_SCHEME, build_stenosis_sr
from ecgcad.pipeline.reports import PIPELINE_REASON_TEXTS, report_reason
from tests.results.conftest import identifiers_from, make_input, not_evaluated_input

#: The stored (long) text of each reason, as the gate and the pipeline write them at their longest.
ALL_LEADS = ", ".join(LEADS)
STORED_TEXTS = {
    "implausible_sampling_rate": "sampling rate 1e+09 Hz is outside 100–20000 Hz; the record is corrupt",
    "bad_sensitivity": "channel sensitivity is not a positive number on lead: " + ALL_LEADS,
    "non_finite_samples": "samples overflow to infinity on lead: " + ALL_LEADS,
    "too_few_leads": "0 independent leads recorded; at least 8 are needed",
    "too_short": "record is 0.1 s long; at least 10 s are needed",
    "low_sampling_rate": "sampled at 120 Hz; at least 250 Hz are needed",
    "flat_lead": "flat or disconnected lead: " + ALL_LEADS,
    "saturation": "clipped (saturated) lead: " + ALL_LEADS,
    "noise": "excessive high-frequency noise on lead: " + ALL_LEADS,
    "baseline_wander": "excessive baseline wander on lead: " + ALL_LEADS,
    "pacemaker": "12 pacemaker spikes found; paced rhythm is outside the intended use",
    "underage": "patient is younger than 18 years (stated age); outside the intended use",
    "decode_failed": "waveform group 0 has no sampling frequency; " + "x" * 300,
    "processing_error": "scoring failed on all 5 attempts (MemoryError)",
    "not_evaluated": "not evaluated",
}
#: A code the report mapping has never seen, with a text that would break a DICOM LO.
UNKNOWN = ("some.future_reason with spaces", "line one\r\nback\\slash " + "y" * 200)


def test_the_table_covers_every_gate_and_pipeline_reason():
    assert set(STORED_TEXTS) == set(REASON_TEXTS) | set(PIPELINE_REASON_TEXTS)


def _objects(
    ecg_dataset: Dataset, ecg_bytes: bytes, reason: tuple[str, str]
) -> tuple[Dataset, bytes, Dataset]:
    inp = not_evaluated_input(ecg_dataset, ecg_bytes, not_evaluated_reason=reason)
    sr = build_stenosis_sr(inp)
    oru = build_oru(inp, control_id=control_id_for(7, 1, 1))
    pdf = build_encapsulated_pdf(inp, render_report_pdf(inp))
    return sr, oru, pdf


def _sr_reason(sr: Dataset) -> tuple[str, str]:
    qualitative = sr.ContentSequence[-1]
    (item,) = [
        i for i in qualitative.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "NOT-EVALUATED"
    ]
    concept = item.ConceptCodeSequence[0]
    assert concept.CodingSchemeDesignator == PRIVATE_SCHEME
    return str(concept.CodeValue), str(concept.CodeMeaning)


@pytest.mark.parametrize("code", sorted(STORED_TEXTS) + [UNKNOWN[0]])
def test_sr_oru_and_pdf_build_for_every_not_evaluated_reason(ecg_dataset, ecg_bytes, code):
    """The pipeline's reason (code, stored text) → report reason: fits its fields by construction."""
    stored = STORED_TEXTS.get(code, UNKNOWN[1])
    reason = report_reason(code, stored)
    report_code, text = reason
    assert 1 <= len(text) <= REPORT_TEXT_MAX and "\\" not in text and text.isprintable()
    sr, oru, pdf = _objects(ecg_dataset, ecg_bytes, reason)
    assert _sr_reason(sr) == reason
    obx = [s for s in hl7.parse(oru.decode("utf-8")) if str(s[0]) == "OBX"]
    assert [str(s[3][0][0]) for s in obx] == ["NOT-EVAL"]
    assert str(obx[0][5][0][0]) == report_code and str(obx[0][8]) == "IND"
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF")


def test_known_reasons_show_their_fixed_text_and_keep_nothing_of_the_ecg():
    assert report_reason("flat_lead", STORED_TEXTS["flat_lead"]) == ("FLAT_LEAD", "flat or disconnected lead")
    assert report_reason("processing_error", "anything") == ("PROCESSING_ERROR", "processing error")
    assert report_reason(None, None) == ("NOT_EVALUATED", "not evaluated")
    code, text = report_reason(*UNKNOWN)
    assert code == "SOME_FUTURE_REAS" and text.startswith("line one back slash yyy") and text.endswith("...")


def _source_with(ecg_dataset: Dataset, **values: str) -> bytes:
    ds = copy.deepcopy(ecg_dataset)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("scorable", [True, False], ids=["scored", "not-evaluated"])
def test_source_birth_date_that_does_not_parse_is_left_out_of_sr_and_pdf(ecg_dataset, scorable):
    """``PatientBirthDate=00000000`` scored, but the SR failed with "year 0 is out of range"."""
    source = _source_with(ecg_dataset, PatientBirthDate="00000000", StudyDate="20241399", StudyTime="2561")
    ident = dataclasses.replace(identifiers_from(ecg_dataset), patient_birth_date="00000000")
    build = make_input if scorable else not_evaluated_input
    inp = build(ecg_dataset, source, identifiers=ident)
    sr = pydicom.dcmread(io.BytesIO(_part10(build_stenosis_sr(inp))))
    pdf = build_encapsulated_pdf(inp, render_report_pdf(inp))
    for ds in (sr, pdf):
        assert (ds.PatientBirthDate, ds.StudyDate, ds.StudyTime) == ("", "", "")
        assert ds.PatientID == ecg_dataset.PatientID
    oru = build_oru(inp, control_id=control_id_for(7, 1, 1))
    assert b"PID|" in oru


@pytest.mark.parametrize(
    ("field", "value"),
    [("patient_birth_date", "00000000"), ("patient_birth_date", "1971"), ("patient_sex", "X")],
)
def test_identifier_values_that_do_not_parse_are_left_out_without_a_source(field, value):
    """An HL7 source has no DICOM object: the SR is built from the identifiers, and builds all the same."""
    inp = make_input(None, None)
    setattr(inp.identifiers, field, value)
    sr = build_stenosis_sr(inp)
    keyword = {"patient_birth_date": "PatientBirthDate", "patient_sex": "PatientSex"}[field]
    assert sr.get(keyword) == ""


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
