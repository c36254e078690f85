"""The TID 1500 stenosis SR: content, identifiers, UIDs, and three independent validators."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from ecgcad.errors import BuildError
from ecgcad.integration.reports.content import PredecessorReference, result_uids
from ecgcad.integration.reports.sr import COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, build_stenosis_sr
from tests.results.conftest import make_input, not_evaluated_input, tool

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
#: The one PixelMed error we accept on purpose: our procedure code is not an imaging procedure (CID 100).
DELIBERATE_PIXELMED = 'Code (268400002,SCT,"12 lead electrocardiogram") not found in context group 100'


def _items(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: pydicom.Dataset) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


@pytest.fixture(scope="module")
def sr_files(ecg_dataset, ecg_bytes, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sr")
    files = {
        "scored": build_stenosis_sr(make_input(ecg_dataset, ecg_bytes)),
        "not_evaluated": build_stenosis_sr(not_evaluated_input(ecg_dataset, ecg_bytes)),
        "no_source": build_stenosis_sr(make_input(None, None)),
    }
    paths = {}
    for key, ds in files.items():
        paths[key] = out / f"{key}.dcm"
        ds.save_as(paths[key], enforce_file_format=True)
    return paths


def test_sr_copies_patient_and_study_identifiers_unchanged(sr_files, ecg_dataset):
    sr = pydicom.dcmread(sr_files["scored"])
    for keyword in (
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyInstanceUID",
    ):
        assert sr[keyword].value == ecg_dataset[keyword].value, keyword
    assert sr.SOPClassUID == COMPREHENSIVE_SR
    assert sr.SeriesInstanceUID != ecg_dataset.SeriesInstanceUID
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    evidence = (
        sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    )
    assert evidence.ReferencedSOPInstanceUID == ecg_dataset.SOPInstanceUID
    request = sr.ReferencedRequestSequence[0]
    assert request.PlacerOrderNumberImagingServiceRequest == "PL123"
    assert request.FillerOrderNumberImagingServiceRequest == "FL456"
    processing = [
        e
        for e in sr.ContributingEquipmentSequence
        if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    ]
    assert processing and processing[0].ContributionDescription.startswith("Processing Algorithm")
    assert processing[0].ManufacturerModelName == "ecgfounder-cad4"


def test_sr_has_one_group_per_vessel_with_probability_and_risk(sr_files):
    sr = pydicom.dcmread(sr_files["scored"])
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = [i for i in _items(sr) if i.ValueType == "CONTAINER" and _name(i) == "125007"]
    assert len(groups) == 4
    sites, risks, probs = [], [], []
    for group in groups:
        children = list(group.ContentSequence)
        sites += [c.ConceptCodeSequence[0].CodeValue for c in children if _name(c) == "363698007"]
        risks += [c.ConceptCodeSequence[0].CodeValue for c in children if _name(c) == "121153"]
        nums = [c for c in children if c.ValueType == "NUM"]
        assert _name(nums[0]) == "122157"
        unit = nums[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
        probs.append(float(nums[0].MeasuredValueSequence[0].NumericValue))
        finding = [c for c in children if _name(c) == "121071"][0]
        assert finding.ConceptCodeSequence[0].CodeValue == "415582006"
        assert {_name(c) for c in children} >= {"112039", "112040", "111001", "111003", "111002"}
    assert sites == ["13647002", "3227004", "59438005", "57396003"]
    assert probs == [0.42, 0.004, 0.09, 0.15]
    assert risks == ["15508007", "75976002", "75976002", "15508007"]  # lcx at its threshold is flagged
    texts = [i.TextValue for i in _items(sr) if i.ValueType == "TEXT"]
    assert "DEMONSTRATION MODEL — NOT FOR CLINICAL USE" in texts
    assert "Decision support for adults; not a diagnosis." in texts


def test_not_evaluated_sr_carries_the_coded_reason_and_no_probabilities(sr_files):
    sr = pydicom.dcmread(sr_files["not_evaluated"])
    assert not [i for i in _items(sr) if i.ValueType == "NUM"]
    reason = [i for i in _items(sr) if i.ValueType == "CODE" and _name(i) == "NOT-EVALUATED"]
    assert reason[0].ConceptCodeSequence[0].CodeValue == "AGE"
    risks = {i.ConceptCodeSequence[0].CodeValue for i in _items(sr) if _name(i) == "121153"}
    assert risks == {"64957009"}
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99ECGCAD"


def test_sr_without_dicom_source_builds_study_from_identifiers(sr_files):
    sr = pydicom.dcmread(sr_files["no_source"])
    assert sr.PatientID == "P1"
    assert sr.StudyInstanceUID.startswith("2.25.")
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr


def test_sr_uids_are_deterministic_and_change_with_version(ecg_dataset, ecg_bytes):
    first = build_stenosis_sr(make_input(ecg_dataset, ecg_bytes))
    again = build_stenosis_sr(make_input(ecg_dataset, ecg_bytes))
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID.startswith("2.25.") and len(first.SOPInstanceUID) <= 64
    other_model = build_stenosis_sr(make_input(ecg_dataset, ecg_bytes, model_version="0.2.0"))
    assert other_model.SOPInstanceUID != first.SOPInstanceUID
    pre = PredecessorReference(sop_class_uid=first.SOPClassUID, sop_instance_uid=first.SOPInstanceUID)
    corrected = build_stenosis_sr(make_input(ecg_dataset, ecg_bytes, result_version=2, predecessor=pre))
    assert corrected.SeriesInstanceUID == first.SeriesInstanceUID
    assert corrected.SOPInstanceUID != first.SOPInstanceUID
    ref = corrected.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    rooted = result_uids(make_input(ecg_dataset, ecg_bytes), "sr", uid_root="1.2.826.0.1.3680043.10.999")
    assert all(u.startswith("1.2.826.0.1.3680043.10.999.") and len(u) <= 64 for u in rooted)


def test_correction_without_predecessor_is_refused(ecg_dataset, ecg_bytes):
    with pytest.raises(BuildError):
        build_stenosis_sr(make_input(ecg_dataset, ecg_bytes, result_version=2))


def test_comprehensive_3d_sr_is_a_setting(ecg_dataset, ecg_bytes):
    sr = build_stenosis_sr(make_input(ecg_dataset, ecg_bytes), sop_class="comprehensive3d")
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR


@pytest.mark.parametrize("key", ["scored", "not_evaluated", "no_source"])
def test_dciodvfy_reports_no_errors(sr_files, key):
    out = subprocess.run([tool("dciodvfy"), str(sr_files[key])], capture_output=True, text=True, timeout=60)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.parametrize("key", ["scored", "not_evaluated", "no_source"])
def test_dsrdump_parses_without_errors(sr_files, key):
    out = subprocess.run([tool("dsrdump"), str(sr_files[key])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = out.stdout + out.stderr
    assert not [line for line in text.splitlines() if line.startswith("E:")]
    assert "Imaging Measurement Report" in text


@pytest.mark.parametrize("key", ["scored", "not_evaluated"])
def test_pixelmed_sr_validator_finds_only_the_deliberate_procedure_code(sr_files, key):
    java = tool("java")
    if not PIXELMED_JAR.exists():
        pytest.skip("PixelMed (libpixelmed-java) is not installed")
    cmd = [
        java,
        "-Djdk.xml.xpathExprOpLimit=0",
        "-Djdk.xml.xpathExprGrpLimit=0",
        "-Djdk.xml.xpathTotalOpLimit=0",
        "-cp",
        # pixelmed.jar's manifest Class-Path names its Debian dependencies (slf4j, commons-codec, …)
        f"{PIXELMED_JAR}:/usr/share/java/slf4j-api.jar:/usr/share/java/commons-codec.jar",
        "com.pixelmed.validate.DicomSRValidator",
        str(sr_files[key]),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert "Found Root Template TID_1500" in text
    errors = [line for line in text.splitlines() if line.startswith("Error")]
    assert errors and all(DELIBERATE_PIXELMED in line for line in errors), errors
