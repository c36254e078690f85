"""One-page PDF report of a stenosis result (matplotlib, vector) and its Encapsulated PDF wrapper.

The page (A4 landscape) shows, top to bottom: title and identifiers, the disclaimer of a demonstration
model, the 12-lead tracing drawn as vectors on ECG paper (1 mm / 5 mm grid, **25 mm/s, 10 mm/mV**, 3 × 4
layout of 2.5-s segments plus a 10-s lead II rhythm strip) with the explanation windows shaded, the median
beats, a bar chart of the four probabilities against their thresholds, the flagged vessels or the
not-evaluated reason, the model identity and the intended use.

:func:`build_encapsulated_pdf` wraps the bytes as Encapsulated PDF Storage (Modality ``DOC``,
ConversionType ``WSD``, BurnedInAnnotation ``YES``) in the same study as the ECG, with deterministic UIDs
(:func:`ecgcad.integration.reports.content.result_uids` with kind ``"pdf"``).
"""

from __future__ import annotations

import io
import logging
import warnings

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - no display in a service

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

import ecgcad
from ecgcad.errors import BuildError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.integration.reports.content import VESSELS, StenosisReportInput, device_uid_for, result_uids
from ecgcad.integration.reports.sr import DEFAULT_MANUFACTURER, PDF_SERIES_NUMBER, source_evidence
from ecgcad.logsetup import uid_hash

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"

#: Paper speed and gain of the tracing.
MM_PER_S = 25.0
MM_PER_MV = 10.0

_PAGE_IN = (11.69, 8.27)  # A4 landscape
_MM_PER_IN = 25.4
_LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))


def render_report_pdf(inp: StenosisReportInput) -> bytes:
    """Render the one-page PDF report of ``inp``.

    Parameters
    ----------
    inp:
        The validated report input. Without ``signal`` the tracing area says "no tracing available".

    Returns
    -------
    bytes
        A one-page PDF (vector graphics; fonts embedded by matplotlib). Deterministic for one input
        (creation date fixed to ``result_time``).

    Raises
    ------
    BuildError
        matplotlib failed to render.
    """
    try:
        fig = Figure(figsize=_PAGE_IN)
        _draw_header(fig, inp)
        _draw_tracing(fig, inp)
        _draw_median_beats(fig, inp)
        _draw_bars(fig, inp)
        _draw_footer(fig, inp)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # missing glyph warnings from fonts
            fig.savefig(
                buf,
                format="pdf",
                metadata={
                    "Title": "AI ECG coronary stenosis risk",
                    "Creator": f"ecgcad {ecgcad.__version__}",
                    "CreationDate": inp.result_time,
                },
            )
    except (ValueError, RuntimeError, OSError) as exc:
        raise BuildError(f"PDF could not be rendered: {exc}") from exc
    data = buf.getvalue()
    logger.info("rendered report PDF result=%d bytes=%d", inp.result_id, len(data))
    return data


def build_encapsulated_pdf(
    inp: StenosisReportInput,
    pdf_bytes: bytes,
    *,
    manufacturer: str = DEFAULT_MANUFACTURER,
    uid_root: str | None = None,
) -> Dataset:
    """Wrap ``pdf_bytes`` as an Encapsulated PDF Storage object in the study of the ECG.

    Parameters
    ----------
    inp:
        The validated report input (patient and study attributes, UIDs).
    pdf_bytes:
        The PDF, normally from :func:`render_report_pdf`.
    manufacturer:
        Manufacturer of the object (General Equipment / SC Equipment).
    uid_root:
        Optional registered UID root (see :func:`ecgcad.integration.reports.content.derive_uid`).

    Returns
    -------
    pydicom.dataset.Dataset
        The object with file meta information, ready for ``save_as(..., enforce_file_format=True)``.

    Raises
    ------
    BuildError
        ``pdf_bytes`` is not a PDF.
    """
    if not isinstance(pdf_bytes, bytes | bytearray) or not pdf_bytes.startswith(b"%PDF-"):
        raise BuildError("pdf_bytes is not a PDF document")
    source, _ = source_evidence(inp, uid_root=uid_root)
    series_uid, sop_uid = result_uids(inp, "pdf", uid_root=uid_root)
    ds = Dataset()
    _copy_patient_and_study(ds, source)
    _set_series_and_equipment(ds, inp, series_uid=series_uid, manufacturer=manufacturer)
    _set_encapsulated_document(ds, inp, pdf_bytes, source=source)
    _set_sop_common(ds, inp, sop_uid=sop_uid, manufacturer=manufacturer, uid_root=uid_root)
    ds.file_meta = _file_meta(ds)
    logger.info("built encapsulated PDF sop=%s source=%s", uid_hash(sop_uid), uid_hash(inp.uid_source_key))
    return ds


# -- the Encapsulated PDF modules -----------------------------------------------------------------------

#: Patient and General Study module attributes copied unchanged from the source.
_PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
)
#: Type 2 attributes of those modules: present (empty) when the source has none.
_PATIENT_STUDY_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _copy_patient_and_study(ds: Dataset, source: Dataset) -> None:
    """Patient and General Study modules: copied unchanged from the source (or identifiers stand-in).

    Parameters
    ----------
    ds:
        The object being built; changed in place.
    source:
        The source evidence (:func:`~ecgcad.integration.reports.sr.source_evidence`).
    """
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            ds[keyword] = source[keyword]
    for keyword in _PATIENT_STUDY_TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")


def _set_series_and_equipment(
    ds: Dataset, inp: StenosisReportInput, *, series_uid: str, manufacturer: str
) -> None:
    """Encapsulated Document Series, General Equipment and SC Equipment modules.

    Parameters
    ----------
    ds:
        The object being built; changed in place.
    inp:
        The report input (the series date and time are the result time).
    series_uid:
        Series Instance UID (deterministic, :func:`~ecgcad.integration.reports.content.result_uids`).
    manufacturer:
        Manufacturer.
    """
    when = inp.result_time
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "DOC"
    ds.SeriesNumber = PDF_SERIES_NUMBER
    ds.SeriesDescription = "AI ECG coronary stenosis risk (PDF)"
    ds.SeriesDate = when.strftime("%Y%m%d")
    ds.SeriesTime = when.strftime("%H%M%S")
    ds.Manufacturer = manufacturer
    ds.ConversionType = "WSD"


def _set_encapsulated_document(
    ds: Dataset, inp: StenosisReportInput, pdf_bytes: bytes | bytearray, *, source: Dataset
) -> None:
    """Encapsulated Document module: the PDF, its title and times, and the source ECG it reports on.

    Parameters
    ----------
    ds:
        The object being built; changed in place.
    inp:
        The report input: Instance Number (the result version), content and acquisition times (the
        result time), and whether there is a real source to reference.
    pdf_bytes:
        The PDF, padded here to even length (PS3.3 C.24.2); Encapsulated Document Length is its own.
    source:
        The source evidence; referenced in Source Instance Sequence only when it is the real source
        ECG (the identifiers stand-in is no object to reference).
    """
    when = inp.result_time
    ds.InstanceNumber = inp.result_version
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "AI ECG coronary stenosis risk"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = bytes(pdf_bytes)
    if len(data) % 2:
        data += b"\x00"  # PS3.3 C.24.2: padded to even length
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    if inp.source_dataset_bytes is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceInstanceSequence = [ref]


def _set_sop_common(
    ds: Dataset, inp: StenosisReportInput, *, sop_uid: str, manufacturer: str, uid_root: str | None
) -> None:
    """SOP Common module: SOP Class and Instance UIDs, character set, creation time, our equipment.

    Parameters
    ----------
    ds:
        The object being built; changed in place.
    inp:
        The report input (the creation date and time are the result time).
    sop_uid:
        SOP Instance UID (deterministic, :func:`~ecgcad.integration.reports.content.result_uids`).
    manufacturer:
        Manufacturer of the contributing algorithm.
    uid_root:
        Optional registered UID root (the algorithm's Device UID).
    """
    when = inp.result_time
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.ContributingEquipmentSequence = [_processing_equipment(inp, manufacturer, uid_root=uid_root)]


def _processing_equipment(inp: StenosisReportInput, manufacturer: str, *, uid_root: str | None) -> Dataset:
    """The Contributing Equipment item of our algorithm (purpose ``(109102, DCM, "Processing Equipment")``).

    Parameters
    ----------
    inp:
        The report input: model name and version, checkpoint (serial number).
    manufacturer:
        Manufacturer of the algorithm.
    uid_root:
        Optional registered UID root (the checkpoint-dependent Device UID).

    Returns
    -------
    pydicom.dataset.Dataset
        The item, as the SR's algorithm equipment without a contribution time.
    """
    equipment = Dataset()
    equipment.Manufacturer = manufacturer
    equipment.ManufacturerModelName = inp.model_name[:64]
    equipment.SoftwareVersions = [inp.model_version[:64], f"ecgcad {ecgcad.__version__}"]
    equipment.DeviceSerialNumber = inp.checkpoint_sha256[:16]
    purpose = Dataset()
    purpose.CodeValue = "109102"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Processing Equipment"
    equipment.PurposeOfReferenceCodeSequence = [purpose]
    equipment.ContributionDescription = f"Processing Algorithm: {inp.model_name} {inp.model_version}"[:64]
    equipment.DeviceUID = device_uid_for(inp, uid_root=uid_root)
    return equipment


def _file_meta(ds: Dataset) -> FileMetaDataset:
    """File meta information of ``ds`` (Explicit VR Little Endian, pydicom's implementation UID)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


# -- drawing --------------------------------------------------------------------------------------------


def _draw_header(fig: Figure, inp: StenosisReportInput) -> None:
    ident = inp.identifiers
    fig.text(0.02, 0.965, "AI ECG coronary stenosis risk", fontsize=15, weight="bold", va="top")
    when = (
        ident.acquisition_datetime.strftime("%Y-%m-%d %H:%M:%S") if ident.acquisition_datetime else "unknown"
    )
    line = (
        f"Patient: {ident.patient_name or '-'}   ID: {ident.patient_id or '-'}"
        f"{' (' + ident.issuer_of_patient_id + ')' if ident.issuer_of_patient_id else ''}   "
        f"Born: {ident.patient_birth_date or '-'}   Sex: {ident.patient_sex or '-'}   "
        f"Accession: {inp.effective_accession_number or '-'}   Acquired: {when}"
    )
    fig.text(0.02, 0.925, line, fontsize=8, va="top")
    status = "CORRECTED" if inp.result_version > 1 else "PRELIMINARY"
    fig.text(
        0.98,
        0.965,
        f"Result {inp.result_id} v{inp.result_version} · {status} · unverified",
        fontsize=8,
        ha="right",
        va="top",
    )
    if inp.disclaimer:
        fig.text(
            0.60,
            0.963,
            inp.disclaimer,
            fontsize=11,
            weight="bold",
            color="#b00000",
            ha="center",
            va="top",
            bbox={"facecolor": "#fff0f0", "edgecolor": "#b00000"},
        )


def _draw_tracing(fig: Figure, inp: StenosisReportInput) -> None:
    # Width of the tracing: 10 s at 25 mm/s = 250 mm; axes sized in real millimetres.
    width_mm, height_mm = 250.0, 125.0
    left_in, bottom_in = 0.35, 2.55
    ax = fig.add_axes(
        (
            left_in / _PAGE_IN[0],
            bottom_in / _PAGE_IN[1],
            width_mm / _MM_PER_IN / _PAGE_IN[0],
            height_mm / _MM_PER_IN / _PAGE_IN[1],
        )
    )
    ax.set_xlim(0, width_mm)
    ax.set_ylim(0, height_mm)
    _ecg_grid(ax, width_mm, height_mm)
    ax.set_xticks([])
    ax.set_yticks([])
    if inp.signal is None:
        ax.text(width_mm / 2, height_mm / 2, "no tracing available", ha="center", va="center", fontsize=12)
        return
    signal = np.nan_to_num(np.asarray(inp.signal, dtype=np.float64))
    fs = inp.sampling_rate
    seg = int(round(2.5 * fs))
    highlights: dict[str, list[tuple[float, float, str]]] = {}
    for vessel in VESSELS:
        for lead, start, end in inp.explanation_windows_s(vessel):
            highlights.setdefault(lead, []).append((start, end, vessel.upper()))
    row_height = height_mm / 4
    for row, leads in enumerate(_LAYOUT):
        baseline = height_mm - row_height * (row + 0.5)
        for col, lead in enumerate(leads):
            idx = LEADS.index(lead)
            start = col * seg
            chunk = signal[idx, start : start + seg]
            x = (start + np.arange(chunk.size)) / fs * MM_PER_S
            _shade(ax, highlights.get(lead, []), start / fs, (start + seg) / fs, baseline, row_height)
            ax.plot(x, baseline + chunk * MM_PER_MV, color="black", linewidth=0.5)
            ax.text(x[0] + 1 if x.size else col * 62.5 + 1, baseline + 7, lead, fontsize=7)
            if col:
                ax.plot([col * 62.5] * 2, [baseline - 3, baseline + 3], color="black", linewidth=0.6)
    # Rhythm strip: lead II, whole record.
    baseline = row_height * 0.5
    lead_ii = signal[LEADS.index("II")]
    x = np.arange(lead_ii.size) / fs * MM_PER_S
    keep = x <= width_mm
    _shade(ax, highlights.get("II", []), 0.0, width_mm / MM_PER_S, baseline, row_height)
    ax.plot(x[keep], baseline + lead_ii[keep] * MM_PER_MV, color="black", linewidth=0.5)
    ax.text(1, baseline + 7, "II", fontsize=7)
    ax.text(
        width_mm, -4, "25 mm/s · 10 mm/mV · shaded: explanation windows", fontsize=6, ha="right", va="top"
    )


def _shade(
    ax: Axes,
    windows: list[tuple[float, float, str]],
    seg_start_s: float,
    seg_end_s: float,
    baseline: float,
    row_height: float,
) -> None:
    for start, end, vessel in windows:
        lo, hi = max(start, seg_start_s), min(end, seg_end_s)
        if hi <= lo:
            continue
        ax.axvspan(
            lo * MM_PER_S,
            hi * MM_PER_S,
            ymin=(baseline - row_height / 2) / ax.get_ylim()[1],
            ymax=(baseline + row_height / 2) / ax.get_ylim()[1],
            color="#ffb000",
            alpha=0.35,
            linewidth=0,
        )
        ax.text(lo * MM_PER_S + 0.5, baseline - row_height / 2 + 1, vessel, fontsize=5, color="#8a5a00")


def _ecg_grid(ax: Axes, width_mm: float, height_mm: float) -> None:
    minor_x = np.arange(0, width_mm + 0.01, 1.0)
    minor_y = np.arange(0, height_mm + 0.01, 1.0)
    ax.vlines(minor_x, 0, height_mm, color="#f6c6c6", linewidth=0.2)
    ax.hlines(minor_y, 0, width_mm, color="#f6c6c6", linewidth=0.2)
    ax.vlines(minor_x[::5], 0, height_mm, color="#e58a8a", linewidth=0.5)
    ax.hlines(minor_y[::5], 0, width_mm, color="#e58a8a", linewidth=0.5)
    for spine in ax.spines.values():
        spine.set_color("#e58a8a")


def _draw_median_beats(fig: Figure, inp: StenosisReportInput) -> None:
    ax = fig.add_axes((0.03, 0.06, 0.30, 0.22))
    ax.set_title("Median beats", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if inp.median_beats is None:
        ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        return
    beats = np.nan_to_num(np.asarray(inp.median_beats, dtype=np.float64))
    n = beats.shape[1]
    width = n / inp.sampling_rate * MM_PER_S
    for row, leads in enumerate(_LAYOUT):
        for col, lead in enumerate(leads):
            x0 = col * (width + 4)
            y0 = (2 - row) * 30 + 15
            trace = beats[LEADS.index(lead)]
            ax.plot(
                x0 + np.arange(n) / inp.sampling_rate * MM_PER_S, y0 + trace * MM_PER_MV, "k", linewidth=0.6
            )
            ax.text(x0, y0 + 9, lead, fontsize=6)
    ax.set_xlim(-2, 4 * (width + 4))
    ax.set_ylim(0, 90)


def _draw_bars(fig: Figure, inp: StenosisReportInput) -> None:
    ax = fig.add_axes((0.40, 0.07, 0.25, 0.20))
    names = [v.upper() for v in VESSELS]
    x = np.arange(len(VESSELS))
    ax.set_title("Probability of ≥70 % stenosis vs threshold", fontsize=8)
    ax.set_xticks(x, names, fontsize=7)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_ylim(0, 1)
    if inp.scorable:
        values = [float(inp.probabilities[v]) for v in VESSELS]
        colors = ["#c00000" if inp.flags[v] else "#4a78b5" for v in VESSELS]
        ax.bar(x, values, color=colors, width=0.6)
        for xi, value in zip(x, values, strict=True):
            ax.text(float(xi), min(value + 0.03, 0.93), f"{value:.3f}", ha="center", fontsize=6)
    else:
        ax.text(1.5, 0.5, "NOT EVALUATED", ha="center", va="center", fontsize=10, color="#555555")
    for xi, vessel in zip(x, VESSELS, strict=True):
        t = float(inp.thresholds[vessel])
        ax.plot([xi - 0.4, xi + 0.4], [t, t], color="black", linestyle="--", linewidth=0.8)
    ax.text(3.45, 0.96, "-- threshold", fontsize=6, ha="right", va="top")


def _draw_footer(fig: Figure, inp: StenosisReportInput) -> None:
    x0 = 0.68
    if inp.scorable:
        flagged = inp.flagged_vessels
        verdict = (
            "HIGH RISK: " + ", ".join(v.upper() for v in flagged)
            if flagged
            else "No vessel above its threshold"
        )
        fig.text(
            x0, 0.27, verdict, fontsize=10, weight="bold", color="#c00000" if flagged else "black", va="top"
        )
    else:
        assert inp.not_evaluated_reason is not None
        code, text = inp.not_evaluated_reason
        fig.text(x0, 0.27, f"NOT EVALUATED: {text} ({code})", fontsize=9, weight="bold", va="top", wrap=True)
    lines = [
        f"Model: {inp.model_name} {inp.model_version}",
        f"Checkpoint SHA-256: {inp.checkpoint_sha256[:32]}…",
        "Thresholds: " + ", ".join(f"{v.upper()} {float(inp.thresholds[v]):g}" for v in VESSELS),
        f"Window policy: {inp.window_policy}   Result time: {inp.result_time:%Y-%m-%d %H:%M:%S}",
        "Preliminary, unverified machine result.",
    ]
    fig.text(x0, 0.22, "\n".join(lines), fontsize=6.5, va="top", linespacing=1.4)
    fig.text(x0, 0.10, "Intended use: " + inp.intended_use, fontsize=6, va="top", wrap=True)
    if inp.disclaimer:
        fig.text(0.5, 0.015, inp.disclaimer, fontsize=9, weight="bold", color="#b00000", ha="center")
