"""The stenosis SR builder as it was before the fast builder (highdicom constructs everything).

Kept only as the reference of ``test_sr_equivalence.py``: this is ``ecgcad.integration.reports.sr`` as of
commit b9e3c43 (the highdicom-based implementation), with its constants and functions unchanged and only
this docstring new, so that the fast builder can be compared with it element by element for any input.
It depends on nothing in the current ``ecgcad.integration.reports.sr``.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Literal

import highdicom as hd
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

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
        Institution Name of the SR; ``None`` keeps the source's (when any).
    sop_class:
        ``"comprehensive"`` (1.2.840.10008.5.1.4.1.1.88.33) or ``"comprehensive3d"`` (…88.34).
    uid_root:
        Optional registered UID root; ``None`` → ``2.25.<uuid5>`` UIDs (see
        :func:`ecgcad.integration.reports.content.derive_uid`).

    Returns
    -------
    pydicom.dataset.Dataset
        The SR (a :class:`highdicom.sr.ComprehensiveSR` / ``Comprehensive3DSR``), ready for
        ``dcmwrite(..., enforce_file_format=True)`` or C-STORE.

    Raises
    ------
    BuildError
        The input cannot be turned into a valid SR (bad predecessor, unknown SOP class, highdicom
        refused a value).
    """
    if sop_class not in ("comprehensive", "comprehensive3d"):
        raise BuildError(f"unknown SR sop_class {sop_class!r}")
    if inp.result_version > 1 and inp.predecessor is None:
        raise BuildError("a corrected result (result_version > 1) needs the predecessor SR")
    evidence, from_source = source_evidence(inp, uid_root=uid_root)
    series_uid, sop_uid = result_uids(inp, "sr", uid_root=uid_root)
    try:
        content = _content(inp, manufacturer=manufacturer, device_name=device_name, uid_root=uid_root)
        cls = hd.sr.ComprehensiveSR if sop_class == "comprehensive" else hd.sr.Comprehensive3DSR
        with warnings.catch_warnings():
            # highdicom warns about things we set on purpose (e.g. the non-CID 100 procedure code).
            warnings.simplefilter("ignore", UserWarning)
            sr = cls(
                evidence=[evidence],
                content=content,
                series_instance_uid=series_uid,
                series_number=SR_SERIES_NUMBER,
                sop_instance_uid=sop_uid,
                instance_number=inp.result_version,
                manufacturer=manufacturer,
                is_complete=True,
                is_final=False,
                is_verified=False,
                institution_name=institution_name,
                requested_procedures=_requested_procedures(inp, evidence),
                previous_versions=_previous_versions(inp, series_uid, evidence),
                record_evidence=from_source,
                contributing_equipment=[_contributing_equipment(inp, manufacturer)],
                specific_character_set="ISO_IR 192",
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise BuildError(f"SR could not be built: {exc}") from exc
    if not from_source:
        # The identifiers stand-in is not an object we can reference: no evidence sequences.
        for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if keyword in sr:
                delattr(sr, keyword)
    _finish_common(sr, inp, device_uid=device_uid_for(inp, uid_root=uid_root))
    sr.SeriesDescription = "AI ECG coronary stenosis risk (SR)"
    sr.CodingSchemeIdentificationSequence = [_private_scheme_item()]
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

    With ``source_dataset_bytes`` this is the source ECG (read without its waveform). Otherwise a
    stand-in is built from the identifiers (Patient and General Study modules; a Study Instance UID
    derived from the source key when the identifiers have none).
    """
    if inp.source_dataset_bytes is not None:
        source: Dataset = pydicom.dcmread(io.BytesIO(inp.source_dataset_bytes))
        # The waveform is not needed to reference the ECG, only its identifying attributes.
        for keyword in ("WaveformSequence", "WaveformAnnotationSequence"):
            if keyword in source:
                delattr(source, keyword)
        return source, True
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
    # Placeholders highdicom needs to walk the evidence; removed from the SR afterwards.
    ds.SOPClassUID = ident.sop_class_uid or "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.SOPInstanceUID = ident.sop_instance_uid or derive_uid("ecg", inp.uid_source_key, uid_root=uid_root)
    ds.SeriesInstanceUID = ident.series_instance_uid or derive_uid(
        "ecg-series", inp.uid_source_key, uid_root=uid_root
    )
    ds.Modality = "ECG"
    return ds, False


def _content(
    inp: StenosisReportInput, *, manufacturer: str, device_name: str, uid_root: str | None
) -> MeasurementReport:
    observer = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid_for(inp, uid_root=uid_root),
            name=device_name,
            manufacturer_name=manufacturer,
            model_name=inp.model_name[:64],
            serial_number=inp.checkpoint_sha256[:16],
        ),
    )
    algorithm = AlgorithmIdentification(
        name=inp.model_name[:64],
        version=inp.model_version[:64],
        parameters=inp.algorithm_parameters(),
        manufacturer=manufacturer,
    )
    groups = [_vessel_group(inp, vessel, algorithm, uid_root=uid_root) for vessel in VESSELS]
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE_12_LEAD_ECG,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_qualitative_evaluations(inp))
    return report


def _vessel_group(
    inp: StenosisReportInput, vessel: str, algorithm: AlgorithmIdentification, *, uid_root: str | None
) -> MeasurementsAndQualitativeEvaluations:
    tracking = TrackingIdentifier(
        uid=derive_uid("tracking", inp.uid_source_key, inp.model_version, vessel, uid_root=uid_root),
        identifier=f"{vessel.upper()} stenosis risk",
    )
    measurements = None
    if inp.scorable:
        measurements = [Measurement(name=PROBABILITY, value=float(inp.probabilities[vessel]), unit=UNIT_ONE)]
        risk = HIGH_RISK if inp.flags[vessel] else LOW_RISK
    else:
        # No probability was computed: no NUM (TID 300 needs a value); the risk is "Uncertain" and the
        # coded reason is in the document-level Qualitative Evaluations.
        risk = UNCERTAIN_RISK
    evaluations = [QualitativeEvaluation(name=LESION_RISK, value=risk)]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=FINDING_STENOSIS,
        algorithm_id=algorithm,
        finding_sites=[FindingSite(anatomic_location=FINDING_SITES[vessel])],
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _qualitative_evaluations(inp: StenosisReportInput) -> ContainerContentItem:
    container = ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    items = ContentSequence()
    if inp.disclaimer:
        items.append(TextContentItem(DISCLAIMER, inp.disclaimer, RelationshipTypeValues.CONTAINS))
    items.append(TextContentItem(INTENDED_USE, inp.intended_use, RelationshipTypeValues.CONTAINS))
    if not inp.scorable:
        assert inp.not_evaluated_reason is not None
        code, text = inp.not_evaluated_reason
        items.append(
            CodeContentItem(
                NOT_EVALUATED,
                CodedConcept(code, PRIVATE_SCHEME, text),
                RelationshipTypeValues.CONTAINS,
            )
        )
    container.ContentSequence = items
    return container


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


def _previous_versions(inp: StenosisReportInput, series_uid: str, evidence: Dataset) -> list[Dataset] | None:
    pre = inp.predecessor
    if pre is None:
        return None
    ds = Dataset()
    ds.SOPClassUID = pre.sop_class_uid
    ds.SOPInstanceUID = pre.sop_instance_uid
    ds.SeriesInstanceUID = pre.series_instance_uid or series_uid
    ds.StudyInstanceUID = pre.study_instance_uid or evidence.StudyInstanceUID
    return [ds]


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
    if "VerifyingObserverSequence" in ds:  # never set (UNVERIFIED) – defensive
        delattr(ds, "VerifyingObserverSequence")


def _private_scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "ecgcad local codes"
    item.CodingSchemeResponsibleOrganization = "ecgcad"
    return item
