"""The fast SR builder produces the same SR as the highdicom-based builder it replaced.

The reference is ``tests/results/_sr_reference.py`` (the previous implementation, which let highdicom
construct the document from the fully parsed source ECG). Every element is compared, at every depth —
file meta, patient and study attributes, content tree, evidence, request, predecessor and equipment
sequences — and then the encoded Part 10 bytes. The one value that differs between two builds of either
builder is highdicom's own Contributing Equipment item's Contribution DateTime (the time of the build);
it is set equal before the byte comparison. All other values, including the SOP Instance / Series UIDs
and the content and instance creation dates and times, are deterministic and must be equal.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Callable, Iterator
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from ecgcad.errors import BuildError
from ecgcad.integration.formats.ecg import EcgIdentifiers
from ecgcad.integration.reports import pdf as pdf_module
from ecgcad.integration.reports.content import PredecessorReference, StenosisReportInput
from ecgcad.integration.reports.sr import build_stenosis_sr, source_evidence
from tests.results import _sr_reference as reference
from tests.results.conftest import make_input, not_evaluated_input

HIGHDICOM_MANUFACTURER = "Highdicom open-source contributors"
CONTRIBUTION_DATETIME = 0x0018A002


# -- comparison -----------------------------------------------------------------------------------------


def _differences(new: Dataset, old: Dataset, path: str = "") -> Iterator[str]:
    """Paths (and values) at which ``new`` and ``old`` differ, element by element, at every depth."""
    new_tags, old_tags = set(new.keys()), set(old.keys())
    for tag in sorted(new_tags ^ old_tags):
        side = "only new" if tag in new_tags else "only old"
        yield f"{path}{tag}: {side}"
    for tag in sorted(new_tags & old_tags):
        a, b = new[tag], old[tag]
        where = f"{path}{tag} {a.keyword}"
        if a.VR != b.VR:
            yield f"{where}: VR {a.VR} != {b.VR}"
            continue
        if a.VR == "SQ":
            if len(a.value) != len(b.value):
                yield f"{where}: {len(a.value)} items != {len(b.value)}"
                continue
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                yield from _differences(x, y, f"{where}[{i}]/")
        elif tag == CONTRIBUTION_DATETIME and old.get("Manufacturer") == HIGHDICOM_MANUFACTURER:
            continue  # the time of the build (datetime.now() in highdicom), in both builders
        elif a.value != b.value or type(a.value) is not type(b.value):
            yield f"{where}: {a.value!r} ({type(a.value).__name__}) != {b.value!r} ({type(b.value).__name__})"


def _encoded(ds: Dataset) -> bytes:
    ds = copy.deepcopy(ds)
    for item in ds.get("ContributingEquipmentSequence", []):
        if item.get("Manufacturer") == HIGHDICOM_MANUFACTURER:
            item.ContributionDateTime = "20000101000000"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def assert_same_sr(new: Dataset, old: Dataset) -> None:
    """``new`` and ``old`` are the same SR (see the module docstring)."""
    diffs = list(_differences(new, old))
    diffs += [f"file meta {d}" for d in _differences(new.file_meta, old.file_meta)]
    assert diffs == []
    assert getattr(new, "preamble", None) == getattr(old, "preamble", None)
    assert _encoded(new) == _encoded(old)


# -- sources and inputs ---------------------------------------------------------------------------------


def _part10(ds: Dataset, **save: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, **save)
    return buf.getvalue()


def _latin1_source(ecg_dataset: Dataset) -> Dataset:
    """A source with a Latin-1 name, issuer sequences, other IDs and no Referring Physician's Name."""
    ds = copy.deepcopy(ecg_dataset)
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "ECG Ruhe, 12 Ableitungen (Größe)"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "RIS-HOSP"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    other = Dataset()
    other.PatientID = "A-77"
    other.IssuerOfPatientID = "OTHER"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = "1.2.3.4"
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    reason = Dataset()
    reason.CodeValue = "29857009"
    reason.CodingSchemeDesignator = "SCT"
    reason.CodeMeaning = "Chest pain"
    ds.ReasonForPerformedProcedureCodeSequence = [reason]
    ds.ClinicalTrialSponsorName = "Sponsor"
    del ds.ReferringPhysicianName
    return ds


def _implicit_source(ecg_dataset: Dataset) -> Dataset:
    ds = copy.deepcopy(ecg_dataset)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


SourceFactory = Callable[[Dataset], Dataset] | None


def _low_risk(ecg: Dataset | None, raw: bytes | None) -> StenosisReportInput:
    probabilities = {"rca": 0.01, "lm": 0.0, "lad": 0.1499, "lcx": 1e-07}
    return make_input(
        ecg,
        raw,
        demonstration=False,
        probabilities=probabilities,
        flags=dict.fromkeys(probabilities, False),
        requested_procedure_id="RP-1",
        accession_number="ACC-9",
    )


def _all_high(ecg: Dataset | None, raw: bytes | None) -> StenosisReportInput:
    probabilities = {"rca": 1.0, "lm": 0.123456789012345, "lad": 0.999999999, "lcx": 0.15}
    return make_input(
        ecg,
        raw,
        probabilities=probabilities,
        flags=dict.fromkeys(probabilities, True),
        model_name="ecgfounder-cad4-" + "x" * 60,
        model_version="2.0.0-rc.1+" + "y" * 60,
        preprocessing={"notch_hz": 60, "resample": {"to": 500, "method": "polyphase"}},
        window_policy="best",
        intended_use="Für Erwachsene – keine Diagnose. " * 4,
    )


def _full_identifiers(ecg: Dataset | None, raw: bytes | None) -> StenosisReportInput:
    ident = EcgIdentifiers(
        patient_id="MRN-1",
        issuer_of_patient_id="HOSP",
        patient_name="Doe^Jane",
        patient_birth_date="19600102",
        patient_sex="F",
        patient_age="064Y",
        accession_number="ACC-1",
        issuer_of_accession_number="RIS",
        study_instance_uid="1.2.826.0.1.3680043.10.999.1",
        series_instance_uid="1.2.826.0.1.3680043.10.999.2",
        sop_instance_uid="1.2.826.0.1.3680043.10.999.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.2",
        acquisition_datetime=dt.datetime(2024, 1, 2, 3, 4, 5),
    )
    return make_input(None, None, identifiers=ident)


def _corrected(ecg: Dataset | None, raw: bytes | None) -> StenosisReportInput:
    pre = PredecessorReference(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", sop_instance_uid="2.25.1234", series_instance_uid=None
    )
    return make_input(ecg, raw, result_version=2, predecessor=pre)


def _corrected_other_study(ecg: Dataset | None, raw: bytes | None) -> StenosisReportInput:
    pre = PredecessorReference(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
        sop_instance_uid="2.25.1235",
        series_instance_uid="2.25.99",
        study_instance_uid="2.25.98",
    )
    return not_evaluated_input(ecg, raw, result_version=3, predecessor=pre)  # type: ignore[arg-type]


#: name → (source variant or None for "no DICOM source", input factory, builder keyword arguments)
CASES: dict[str, tuple[str | None, Callable[..., StenosisReportInput], dict[str, Any]]] = {
    "scored": ("as_is", make_input, {}),
    "scored_3d": ("as_is", make_input, {"sop_class": "comprehensive3d"}),
    "not_evaluated": ("as_is", not_evaluated_input, {}),
    "not_evaluated_3d": ("as_is", not_evaluated_input, {"sop_class": "comprehensive3d"}),
    "clinical_low_risk": ("as_is", _low_risk, {}),
    "all_high_long_names": ("as_is", _all_high, {"sop_class": "comprehensive3d"}),
    "corrected": ("as_is", _corrected, {}),
    "corrected_other_study": ("as_is", _corrected_other_study, {}),
    "site_settings": (
        "as_is",
        make_input,
        {
            "manufacturer": "Hospital AI",
            "device_name": "ecg-scorer-01",
            "institution_name": "General Hospital",
            "uid_root": "1.2.826.0.1.3680043.10.999",
        },
    ),
    "latin1_source_with_sequences": ("latin1", make_input, {}),
    "implicit_vr_source": ("implicit", not_evaluated_input, {}),
    "no_source": (None, make_input, {}),
    "no_source_3d": (None, make_input, {"sop_class": "comprehensive3d"}),
    "no_source_no_order": (
        None,
        lambda e, r: make_input(e, r, placer_order_number=None, filler_order_number=None),
        {},
    ),
    "no_source_full_identifiers": (None, _full_identifiers, {"uid_root": "1.2.826.0.1.3680043.10.999"}),
    "no_source_not_evaluated": (None, not_evaluated_input, {}),
}

SOURCES: dict[str, SourceFactory] = {"as_is": None, "latin1": _latin1_source, "implicit": _implicit_source}


@pytest.fixture(scope="module")
def sources(ecg_dataset: Dataset, ecg_bytes: bytes) -> dict[str, tuple[Dataset, bytes]]:
    out = {"as_is": (ecg_dataset, ecg_bytes)}
    for name, factory in SOURCES.items():
        if factory is not None:
            ds = factory(ecg_dataset)
            out[name] = (ds, _part10(ds, enforce_file_format=True))
    return out


def case_input(name: str, sources: dict[str, tuple[Dataset, bytes]]) -> tuple[StenosisReportInput, dict]:
    """The report input and builder keyword arguments of case ``name``."""
    source, factory, kwargs = CASES[name]
    if source is None:
        return factory(None, None), kwargs
    ds, raw = sources[source]
    return factory(ds, raw), kwargs


# -- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_fast_sr_equals_the_highdicom_built_sr(name, sources):
    inp, kwargs = case_input(name, sources)
    assert_same_sr(build_stenosis_sr(inp, **kwargs), reference.build_stenosis_sr(inp, **kwargs))


def test_comparison_sees_a_changed_element(sources):
    """The comparison is not vacuous: a one-character change deep in the content tree is found."""
    inp, _ = case_input("scored", sources)
    new, old = build_stenosis_sr(inp), reference.build_stenosis_sr(inp)
    group = new.ContentSequence[-2].ContentSequence[1]
    group.ContentSequence[0].TextValue = group.ContentSequence[0].TextValue + "!"
    with pytest.raises(AssertionError):
        assert_same_sr(new, old)


def test_builds_are_independent(sources):
    """Nothing is shared between two SRs: changing one leaves the next build unchanged."""
    inp, _ = case_input("scored", sources)
    first = build_stenosis_sr(inp)
    first.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning = "changed"
    first.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue = "0"
    assert_same_sr(build_stenosis_sr(inp), reference.build_stenosis_sr(inp))


@pytest.mark.parametrize("source", ["as_is", "latin1", "implicit"])
def test_source_evidence_keeps_every_patient_and_study_attribute(source, sources):
    """The evidence read without the waveform has the values of the full parse (the PDF copies them)."""
    ds, raw = sources[source]
    inp = make_input(ds, raw)
    fast, from_source = source_evidence(inp)
    full, _ = reference.source_evidence(inp)
    assert from_source
    assert "WaveformSequence" not in fast and "WaveformAnnotationSequence" not in fast
    for elem in fast:
        assert full[elem.tag].value == elem.value, elem.keyword
    pdf = b"%PDF-1.4\n%test\n"
    new = pdf_module.build_encapsulated_pdf(inp, pdf)
    old_source_evidence = pdf_module.source_evidence
    try:
        pdf_module.source_evidence = reference.source_evidence  # type: ignore[assignment]
        old = pdf_module.build_encapsulated_pdf(inp, pdf)
    finally:
        pdf_module.source_evidence = old_source_evidence  # type: ignore[assignment]
    assert list(_differences(new, old)) == []
    assert _part10(new, enforce_file_format=True) == _part10(old, enforce_file_format=True)


def _with_source(ecg_dataset: Dataset, change: Callable[[Dataset], None]) -> StenosisReportInput:
    """An input whose source bytes are ``ecg_dataset`` changed by ``change`` (identifiers unchanged)."""
    ds = copy.deepcopy(ecg_dataset)
    change(ds)
    return make_input(ecg_dataset, _part10(ds, enforce_file_format=True))


def _set(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _delete(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        (None, {"manufacturer": "m" * 65}),
        (None, {"manufacturer": "back\\slash"}),
        (None, {"sop_class": "enhanced"}),
        (_delete("StudyID"), {}),
        (_delete("AccessionNumber"), {}),
    ],
    ids=[
        "manufacturer_too_long",
        "manufacturer_backslash",
        "unknown_sop_class",
        "no_study_id",
        "no_accession_number",
    ],
)
def test_both_builders_refuse_the_same_inputs(ecg_dataset, ecg_bytes, change, kwargs):
    inp = make_input(ecg_dataset, ecg_bytes) if change is None else _with_source(ecg_dataset, change)
    with pytest.raises(BuildError):
        reference.build_stenosis_sr(inp, **kwargs)
    with pytest.raises(BuildError):
        build_stenosis_sr(inp, **kwargs)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientSex", "X"),
        ("PatientBirthDate", "1971"),
        ("PatientBirthDate", "00000000"),
        ("StudyTime", "2561"),
    ],
    ids=["bad_patient_sex", "bad_birth_date", "year_zero_birth_date", "bad_study_time"],
)
def test_source_values_highdicom_refuses_are_left_out_not_fatal(ecg_dataset, keyword, value):
    """highdicom refuses them; the report of an acknowledged ECG must not be (issue 16, item 2): the value
    is left out and the rest of the SR is as highdicom builds it without that value."""
    inp = _with_source(ecg_dataset, _set(keyword, value))
    with pytest.raises(BuildError):
        reference.build_stenosis_sr(inp)
    sr = build_stenosis_sr(inp)
    assert sr[keyword].value == ""
    blank = _with_source(ecg_dataset, _set(keyword, ""))
    assert list(_differences(sr, build_stenosis_sr(blank))) == []


def test_fast_builder_reads_the_source_without_its_waveform(ecg_dataset, ecg_bytes, monkeypatch):
    """The SR build parses no sequence at or after the waveform annotations (the cost it was made to avoid)."""
    inp = make_input(ecg_dataset, ecg_bytes)
    annotations_at = ecg_bytes.find(b"\x40\x00\x20\xb0SQ")  # (0040,B020) WaveformAnnotationSequence
    assert annotations_at > 0
    parsed: list[int] = []
    original = pydicom.filereader.read_sequence

    def recording(fp, is_implicit_VR, is_little_endian, bytelength, encoding, offset=0):
        parsed.append(fp.tell())
        return original(fp, is_implicit_VR, is_little_endian, bytelength, encoding, offset)

    monkeypatch.setattr(pydicom.filereader, "read_sequence", recording)
    reference.build_stenosis_sr(inp)
    assert max(parsed) > annotations_at  # the old builder parsed them
    parsed.clear()
    build_stenosis_sr(inp)
    assert all(position < annotations_at for position in parsed)
