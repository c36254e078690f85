"""DICOM Structured Report of a stenosis result: TID 1500 "Imaging Measurement Report" (highdicom).

The document (Comprehensive SR, or Comprehensive 3D SR by setting) reads::

    CONTAINER (126000, DCM, "Imaging Measurement Report")            TID 1500
      HAS CONCEPT MOD  Language of Content Item and Descendants = English
      HAS OBS CONTEXT  Observer Type = Device; Device Observer UID / Name / Manufacturer /
                       Model Name / Serial Number                          (TID 1001 / 1004)
      HAS CONCEPT MOD  Procedure reported = (268400002, SCT, "12 lead electrocardiogram")
      CONTAINS CONTAINER (126010, DCM, "Imaging Measurements")
        CONTAINS CONTAINER (125007, DCM, "Measurement Group")  × 4 vessels     TID 1501
          Tracking Identifier "RCA stenosis risk" / Tracking Unique Identifier
          Finding = (415582006, SCT, "Stenosis")
          Finding Site = RCA 13647002 / LM 3227004 / LAD 59438005 / LCX 57396003 (SCT)
          Algorithm Name / Version / Parameters (thresholds, window policy, checkpoint,
                          preprocessing) / Manufacturer                        (TID 4019)
          NUM (122157, DCM, "Probability") = p, unit (1, UCUM, "no units")
          CODE (121153, DCM, "Lesion Risk") = High risk 15508007 / Low risk 75976002
                          (CID 3118; Uncertain risk 64957009 when not evaluated)
      CONTAINS CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
        TEXT (DISCLAIMER, 99ECGCAD, "Disclaimer")        only for a demonstration model
        TEXT (INTENDED-USE, 99ECGCAD, "Intended use")
        CODE (NOT-EVALUATED, 99ECGCAD, "Reason not evaluated") = (<code>, 99ECGCAD, <text>)
                                                         only when not evaluated

Choices (documented once, here and in ``docs/reports.md``):

- **Probability concept**: ``(122157, DCM, "Probability")`` — a standard concept, so no private code
  is needed for the measurement itself; unit UCUM ``1``.
- **Risk concept**: ``(121153, DCM, "Lesion Risk")``, the concept name CID 3118 values are used with.
- **Not evaluated**: each vessel group keeps its tracking identifiers, finding, site and algorithm, has
  no probability NUM (TID 300 requires a value; PixelMed rejects a NUM with only a Numeric Value
  Qualifier), and its risk CODE is ``(64957009, SCT, "Uncertain risk")`` (CID 3118); the coded reason
  is the document-level ``(NOT-EVALUATED, 99ECGCAD, "Reason not evaluated")`` CODE.
- **Private codes** (disclaimer, intended use, not-evaluated reasons) use coding scheme ``99ECGCAD``,
  declared in CodingSchemeIdentificationSequence.
- **Procedure reported** is ``(268400002, SCT, "12 lead electrocardiogram")``, which is what was done;
  PixelMed's validator warns/errs that it is not in CID 100 "Quantitative Diagnostic Imaging
  Procedures" (an imaging list with no ECG procedure). This is deliberate.
- **UIDs**: Series and SOP Instance UIDs are derived from (source SOP Instance UID, model version[,
  result version]) by :func:`ecgcad.integration.reports.content.result_uids` (``2.25.<uuid5>`` by default);
  corrections share the series and list the old SR in PredecessorDocumentsSequence.
- Contributing Equipment: the acquisition device of the source (only for an image source, as highdicom
  does; never for an ECG), our algorithm with purpose ``(109102, DCM, "Processing Equipment")`` (CID 7005
  has no "Processing Algorithm" code in the dictionary we build against), ContributionDescription
  ``"Processing Algorithm: <model>"``, model name and version, and the checkpoint-dependent Device UID,
  and highdicom's own item (its version, built now).

How it is built: the document is the one ``highdicom.sr.ComprehensiveSR`` (``Comprehensive3DSR``) makes
from highdicom's TID 1500 templates, but assembled directly as pydicom datasets. highdicom's constructor
deep-copies and walks the whole content tree several times and needed the fully parsed source ECG (77
waveform annotations, the waveform itself), about 50 ms per SR; this builder reads only the source's
identifying, patient and study attributes (:func:`source_evidence`) and writes each content item once.
The patient and study attributes copied are those highdicom copies (the root attributes of the Patient
and Study modules of the source's IOD, from highdicom's tables), and the values highdicom checks are
checked the same way (a refused value is a :class:`~ecgcad.errors.BuildError`).
``tests/results/test_sr_equivalence.py`` compares every element with the highdicom-built document.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import highdicom as hd
from highdicom._standard_utils import (
    does_iod_have_pixel_data,
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from highdicom.enum import PatientSexValues
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_partial
from pydicom.filewriter import write_file_meta_info
from pydicom.sr.coding import Code
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DA, DS, DT, TM

import ecgcad
from ecgcad.errors import BuildError
from ecgcad.integration.reports.content import (
    VESSELS,
    StenosisReportInput,
    derive_uid,
    device_uid_for,
    result_uids,
    study_instance_uid_for,
)
from ecgcad.logsetup import uid_hash

logger = logging.getLogger(__name__)

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
_SOP_CLASS_UIDS = {"comprehensive": COMPREHENSIVE_SR, "comprehensive3d": COMPREHENSIVE_3D_SR}

#: Our private coding scheme (declared in every SR).
PRIVATE_SCHEME = "99ECGCAD"

PROCEDURE_12_LEAD_ECG = Code("268400002", "SCT", "12 lead electrocardiogram")
FINDING_STENOSIS = Code("415582006", "SCT", "Stenosis")
PROBABILITY = Code("122157", "DCM", "Probability")
UNIT_ONE = Code("1", "UCUM", "no units")
LESION_RISK = Code("121153", "DCM", "Lesion Risk")
HIGH_RISK = Code("15508007", "SCT", "High risk")
LOW_RISK = Code("75976002", "SCT", "Low risk")
UNCERTAIN_RISK = Code("64957009", "SCT", "Uncertain risk")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
DISCLAIMER = Code("DISCLAIMER", PRIVATE_SCHEME, "Disclaimer")
INTENDED_USE = Code("INTENDED-USE", PRIVATE_SCHEME, "Intended use")
NOT_EVALUATED = Code("NOT-EVALUATED", PRIVATE_SCHEME, "Reason not evaluated")
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

#: Finding Site per vessel (SCT, CID 3016).
FINDING_SITES: dict[str, Code] = {
    "rca": Code("13647002", "SCT", "Right coronary artery"),
    "lm": Code("3227004", "SCT", "Left main coronary artery"),
    "lad": Code("59438005", "SCT", "Left anterior descending coronary artery"),
    "lcx": Code("57396003", "SCT", "Circumflex branch of left coronary artery"),
}

DEFAULT_MANUFACTURER = "ecgcad"
SR_SERIES_NUMBER = 9401
PDF_SERIES_NUMBER = 9402

# Concept names of the highdicom templates used (TID 1500, 1501, 1001, 1004, 4019, 4108).
_IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
_LANGUAGE = Code("121049", "DCM", "Language of Content Item and Descendants")
_ENGLISH_US = Code("en-US", "RFC5646", "English (United States)")
_OBSERVER_TYPE = Code("121005", "DCM", "Observer Type")
_DEVICE = Code("121007", "DCM", "Device")
_DEVICE_OBSERVER_UID = Code("121012", "DCM", "Device Observer UID")
_DEVICE_OBSERVER_NAME = Code("121013", "DCM", "Device Observer Name")
_DEVICE_OBSERVER_MANUFACTURER = Code("121014", "DCM", "Device Observer Manufacturer")
_DEVICE_OBSERVER_MODEL_NAME = Code("121015", "DCM", "Device Observer Model Name")
_DEVICE_OBSERVER_SERIAL_NUMBER = Code("121016", "DCM", "Device Observer Serial Number")
_PROCEDURE_REPORTED = Code("121058", "DCM", "Procedure reported")
_IMAGING_MEASUREMENTS = Code("126010", "DCM", "Imaging Measurements")
_MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")
_TRACKING_IDENTIFIER = Code("112039", "DCM", "Tracking Identifier")
_TRACKING_UID = Code("112040", "DCM", "Tracking Unique Identifier")
_FINDING = Code("121071", "DCM", "Finding")
_FINDING_SITE = Code("363698007", "SCT", "Finding Site")
_ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
_ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
_ALGORITHM_MANUFACTURER = Code("122405", "DCM", "Algorithm Manufacturer")
_ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")

_CONTAINS = "CONTAINS"
_HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
_HAS_CONCEPT_MOD = "HAS CONCEPT MOD"

#: What highdicom's SOPClass writes into the file meta of the objects it makes.
_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"

#: Source attributes besides the Patient and Study modules: identification, and what highdicom's
#: ``ContributingEquipment.for_image_acquisition`` takes from an image source.
_SOURCE_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "AcquisitionTime",
)


def build_stenosis_sr(
    inp: StenosisReportInput,
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    device_name: str = "ecgcad",
    institution_name: str | None = None,
    sop_class: Literal["comprehensive", "comprehensive3d"] = "comprehensive",
    uid_root: str | None = None,
) -> Dataset:
    """Build the TID 1500 Comprehensive SR of one stenosis result.

    Parameters
    ----------
    inp:
        The validated report input.
    manufacturer:
        Manufacturer of the SR, the algorithm and the device observer.
    device_name:
        Device Observer Name (our service).
    institution_name:
        Institution Name of the SR; ``None`` leaves it out.
    sop_class:
        ``"comprehensive"`` (1.2.840.10008.5.1.4.1.1.88.33) or ``"comprehensive3d"`` (…88.34).
    uid_root:
        Optional registered UID root; ``None`` → ``2.25.<uuid5>`` UIDs (see
        :func:`ecgcad.integration.reports.content.derive_uid`).

    Returns
    -------
    pydicom.dataset.Dataset
        The SR with its file meta information (Explicit VR Little Endian) and preamble, ready for
        ``dcmwrite(..., enforce_file_format=True)`` or C-STORE. Each call returns a new, unshared tree
        (within one SR the four vessel groups share their algorithm identification items, as they did
        when highdicom built the document).

    Raises
    ------
    BuildError
        The input cannot be turned into a valid SR (bad predecessor, unknown SOP class, a value that
        highdicom would refuse: manufacturer not a valid LO, a required source attribute missing, a source
        SOP class without IOD). Source dates, times and a Patient's Sex that do not parse are left out
        (see :func:`source_evidence`), never a reason to refuse.
    """
    sop_class_uid = _SOP_CLASS_UIDS.get(sop_class)
    if sop_class_uid is None:
        raise BuildError(f"unknown SR sop_class {sop_class!r}")
    if inp.result_version > 1 and inp.predecessor is None:
        raise BuildError("a corrected result (result_version > 1) needs the predecessor SR")
    evidence, from_source = source_evidence(inp, uid_root=uid_root)
    series_uid, sop_uid = result_uids(inp, "sr", uid_root=uid_root)
    device_uid = device_uid_for(inp, uid_root=uid_root)
    try:
        with warnings.catch_warnings():
            # pydicom warns about values we set on purpose (as highdicom did, e.g. a long institution).
            warnings.simplefilter("ignore", UserWarning)
            sr = _document(
                inp,
                evidence,
                sop_class_uid=sop_class_uid,
                series_uid=series_uid,
                sop_uid=sop_uid,
                device_uid=device_uid,
                uid_root=uid_root,
                manufacturer=manufacturer,
                device_name=device_name,
                institution_name=institution_name,
                from_source=from_source,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise BuildError(f"SR could not be built: {exc}") from exc
    logger.info(
        "built stenosis SR sop=%s source=%s model=%s version=%d evaluated=%s",
        uid_hash(sop_uid),
        uid_hash(inp.uid_source_key),
        inp.model_version,
        inp.result_version,
        inp.scorable,
    )
    return sr


def source_evidence(inp: StenosisReportInput, *, uid_root: str | None = None) -> tuple[Dataset, bool]:
    """The dataset patient and study attributes are copied from, and whether it is the real source.

    With ``source_dataset_bytes`` this is the source ECG's identifying (SOP Class / Instance, Series and
    Study Instance UIDs, character set), equipment, and Patient and Study module attributes (the root
    attributes of those modules in any IOD), read up to the last of them: the waveform, its annotations
    and private data are never parsed. Otherwise a stand-in is built from the identifiers (Patient and
    General Study modules; a Study Instance UID derived from the source key when the identifiers have
    none). Dates and times that do not parse, and a Patient's Sex other than M / F / O, are emptied
    (left out): the report of an acknowledged ECG is never refused for a value the source got wrong.
    """
    if inp.source_dataset_bytes is not None:
        return _leave_out_unreadable(_read_source(inp.source_dataset_bytes)), True
    ident = inp.identifiers
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = ident.patient_id or ""
    if ident.issuer_of_patient_id:
        ds.IssuerOfPatientID = ident.issuer_of_patient_id
    ds.PatientName = ident.patient_name or ""
    ds.PatientBirthDate = ident.patient_birth_date or ""
    ds.PatientSex = ident.patient_sex or ""
    if ident.patient_age:
        ds.PatientAge = ident.patient_age
    ds.AccessionNumber = inp.effective_accession_number or ""
    if ident.issuer_of_accession_number:
        issuer = Dataset()
        issuer.LocalNamespaceEntityID = ident.issuer_of_accession_number
        ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.StudyInstanceUID = study_instance_uid_for(inp, uid_root=uid_root)
    ds.StudyID = ""
    acquired = ident.acquisition_datetime
    ds.StudyDate = acquired.strftime("%Y%m%d") if acquired else ""
    ds.StudyTime = acquired.strftime("%H%M%S") if acquired else ""
    ds.ReferringPhysicianName = ""
    # Placeholders the evidence walk needs; no evidence sequence is written for a stand-in.
    ds.SOPClassUID = ident.sop_class_uid or "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.SOPInstanceUID = ident.sop_instance_uid or derive_uid("ecg", inp.uid_source_key, uid_root=uid_root)
    ds.SeriesInstanceUID = ident.series_instance_uid or derive_uid(
        "ecg-series", inp.uid_source_key, uid_root=uid_root
    )
    ds.Modality = "ECG"
    return _leave_out_unreadable(ds), False


#: Value checks of copied source values: a DA / DT / TM that does not parse (e.g. a birth date
#: ``00000000``, "year 0 is out of range") and a Patient's Sex outside M / F / O are left out (emptied).
_PARSERS = {"DA": DA, "DT": DT, "TM": TM}


def _leave_out_unreadable(ds: Dataset) -> Dataset:
    """Empty the top-level dates, times and Patient's Sex of ``ds`` that the SR could not carry.

    They are copied from the source: a report is never refused for them (the ECG was acknowledged, so its
    result must reach PACS and the EHR); the value is left out, as an unknown Type 2 value is.
    """
    left_out: list[str] = []
    for elem in ds:
        parse = _PARSERS.get(str(elem.VR))
        value = elem.value
        if elem.keyword == "PatientSex":
            if value and str(value) not in ("M", "F", "O"):
                elem.value = ""
                left_out.append(elem.keyword)
            continue
        if parse is None or value is None or value == "":
            continue
        try:
            for item in value if elem.VM > 1 else [value]:
                if str(item).strip():
                    parse(str(item).strip())
        except (ValueError, TypeError, OverflowError):
            elem.value = ""
            left_out.append(elem.keyword)
    if left_out:
        logger.warning("source values the report cannot carry are left out: %s", ", ".join(left_out))
    return ds


# -- the source ---------------------------------------------------------------------------------------


@functools.cache
def _source_tags() -> list[int]:
    """Sorted tags read from a source: :data:`_SOURCE_KEYWORDS` and every Patient / Study module root
    attribute of any IOD (so that the SOP class need not be known before reading)."""
    keywords = set(_SOURCE_KEYWORDS)
    modules = get_module_attribute_map()
    for iod_modules in get_iod_module_map().values():
        for module in iod_modules:
            if module["ie"] in ("Patient", "Study"):
                keywords.update(a["keyword"] for a in modules[module["key"]] if not a["path"])
    return sorted(t for t in map(tag_for_keyword, keywords) if t is not None)


def _read_source(data: bytes) -> Dataset:
    """The :func:`_source_tags` elements of a Part 10 object, read up to the last of them.

    Elements are read as :func:`pydicom.dcmread` reads them (any transfer syntax it reads, values decoded
    with the source's character set on access); defined-length values that are not kept are skipped
    without being read, and reading stops before the first element after the last kept tag.
    """
    tags = _source_tags()
    last = tags[-1]
    return read_partial(
        io.BytesIO(data), stop_when=lambda tag, _vr, _length: tag > last, specific_tags=list(tags)
    )


@functools.cache
def _patient_study_tags(sop_class_uid: str) -> tuple[int, ...]:
    """Tags of the Patient and Study module root attributes of the IOD of ``sop_class_uid``: what
    highdicom's ``SOPClass.copy_patient_and_study_information`` copies into the document."""
    try:
        iod = get_sop_class_iod_map()[sop_class_uid]
    except KeyError:
        raise BuildError(f"the source SOP class {sop_class_uid} has no IOD in highdicom's tables") from None
    modules = get_module_attribute_map()
    tags: list[int] = []
    for ie in ("Patient", "Study"):
        for module in get_iod_module_map()[iod]:
            if module["ie"] == ie:
                for attribute in modules[module["key"]]:
                    tag = tag_for_keyword(attribute["keyword"]) if not attribute["path"] else None
                    if tag is not None and tag not in tags:
                        tags.append(tag)
    return tuple(tags)


@functools.cache
def _is_image(sop_class_uid: str) -> bool:
    """Whether the IOD has pixel data (highdicom then adds the source's acquisition equipment)."""
    try:
        return does_iod_have_pixel_data(sop_class_uid)
    except KeyError:
        return False


# -- the document -------------------------------------------------------------------------------------


def _document(
    inp: StenosisReportInput,
    evidence: Dataset,
    *,
    sop_class_uid: str,
    series_uid: str,
    sop_uid: str,
    device_uid: str,
    uid_root: str | None,
    manufacturer: str,
    device_name: str,
    institution_name: str | None,
    from_source: bool,
) -> Dataset:
    """The SR: highdicom's ``_SR`` / ``SOPClass`` constructors, then ours (:func:`_finish_common`).

    The steps run in highdicom's order, which matters: a later step replaces what an earlier one set (the
    copied Patient and Study modules replace the checked values, the result time the series date).
    """
    sr = Dataset()
    sr.preamble = b"\x00" * 128
    _set_patient_and_study(sr, evidence)
    _check_long_string(manufacturer)
    sr.file_meta = _file_meta(sop_class_uid, sop_uid)
    _set_series_and_document(
        sr,
        inp,
        sop_class_uid=sop_class_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        manufacturer=manufacturer,
        institution_name=institution_name,
    )
    root = _content(
        inp, manufacturer=manufacturer, device_name=device_name, device_uid=device_uid, uid_root=uid_root
    )
    for element in root:
        sr.add(element)
    _set_evidence_and_references(sr, inp, evidence, series_uid=series_uid, from_source=from_source)
    _copy_patient_and_study_modules(sr, evidence)
    sr.ContributingEquipmentSequence = _contributing_equipment_sequence(inp, evidence, manufacturer)
    _finish_common(sr, inp, device_uid=device_uid)
    sr.SeriesDescription = "AI ECG coronary stenosis risk (SR)"
    sr.CodingSchemeIdentificationSequence = [_private_scheme_item()]
    return sr


def _set_patient_and_study(sr: Dataset, evidence: Dataset) -> None:
    """The patient and study values highdicom takes (and checks) before copying the modules.

    Parameters
    ----------
    sr:
        The document being built; changed in place.
    evidence:
        The source evidence (:func:`source_evidence`).

    Raises
    ------
    AttributeError
        A required source attribute is missing.
    ValueError
        Patient's Sex is not a ``PatientSexValues`` value.
    """
    study_uid = evidence.StudyInstanceUID
    patient_id = evidence.PatientID
    patient_name = evidence.PatientName
    birth_date = evidence.PatientBirthDate
    sex = evidence.PatientSex
    accession = evidence.AccessionNumber
    study_id = evidence.StudyID
    study_date = evidence.StudyDate
    study_time = evidence.StudyTime
    if sex is not None and sex != "":
        sex = PatientSexValues(sex).value
    sr.PatientID = patient_id
    sr.PatientName = patient_name
    sr.PatientBirthDate = DA(birth_date)
    sr.PatientSex = sex
    sr.StudyInstanceUID = str(study_uid)
    sr.AccessionNumber = accession
    sr.StudyID = study_id
    sr.StudyDate = DA(study_date) if study_date is not None else None
    sr.StudyTime = TM(study_time) if study_time is not None else None
    sr.ReferringPhysicianName = evidence.get("ReferringPhysicianName")


def _set_series_and_document(
    sr: Dataset,
    inp: StenosisReportInput,
    *,
    sop_class_uid: str,
    series_uid: str,
    sop_uid: str,
    manufacturer: str,
    institution_name: str | None,
) -> None:
    """SR Document Series, General Equipment, SOP Common and the SR Document General flags.

    Parameters
    ----------
    sr:
        The document being built; changed in place.
    inp:
        The report input (Instance Number is the result version).
    sop_class_uid, series_uid, sop_uid:
        SOP Class UID and the deterministic Series and SOP Instance UIDs.
    manufacturer:
        Manufacturer (already checked as an LO).
    institution_name:
        Institution Name, or ``None`` to leave it out.
    """
    sr.SeriesInstanceUID = series_uid
    sr.SeriesNumber = SR_SERIES_NUMBER
    sr.Modality = "SR"
    sr.Manufacturer = manufacturer
    sr.SOPInstanceUID = sop_uid
    sr.SOPClassUID = sop_class_uid
    sr.InstanceNumber = inp.result_version
    sr.SpecificCharacterSet = "ISO_IR 192"
    if institution_name is not None:
        sr.InstitutionName = institution_name
    # A machine result: complete, never verified by a person, preliminary.
    sr.CompletionFlag = "COMPLETE"
    sr.VerificationFlag = "UNVERIFIED"
    sr.PreliminaryFlag = "PRELIMINARY"


def _set_evidence_and_references(
    sr: Dataset, inp: StenosisReportInput, evidence: Dataset, *, series_uid: str, from_source: bool
) -> None:
    """The SR Document General references: evidence, requested procedure, predecessor, performed procedure.

    Parameters
    ----------
    sr:
        The document being built; changed in place.
    inp:
        The report input: order numbers, accession number, requested procedure, predecessor.
    evidence:
        The source evidence (:func:`source_evidence`).
    series_uid:
        The SR's series, where a predecessor without its own series UID is taken to be.
    from_source:
        Whether ``evidence`` is the real source ECG: only then is it listed as evidence (the identifiers
        stand-in is not an object we can reference).
    """
    if from_source:
        sr.CurrentRequestedProcedureEvidenceSequence = [
            _reference(
                evidence.StudyInstanceUID,
                evidence.SeriesInstanceUID,
                evidence.SOPClassUID,
                evidence.SOPInstanceUID,
            )
        ]
    requested = _requested_procedures(inp, evidence)
    if requested is not None:
        sr.ReferencedRequestSequence = requested
    pre = inp.predecessor
    if pre is not None:
        sr.PredecessorDocumentsSequence = [
            _reference(
                pre.study_instance_uid or evidence.StudyInstanceUID,
                pre.series_instance_uid or series_uid,
                pre.sop_class_uid,
                pre.sop_instance_uid,
            )
        ]
    sr.PerformedProcedureCodeSequence = []
    sr.ReferencedPerformedProcedureStepSequence = []


def _copy_patient_and_study_modules(sr: Dataset, evidence: Dataset) -> None:
    """Copy the Patient and Study module root attributes of the source's IOD into the document.

    As highdicom's ``copy_patient_and_study_information``; they replace the values
    :func:`_set_patient_and_study` set.

    Parameters
    ----------
    sr:
        The document being built; changed in place.
    evidence:
        The source evidence (:func:`source_evidence`).

    Raises
    ------
    BuildError
        The source SOP class has no IOD in highdicom's tables.
    """
    for tag in _patient_study_tags(evidence.SOPClassUID):
        if tag in evidence:
            sr.add(evidence[tag])


def _contributing_equipment_sequence(
    inp: StenosisReportInput, evidence: Dataset, manufacturer: str
) -> list[Dataset]:
    """Contributing Equipment: the source's acquisition device, our algorithm, highdicom.

    The acquisition device only for an image source, as highdicom does (never for an ECG).

    Parameters
    ----------
    inp:
        The report input (the algorithm's identity).
    evidence:
        The source evidence.
    manufacturer:
        Manufacturer of the algorithm.

    Returns
    -------
    list[pydicom.dataset.Dataset]
        The items; the algorithm's Device UID is added by :func:`_finish_common`.
    """
    equipment: list[Dataset] = []
    if _is_image(evidence.SOPClassUID):
        with contextlib.suppress(Exception):  # as highdicom: no equipment item when it cannot be made
            equipment.append(hd.ContributingEquipment.for_image_acquisition(evidence))
    equipment.append(_contributing_equipment(inp, manufacturer))
    equipment.append(hd.ContributingEquipment.for_highdicom())
    return equipment


def _check_long_string(value: str) -> None:
    """highdicom's check of an LO value (Manufacturer)."""
    if len(value) > 64:
        raise ValueError(
            "Values of DICOM value representation Long String (LO) must not exceed 64 characters."
        )
    if "\\" in value:
        raise ValueError(
            "Values of DICOM value representation Long String (LO) must not contain the backslash character."
        )


def _file_meta(sop_class_uid: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.ImplementationClassUID = UID(_IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = f"highdicom{hd.__version__}"
    with DicomBytesIO() as fp:
        write_file_meta_info(fp, meta, enforce_standard=True)
        # The length of the whole group, as highdicom records it (dcmwrite recomputes it when writing).
        meta.FileMetaInformationGroupLength = len(fp.getvalue())
    return meta


def _reference(study_uid: str, series_uid: str, sop_class_uid: str, sop_uid: str) -> Dataset:
    """One study item of a hierarchical SOP instance reference (evidence, predecessor)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = sop_class_uid
    instance.ReferencedSOPInstanceUID = sop_uid
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = [instance]
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = [series]
    return study


# -- the content tree ---------------------------------------------------------------------------------


def _coded(code: Code) -> Dataset:
    """A code sequence item, as highdicom's ``CodedConcept``."""
    item = Dataset()
    value = code.value
    if len(value) > 16:
        if value.startswith("urn") or "://" in value:
            item.URNCodeValue = value
        else:
            item.LongCodeValue = value
    else:
        item.CodeValue = value
    if len(code.meaning) > 64:
        raise ValueError("Code meaning can have maximally 64 characters.")
    item.CodeMeaning = code.meaning
    item.CodingSchemeDesignator = code.scheme_designator
    if code.scheme_version is not None:
        item.CodingSchemeVersion = code.scheme_version
    return item


def _item(value_type: str, name: Code, relationship: str | None) -> Dataset:
    item = Dataset()
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_coded(name)]
    if relationship is not None:
        item.RelationshipType = relationship
    return item


def _text(name: Code, value: str, relationship: str) -> Dataset:
    item = _item("TEXT", name, relationship)
    item.TextValue = str(value)
    return item


def _code(name: Code, value: Code, relationship: str) -> Dataset:
    item = _item("CODE", name, relationship)
    item.ConceptCodeSequence = [_coded(value)]
    return item


def _uidref(name: Code, value: str, relationship: str) -> Dataset:
    item = _item("UIDREF", name, relationship)
    item.UID = value
    return item


def _num(name: Code, value: float, unit: Code, relationship: str) -> Dataset:
    if not isinstance(value, int | float):
        raise TypeError('Argument "value" must have type "int" or "float".')
    measured = Dataset()
    measured.NumericValue = DS(value, auto_format=True)
    if isinstance(value, float):
        measured.FloatingPointValue = value
    measured.MeasurementUnitsCodeSequence = [_coded(unit)]
    item = _item("NUM", name, relationship)
    item.MeasuredValueSequence = [measured]
    return item


def _container(
    name: Code, relationship: str | None, content: Sequence[Dataset], *, template_id: str | None = None
) -> Dataset:
    item = _item("CONTAINER", name, relationship)
    item.ContinuityOfContent = "CONTINUOUS"
    if template_id is not None:
        template = Dataset()
        template.MappingResource = "DCMR"
        template.TemplateIdentifier = template_id
        item.ContentTemplateSequence = [template]
    if content:
        item.ContentSequence = list(content)
    return item


def _content(
    inp: StenosisReportInput, *, manufacturer: str, device_name: str, device_uid: str, uid_root: str | None
) -> Dataset:
    """The root CONTAINER of TID 1500 with its content tree (as highdicom's ``MeasurementReport``)."""
    items = [
        _code(_LANGUAGE, _ENGLISH_US, _HAS_CONCEPT_MOD),
        # TID 1002 Observer Context: a device (TID 1004).
        _code(_OBSERVER_TYPE, _DEVICE, _HAS_OBS_CONTEXT),
        _uidref(_DEVICE_OBSERVER_UID, device_uid, _HAS_OBS_CONTEXT),
        _text(_DEVICE_OBSERVER_NAME, device_name, _HAS_OBS_CONTEXT),
        _text(_DEVICE_OBSERVER_MANUFACTURER, manufacturer, _HAS_OBS_CONTEXT),
        _text(_DEVICE_OBSERVER_MODEL_NAME, inp.model_name[:64], _HAS_OBS_CONTEXT),
        _text(_DEVICE_OBSERVER_SERIAL_NUMBER, inp.checkpoint_sha256[:16], _HAS_OBS_CONTEXT),
        _code(_PROCEDURE_REPORTED, PROCEDURE_12_LEAD_ECG, _HAS_CONCEPT_MOD),
    ]
    # TID 4019 Algorithm Identification, the same items in every group (highdicom shares them too).
    algorithm = [
        _text(_ALGORITHM_NAME, inp.model_name[:64], _HAS_CONCEPT_MOD),
        _text(_ALGORITHM_VERSION, inp.model_version[:64], _HAS_CONCEPT_MOD),
        _text(_ALGORITHM_MANUFACTURER, manufacturer, _HAS_CONCEPT_MOD),
    ]
    algorithm += [_text(_ALGORITHM_PARAMETERS, p, _HAS_CONCEPT_MOD) for p in inp.algorithm_parameters()]
    groups = [_vessel_group(inp, vessel, algorithm, uid_root=uid_root) for vessel in VESSELS]
    items.append(_container(_IMAGING_MEASUREMENTS, _CONTAINS, groups))
    items.append(_qualitative_evaluations(inp))
    return _container(_IMAGING_MEASUREMENT_REPORT, None, items, template_id="1500")


def _vessel_group(
    inp: StenosisReportInput, vessel: str, algorithm: list[Dataset], *, uid_root: str | None
) -> Dataset:
    """TID 1501 Measurement and Qualitative Evaluation Group of one vessel."""
    tracking_uid = derive_uid("tracking", inp.uid_source_key, inp.model_version, vessel, uid_root=uid_root)
    items = [
        _text(_TRACKING_IDENTIFIER, f"{vessel.upper()} stenosis risk", _HAS_OBS_CONTEXT),
        _uidref(_TRACKING_UID, tracking_uid, _HAS_OBS_CONTEXT),
        _code(_FINDING, FINDING_STENOSIS, _CONTAINS),
        _code(_FINDING_SITE, FINDING_SITES[vessel], _HAS_CONCEPT_MOD),
        *algorithm,
    ]
    if inp.scorable:
        items.append(_num(PROBABILITY, float(inp.probabilities[vessel]), UNIT_ONE, _CONTAINS))
        risk = HIGH_RISK if inp.flags[vessel] else LOW_RISK
    else:
        # No probability was computed: no NUM (TID 300 needs a value); the risk is "Uncertain" and the
        # coded reason is in the document-level Qualitative Evaluations.
        risk = UNCERTAIN_RISK
    items.append(_code(LESION_RISK, risk, _CONTAINS))
    return _container(_MEASUREMENT_GROUP, _CONTAINS, items, template_id="1501")


def _qualitative_evaluations(inp: StenosisReportInput) -> Dataset:
    items = []
    if inp.disclaimer:
        items.append(_text(DISCLAIMER, inp.disclaimer, _CONTAINS))
    items.append(_text(INTENDED_USE, inp.intended_use, _CONTAINS))
    if not inp.scorable:
        assert inp.not_evaluated_reason is not None
        code, text = inp.not_evaluated_reason
        items.append(_code(NOT_EVALUATED, Code(code, PRIVATE_SCHEME, text), _CONTAINS))
    return _container(QUALITATIVE_EVALUATIONS, _CONTAINS, items)


# -- header sequences ---------------------------------------------------------------------------------


def _requested_procedures(inp: StenosisReportInput, evidence: Dataset) -> list[Dataset] | None:
    placer = inp.effective_placer_order_number
    filler = inp.effective_filler_order_number
    accession = inp.effective_accession_number
    if not (placer or filler or accession or inp.requested_procedure_id):
        return None
    item = Dataset()
    item.StudyInstanceUID = evidence.StudyInstanceUID
    item.ReferencedStudySequence = []
    item.AccessionNumber = accession or ""
    if "IssuerOfAccessionNumberSequence" in evidence:
        item.IssuerOfAccessionNumberSequence = evidence.IssuerOfAccessionNumberSequence
    item.RequestedProcedureID = inp.requested_procedure_id or ""
    item.RequestedProcedureDescription = ""
    item.RequestedProcedureCodeSequence = []
    item.PlacerOrderNumberImagingServiceRequest = placer or ""
    item.FillerOrderNumberImagingServiceRequest = filler or ""
    return [item]


def _contributing_equipment(inp: StenosisReportInput, manufacturer: str) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=inp.model_name[:64],
        software_versions=[inp.model_version[:64], f"ecgcad {ecgcad.__version__}"],
        device_serial_number=inp.checkpoint_sha256[:16],
        contribution_datetime=inp.result_time,
        contribution_description=f"Processing Algorithm: {inp.model_name} {inp.model_version}"[:64],
    )


def _finish_common(ds: Dataset, inp: StenosisReportInput, *, device_uid: str) -> None:
    """Fix the times to the result time (a resend is byte-identical) and add the algorithm Device UID."""
    when = inp.result_time
    for prefix in ("Content", "InstanceCreation", "Series"):
        setattr(ds, f"{prefix}Date", when.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", when.strftime("%H%M%S"))
    for item in ds.get("ContributingEquipmentSequence", []):
        code_item = item.PurposeOfReferenceCodeSequence[0]
        if code_item.CodeValue == PROCESSING_EQUIPMENT.value:
            item.DeviceUID = device_uid


def _private_scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "ecgcad local codes"
    item.CodingSchemeResponsibleOrganization = "ecgcad"
    return item
