"""From stored rows to a :class:`~ecgcad.integration.reports.content.StenosisReportInput` and its objects."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecgcad.db.models import EcgRecord, Order, Result, SourceObject
from ecgcad.db.objects import source_bytes
from ecgcad.errors import DecodeError, EcgcadError, StorageError
from ecgcad.integration.formats.ecg import EcgIdentifiers
from ecgcad.integration.reports.content import PredecessorReference, StenosisReportInput, result_uids
from ecgcad.vessels import VESSELS

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

DICOM_SOURCE_KINDS = ("dicom", "file", "pacs")

#: ``Session.info`` key: explanations computed in the session and not yet cached, by result id.
_NEW_EXPLANATIONS = "ecgcad_new_explanations"

#: Gate / decode reason codes → the coded reason of reports (DICOM CodeValue is SH: at most 16 characters).
REPORT_REASON_CODES = {
    "decode_failed": "DECODE_FAILED",
    "processing_error": "PROCESSING_ERROR",
    "implausible_sampling_rate": "BAD_SAMPLE_RATE",
    "bad_sensitivity": "BAD_SENSITIVITY",
    "non_finite_samples": "NON_FINITE",
    "too_few_leads": "TOO_FEW_LEADS",
    "too_short": "TOO_SHORT",
    "low_sampling_rate": "LOW_SAMPLE_RATE",
    "flat_lead": "FLAT_LEAD",
    "saturation": "SATURATION",
    "noise": "NOISE",
    "baseline_wander": "BASELINE_WANDER",
    "pacemaker": "PACEMAKER",
    "underage": "UNDERAGE",
    "not_evaluated": "NOT_EVALUATED",
}


#: Report texts of the reasons the pipeline gives itself (the gate's are in
#: :data:`ecgcad.integration.formats.gate.REASON_TEXTS`); each fits :data:`~ecgcad.integration.formats.gate.REPORT_TEXT_MAX`.
PIPELINE_REASON_TEXTS = {
    "decode_failed": "the ECG could not be decoded",
    "processing_error": "processing error",
    "not_evaluated": "not evaluated",
}


def report_reason_code(code: str | None) -> str:
    """The report code of a stored reason code: 1–16 characters ``[A-Z0-9_-]``, whatever ``code`` is."""
    code = code or "not_evaluated"
    known = REPORT_REASON_CODES.get(code)
    if known is not None:
        return known
    return re.sub(r"[^A-Z0-9_-]", "_", code.upper())[:16] or "NOT_EVALUATED"


def report_reason(code: str | None, text: str | None) -> tuple[str, str]:
    """The ``(code, text)`` of a not-evaluated report, made to fit its fields whatever was stored.

    A known reason (every gate reason and the pipeline's own) gets its fixed short text; the stored,
    specific sentence (e.g. the list of flat leads, a decoder's message) stays with the result for the
    API and the dashboard. An unknown reason's text is cut to :data:`~ecgcad.integration.formats.gate.
    REPORT_TEXT_MAX` characters, with control characters and backslashes (not allowed in a DICOM LO)
    replaced by spaces.

    Parameters
    ----------
    code:
        The stored reason code (``Result.reason_code``); ``None`` = ``"not_evaluated"``.
    text:
        The stored reason text (``Result.reason_text``).

    Returns
    -------
    tuple
        Report code (1–16 characters ``[A-Z0-9_-]``) and text (1–64 characters).
    """
    from ecgcad.integration.formats.gate import REASON_TEXTS, REPORT_TEXT_MAX

    key = code or "not_evaluated"
    fixed = REASON_TEXTS.get(key) or PIPELINE_REASON_TEXTS.get(key)
    if fixed is not None:
        return report_reason_code(key), fixed
    cleaned = " ".join(re.sub(r"[\x00-\x1f\x7f\\]", " ", text or "").split())
    if len(cleaned) > REPORT_TEXT_MAX:
        cleaned = cleaned[: REPORT_TEXT_MAX - 3].rstrip() + "..."
    return report_reason_code(key), cleaned or PIPELINE_REASON_TEXTS["not_evaluated"]


def _identifiers(ecg: EcgRecord) -> EcgIdentifiers:
    if ecg.identifiers:
        return EcgIdentifiers.from_dict(dict(ecg.identifiers))
    return EcgIdentifiers(
        patient_id=ecg.patient_id,
        issuer_of_patient_id=ecg.issuer_of_patient_id,
        patient_name=ecg.patient_name,
        patient_birth_date=ecg.patient_birth_date,
        patient_sex=ecg.patient_sex,
        accession_number=ecg.accession_number,
        study_instance_uid=ecg.study_instance_uid,
        sop_instance_uid=ecg.sop_instance_uid,
        sop_class_uid=ecg.sop_class_uid,
    )


def _canonical_signal(ctx: AppContext, raw: bytes) -> np.ndarray | None:
    from ecgcad.integration.formats.prepare import prepare_bytes

    try:
        prepared = prepare_bytes(raw, ctx.settings.gate, gate=False)
    except DecodeError:
        return None
    if prepared.window is None:
        return None
    window = np.asarray(prepared.window.signal, dtype=np.float32)
    # Corrupt samples (refused by the gate) give no tracing: the report says "no tracing available".
    # NaN rows are leads the ECG does not have (drawn as gaps); infinity is corruption.
    return None if bool(np.isinf(window).any()) else window


def _explanations(
    ctx: AppContext, session: Session, result: Result, signal: np.ndarray
) -> dict[str, list[dict[str, Any]]] | None:
    """Top windows per vessel; computed once with the result's model and cached on the result row."""
    if not result.scorable:
        return None
    expl = result.explanations or session.info.get(_NEW_EXPLANATIONS, {}).get(result.id)
    if not expl:
        try:
            predictor = ctx.get_predictor()
            if predictor.model_version != result.model_version:
                return None
            from ecgcad.model.explain import explain

            expl = explain(predictor, np.nan_to_num(signal), steps=ctx.settings.reports.explanation_steps)
        except EcgcadError as exc:
            logger.warning("explanations unavailable for result %s: %s", result.id, exc)
            return None
        # Not written here: the caller's session may be a write session (a nested one is refused, and
        # would hold every other writer) or a read transaction. ``report_read_session`` caches it after.
        session.info.setdefault(_NEW_EXPLANATIONS, {})[result.id] = expl
    return {
        v: [{k: w[k] for k in ("lead", "start", "end")} for w in expl["vessels"][v]["top_windows"]]
        for v in VESSELS
    }


@contextlib.contextmanager
def report_read_session(ctx: AppContext) -> Iterator[Session]:
    """A session to build reports in: read-only, so it holds no write lock while a report is built.

    Explanations that :func:`build_report_input` computes in it are cached on their result rows after
    the read transaction has ended, in one short write outside any other transaction. Failing to cache
    them costs only their recomputation next time: it is logged, not raised.

    Raises
    ------
    NestedWriteError
        Opened inside a write session of the same thread, and explanations were computed in it (their
        cache write would nest).
    """
    with ctx.db.read_session() as session:
        info = session.info
        yield session
    new: dict[int, Any] = info.pop(_NEW_EXPLANATIONS, {})
    if not new:
        return
    from sqlalchemy import update

    try:
        with ctx.db.session() as write:
            for result_id, expl in new.items():
                write.execute(update(Result).where(Result.id == result_id).values(explanations=expl))
    except StorageError as exc:
        logger.warning("explanations of results %s not cached: %s", sorted(new), exc)


def build_report_input(
    ctx: AppContext, session: Session, result: Result, *, with_signal: bool = False
) -> StenosisReportInput:
    """The report input of ``result`` (the tracing, explanations and median beats when ``with_signal``).

    It writes nothing: explanations computed here are cached when ``session`` is a
    :func:`report_read_session`.
    """
    ecg = session.get(EcgRecord, result.ecg_id)
    assert ecg is not None
    source = session.get(SourceObject, ecg.source_object_id)
    raw = source_bytes(ctx.store, source) if source is not None and source.deleted_at is None else None
    source_dataset = (
        raw
        if (
            raw is not None
            and source is not None
            and source.kind in DICOM_SOURCE_KINDS
            and ecg.format == "dicom"
        )
        else None
    )
    order = session.get(Order, ecg.order_id) if ecg.order_id else None
    signal = beats = explanations = None
    if with_signal and raw is not None:
        signal = _canonical_signal(ctx, raw)
        if signal is not None:
            explanations = _explanations(ctx, session, result, signal)
            try:
                from ecgcad.model.explain import median_beats

                beats = median_beats(np.nan_to_num(signal), 500.0)
            except Exception:  # noqa: BLE001 - a missing median beat must not stop the report
                logger.warning("median beats unavailable for ecg %s", ecg.id)
                beats = None
    predecessor = None
    if result.result_version > 1:
        prev = session.execute(
            select(Result).where(
                Result.ecg_id == result.ecg_id,
                Result.model_version_id == result.model_version_id,
                Result.result_version == result.result_version - 1,
            )
        ).scalar_one_or_none()
        if prev is not None:
            prev_inp = _input(ctx, ecg, prev, source_dataset, order, None, None, None, None)
            series, sop = result_uids(prev_inp, "sr")
            predecessor = PredecessorReference(
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                sop_instance_uid=sop,
                series_instance_uid=series,
                study_instance_uid=ecg.study_instance_uid,
            )
    return _input(ctx, ecg, result, source_dataset, order, signal, beats, explanations, predecessor)


def _input(
    ctx: AppContext,
    ecg: EcgRecord,
    result: Result,
    source_dataset: bytes | None,
    order: Order | None,
    signal: np.ndarray | None,
    beats: np.ndarray | None,
    explanations: Mapping[str, list[dict[str, Any]]] | None,
    predecessor: PredecessorReference | None,
) -> StenosisReportInput:
    probabilities = {v: float(p) for v, p in result.probabilities().items() if p is not None}
    return StenosisReportInput(
        identifiers=_identifiers(ecg),
        result_id=result.id,
        result_version=result.result_version,
        scorable=result.scorable,
        not_evaluated_reason=None
        if result.scorable
        else report_reason(result.reason_code, result.reason_text),
        probabilities=probabilities if result.scorable else {},
        thresholds=dict(result.thresholds or ctx.settings.thresholds.as_dict()),
        flags=result.flags() if result.scorable else {},
        model_name=result.model_name,
        model_version=result.model_version,
        checkpoint_sha256=result.checkpoint_sha256,
        preprocessing=dict(result.preprocessing or {}),
        window_policy=(result.window or {}).get("policy", ctx.settings.gate.window_policy),
        demonstration=result.demonstration,
        intended_use=ctx.settings.intended_use,
        result_time=result.created_at,
        source_dataset_bytes=source_dataset,
        signal=signal,
        explanations=explanations,
        median_beats=beats,
        predecessor=predecessor,
        placer_order_number=order.placer_order_number if order else None,
        filler_order_number=order.filler_order_number if order else None,
        accession_number=(order.accession_number if order else None) or ecg.accession_number,
        source_key=None if ecg.sop_instance_uid else f"ecg-source-{ecg.source_object_id}",
    )


def report_pdf_for_result(ctx: AppContext, session: Session, result: Result) -> bytes:
    """The one-page PDF report of ``result``."""
    from ecgcad.integration.reports.pdf import render_report_pdf

    return render_report_pdf(build_report_input(ctx, session, result, with_signal=True))
