"""Scoring jobs: decode → gate → 10-s canonical window → one batched forward pass → Result rows.

``score`` jobs (payload ``{"ecg_id"}``) arrive in micro-batches. Each ECG is decoded again from its stored
raw object (payloads carry ids, never waveforms), checked by the quality and intended-use gate, and the
scorable ones go through the predictor together. Each ECG's Result, its Delivery rows and their ``deliver``
jobs are committed in one transaction per ECG. A re-run (after a crash between commit and ``done``) finds
the Result already there and only makes sure the deliveries exist: one result per ECG and model version.
A ``score`` job that goes to the dead letter (:func:`settle_dead_score_job`) makes its ECG "not evaluated:
processing error", with its reports, so that no acknowledged ECG waits in ``queued`` forever.

This module owns results: their versions (``rescore`` jobs: :func:`make_rescore_handler`,
:func:`next_result_version`), the thresholds they record and the deliveries they create; delivering them is
:mod:`ecgcad.pipeline.delivery`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ecgcad.db import audit
from ecgcad.db.models import Delivery, EcgRecord, ModelVersion, Result, SourceObject
from ecgcad.db.objects import source_bytes
from ecgcad.errors import DecodeError, ModelError
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.jobs.worker import DeadLetterHandler, Handler
from ecgcad.logsetup import uid_hash
from ecgcad.vessels import VESSELS

if TYPE_CHECKING:
    from ecgcad.context import AppContext
    from ecgcad.model.predictor import Predictor
    from ecgcad.model.risk import Prediction

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Prepared:
    job: ClaimedJob
    ecg_id: int
    signal: np.ndarray | None = None
    window: dict[str, Any] | None = None
    reason: tuple[str, str] | None = None
    gate: dict[str, Any] | None = None
    identifiers_update: dict[str, Any] | None = None


def ensure_model_version(session: Session, predictor: Predictor, *, role: str = "active") -> ModelVersion:
    """The ModelVersion row of ``predictor`` (created on first use)."""
    mv = session.execute(
        select(ModelVersion).where(ModelVersion.version == predictor.model_version)
    ).scalar_one_or_none()
    if mv is None:
        mv = ModelVersion(
            name=predictor.model_name,
            version=predictor.model_version,
            checkpoint_sha256=predictor.checkpoint_sha256,
            checkpoint_path=getattr(predictor, "checkpoint_path", None),
            demonstration=bool(predictor.demonstration),
            role=role,
            model_metadata=_jsonable(getattr(predictor, "metadata", None)),
        )
        session.add(mv)
        session.flush()
    return mv


def _jsonable(value: object) -> Any:  # noqa: ANN401 - any JSON value (json.loads), for JSON columns
    import json

    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return None


def prepare(ctx: AppContext, session: Session, ecg: EcgRecord) -> _Prepared:
    """Decode, gate and window one ECG (:func:`~ecgcad.integration.formats.prepare.prepare_bytes`); a failure
    becomes a coded not-evaluated reason."""
    from ecgcad.integration.formats.prepare import prepare_bytes

    prep = _Prepared(job=None, ecg_id=ecg.id)  # type: ignore[arg-type]
    if ecg.decode_status == "failed":
        prep.reason = ("decode_failed", ecg.decode_reason or "the ECG could not be decoded")
        return prep
    source = session.get(SourceObject, ecg.source_object_id)
    try:
        if source is None or source.deleted_at is not None:
            raise DecodeError("the raw object is no longer stored")
        prepared = prepare_bytes(source_bytes(ctx.store, source), ctx.settings.gate)
    except DecodeError as exc:
        prep.reason = ("decode_failed", str(exc))
        return prep
    if prepared.verdict is not None:
        prep.gate = prepared.verdict.to_dict()
    if prepared.failure == "decode":
        prep.reason = ("decode_failed", prepared.failure_text)
        return prep
    if prepared.failure == "gate":
        assert prepared.verdict is not None
        prep.reason = (prepared.verdict.reasons[0].code, prepared.failure_text)
        return prep
    if prepared.failure == "window" or prepared.window is None:
        prep.reason = ("too_short", prepared.failure_text)
        return prep
    window = prepared.window
    prep.signal = prepared.signal
    prep.window = {
        "policy": window.policy,
        "start_s": float(window.start_s),
        "source_rate": float(window.source_rate),
        "resampled": bool(window.resampled),
    }
    return prep


def create_deliveries(ctx: AppContext, session: Session, result: Result) -> list[int]:
    """Delivery rows (and their jobs) for every enabled destination and object kind; idempotent."""
    created: list[int] = []
    if result.shadow:
        return created
    for dest in ctx.settings.destinations:
        if not dest.enabled:
            continue
        for kind in dest.send:
            if kind == "oru" and dest.kind != "hl7":
                continue
            if kind in ("sr", "pdf") and dest.kind != "dicom":
                continue
            existing = session.execute(
                select(Delivery).where(
                    Delivery.result_id == result.id,
                    Delivery.destination == dest.name,
                    Delivery.object_kind == kind,
                )
            ).scalar_one_or_none()
            if existing is None:
                existing = Delivery(
                    result_id=result.id, destination=dest.name, object_kind=kind, state="pending"
                )
                session.add(existing)
                session.flush()
                created.append(existing.id)
            ctx.queue.defer(
                session,
                "deliver",
                {"delivery_id": existing.id},
                dedupe_key=f"deliver:{existing.id}:0",
                max_attempts=dest.max_attempts,
                # the SR and the ORU carry the result; the PDF (slow to render) goes after them
                priority=0 if kind == "pdf" else 10,
            )
    return created


def new_result(
    ctx: AppContext,
    ecg_id: int,
    model_version_id: int,
    result_version: int,
    predictor: Predictor,
    prep: _Prepared,
    prediction: Prediction | None,
    *,
    shadow: bool = False,
) -> Result:
    """A Result row for one scoring (``prediction``) or a not-evaluated verdict (``prep.reason``)."""
    result = Result(
        ecg_id=ecg_id,
        model_version_id=model_version_id,
        result_version=result_version,
        shadow=shadow,
        scorable=prediction is not None,
        model_name=predictor.model_name,
        model_version=predictor.model_version,
        checkpoint_sha256=predictor.checkpoint_sha256,
        demonstration=bool(predictor.demonstration),
        preprocessing=_jsonable(getattr(predictor, "recipe", None)),
        thresholds=thresholds_in_force(ctx, predictor),
        window=prep.window,
    )
    if prediction is None:
        result.reason_code, result.reason_text = prep.reason or ("not_evaluated", "not evaluated")
    else:
        apply_prediction(result, prediction)
    return result


def _store_result(
    ctx: AppContext,
    session: Session,
    prep: _Prepared,
    predictor: Predictor,
    prediction: Prediction | None,
    *,
    shadow: bool = False,
) -> Result | None:
    ecg = session.get(EcgRecord, prep.ecg_id)
    if ecg is None:
        return None
    mv = ensure_model_version(session, predictor, role="shadow" if shadow else "active")
    existing = (
        session.execute(
            select(Result)
            .where(Result.ecg_id == ecg.id, Result.model_version_id == mv.id)
            .order_by(Result.result_version.desc())
        )
        .scalars()
        .first()
    )
    if existing is not None:
        if not shadow:
            create_deliveries(ctx, session, existing)
        return existing
    result = new_result(ctx, ecg.id, mv.id, 1, predictor, prep, prediction, shadow=shadow)
    session.add(result)
    session.flush()
    if not shadow:
        ecg.state = "scored" if result.scorable else "not_evaluated"
        ecg.gate_status = "scorable" if result.scorable else "not_evaluated"
        if prep.gate is not None:
            ecg.gate_reasons = _jsonable(prep.gate.get("reasons"))
        create_deliveries(ctx, session, result)
        audit.record(
            session,
            "ecg.scored" if result.scorable else "ecg.not_evaluated",
            patient_id=ecg.patient_id,
            issuer_of_patient_id=ecg.issuer_of_patient_id,
            study_instance_uid=ecg.study_instance_uid,
            sop_instance_uid=ecg.sop_instance_uid,
            ecg_id=ecg.id,
            detail={
                "result_id": result.id,
                "model_version": result.model_version,
                "any_flagged": result.any_flagged,
                "reason_code": result.reason_code,
            },
        )
    return result


#: Model failures that a smaller batch (or a later retry) may cure: out of memory, runtime errors.
_MODEL_FAILURES = (ModelError, RuntimeError, MemoryError)


def _predict_halving(
    predictor: Predictor, preps: list[_Prepared]
) -> tuple[dict[int, Prediction], dict[int, BaseException]]:
    """Predict ``preps`` in one batch; when the model fails (e.g. GPU out of memory), try each half again.

    Returns
    -------
    (predictions, failures)
        ECG id → prediction, and ECG id → exception for the ECGs that failed even alone.
    """
    try:
        out = predictor.predict(np.stack([p.signal for p in preps if p.signal is not None]))
        return {p.ecg_id: pred for p, pred in zip(preps, out, strict=True)}, {}
    except _MODEL_FAILURES as exc:
        if len(preps) == 1:
            logger.error("model failed on ecg %s: %s", preps[0].ecg_id, type(exc).__name__)
            return {}, {preps[0].ecg_id: exc}
        mid = len(preps) // 2
        logger.warning(
            "model failed on a batch of %d (%s): retrying as %d + %d",
            len(preps),
            type(exc).__name__,
            mid,
            len(preps) - mid,
        )
        first, failed_first = _predict_halving(predictor, preps[:mid])
        second, failed_second = _predict_halving(predictor, preps[mid:])
        return {**first, **second}, {**failed_first, **failed_second}


def _model_failed(ctx: AppContext, exc: BaseException) -> None:
    """Remember the model failure for readiness (``checks.model_error``)."""
    try:
        ctx.model_error = f"{type(exc).__name__}: {exc}"[:300]
    except AttributeError:  # a context without the field (tests' stand-ins)
        pass


def make_score_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``score`` micro-batches."""

    def handle(jobs: list[ClaimedJob]) -> dict[int, BaseException | None]:
        from ecgcad.pipeline.telemetry import TELEMETRY

        failures: dict[int, BaseException | None] = {}
        preps: list[_Prepared] = []
        with ctx.db.read_session() as session:
            for job in jobs:
                ecg = session.get(EcgRecord, int(job.payload["ecg_id"]))
                if ecg is None:
                    continue  # deleted: nothing to do
                try:
                    prep = prepare(ctx, session, ecg)
                except Exception as exc:  # noqa: BLE001 - one bad ECG must not sink the batch
                    logger.exception("preparing ecg %s failed", ecg.id)
                    failures[job.id] = exc
                    continue
                prep.job = job
                preps.append(prep)
        try:
            predictor = ctx.get_predictor()
        except Exception as exc:  # noqa: BLE001 - the model cannot load: every ECG stays queued
            logger.error("model unavailable, %d score job(s) retried later: %s", len(jobs), exc)
            _model_failed(ctx, exc)
            error = ModelError(f"model unavailable: {type(exc).__name__}")
            return {job.id: error for job in jobs}
        scorable = [p for p in preps if p.signal is not None]
        predictions: dict[int, Prediction] = {}
        model_failures: dict[int, BaseException] = {}
        if scorable:
            t0 = time.perf_counter()
            predictions, model_failures = _predict_halving(predictor, scorable)
            TELEMETRY.observe_inference(time.perf_counter() - t0, len(scorable))
            if model_failures:
                _model_failed(ctx, next(iter(model_failures.values())))
            elif ctx.model_error is not None:
                logger.info("model %s predicts again", predictor.model_version)
                ctx.model_error = None
        for prep in preps:
            if prep.ecg_id in model_failures:
                # Not a not-evaluated verdict: the ECG stays queued and its job is retried with backoff.
                failures[prep.job.id] = ModelError(f"prediction failed: {model_failures[prep.ecg_id]}")
        preps = [p for p in preps if p.ecg_id not in model_failures]
        shadow = ctx.shadow_predictor
        shadow_out: dict[int, Prediction] = {}
        if shadow is not None and scorable:
            try:
                shadow_out = {
                    p.ecg_id: pred
                    for p, pred in zip(
                        scorable,
                        shadow.predict(np.stack([p.signal for p in scorable if p.signal is not None])),
                        strict=True,
                    )
                }
            except Exception:  # noqa: BLE001 - a shadow model never affects live results
                logger.exception("shadow model failed")
        for prep in preps:
            try:
                with ctx.db.session() as session:
                    result = _store_result(ctx, session, prep, predictor, predictions.get(prep.ecg_id))
                    if prep.ecg_id in shadow_out:
                        assert shadow is not None  # shadow_out is only filled by the shadow model
                        _store_result(ctx, session, prep, shadow, shadow_out[prep.ecg_id], shadow=True)
                TELEMETRY.count_result(result)
                logger.info(
                    "ecg %s %s (job %s, model %s)",
                    prep.ecg_id,
                    "scored"
                    if prep.signal is not None
                    else f"not evaluated: {prep.reason[0] if prep.reason else '?'}",
                    prep.job.id,
                    predictor.model_version,
                )
            except Exception as exc:  # noqa: BLE001
                logger.exception("storing the result of ecg %s failed", prep.ecg_id)
                failures[prep.job.id] = exc
        if preps and hasattr(ctx, "wake"):
            ctx.wake()  # deliveries were queued: wake the delivery workers
        return failures

    return handle


#: The reason code of an ECG whose scoring failed on every attempt.
PROCESSING_ERROR = "processing_error"


def settle_dead_score_job(ctx: AppContext, job: ClaimedJob, error: BaseException) -> None:
    """Give the ECG of a ``score`` job that went to the dead letter its final state.

    It gets a "not evaluated: processing error" result of the active model, whose reports (SR, PDF, ORU)
    are delivered like any other; the ECG is ``not_evaluated``. When not even the model can be loaded
    there is no model to record the result under: the ECG is ``failed`` (shown on the dashboard; an
    operator's rescore scores it). An ECG that has a result already is left as it is.

    Parameters
    ----------
    ctx:
        The application context.
    job:
        The dead ``score`` job (payload ``{"ecg_id"}``).
    error:
        Its last error (only its type is recorded: a message may quote source values).
    """
    ecg_id = int(job.payload["ecg_id"])
    try:
        predictor = ctx.get_predictor()
    except Exception as exc:  # noqa: BLE001 - no model: the ECG is marked failed below
        logger.error("model unavailable for the dead score job %s: %s", job.id, type(exc).__name__)
        predictor = None
    reason = f"scoring failed on all {job.attempts} attempts ({type(error).__name__})"
    with ctx.db.session() as session:
        # Locked (PostgreSQL; SQLite's writer lock serialises anyway): the worker's callback and the
        # dead-letter sweep may settle the same ECG at once, and only the first one may.
        ecg = session.get(EcgRecord, ecg_id, with_for_update=True)
        if ecg is None or ecg.state in ("scored", "not_evaluated"):
            return
        if predictor is None:
            ecg.state = "failed"
            logger.error("ecg %s failed: %s; no model to report it under", ecg_id, reason)
            return
        prep = _Prepared(job=job, ecg_id=ecg_id, reason=(PROCESSING_ERROR, reason))
        result = _store_result(ctx, session, prep, predictor, None)
        result_id = result.id if result is not None else None
    logger.error(
        "ecg %s not evaluated: processing error (job %s, result %s): %s", ecg_id, job.id, result_id, reason
    )
    if hasattr(ctx, "wake"):
        ctx.wake()  # its deliveries were queued


def make_score_dead_letter_handler(ctx: AppContext) -> DeadLetterHandler:
    """The worker's ``on_dead_letter`` callback for ``score`` jobs (:func:`settle_dead_score_job`)."""

    def on_dead_letter(job: ClaimedJob, error: BaseException) -> None:
        settle_dead_score_job(ctx, job, error)

    return on_dead_letter


def make_decode_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``decode`` jobs (files dropped or ingested by the CLI / PACS poll)."""

    def handle(jobs: list[ClaimedJob]) -> None:
        from ecgcad.integration.formats.readers import decode
        from ecgcad.pipeline.ingest import ecg_row_from

        for job in jobs:
            source_id = int(job.payload["source_object_id"])
            with ctx.db.session() as session:
                existing = session.execute(
                    select(EcgRecord).where(EcgRecord.source_object_id == source_id)
                ).scalar_one_or_none()
                if existing is not None:
                    ctx.queue.defer(
                        session, "score", {"ecg_id": existing.id}, dedupe_key=f"score:ecg:{existing.id}"
                    )
                    continue
                source = session.get(SourceObject, source_id)
                if source is None:
                    continue
                try:
                    ecg = decode(source_bytes(ctx.store, source))
                    row = ecg_row_from(ecg, source_id)
                except DecodeError as exc:
                    row = ecg_row_from(None, source_id)
                    row.decode_status = "failed"
                    row.decode_reason = str(exc)
                session.add(row)
                session.flush()
                ctx.queue.defer(session, "score", {"ecg_id": row.id}, dedupe_key=f"score:ecg:{row.id}")
                logger.info(
                    "decoded source %s (sop#%s) as ecg %s", source_id, uid_hash(row.sop_instance_uid), row.id
                )
        return None

    return handle


def make_rescore_handler(ctx: AppContext) -> Handler:
    """The worker handler for ``rescore`` jobs: a new result version of the same ECG and model."""

    def handle(jobs: list[ClaimedJob]) -> None:
        predictor = ctx.get_predictor()
        for job in jobs:
            ecg_id = int(job.payload["ecg_id"])
            with ctx.db.read_session() as session:
                ecg = session.get(EcgRecord, ecg_id)
                if ecg is None:
                    continue
                prep = prepare(ctx, session, ecg)
            prediction = predictor.predict(prep.signal[None])[0] if prep.signal is not None else None
            with ctx.db.session() as session:
                ecg = session.get(EcgRecord, ecg_id)
                assert ecg is not None
                mv = ensure_model_version(session, predictor)
                last = (
                    session.execute(
                        select(Result)
                        .where(
                            Result.ecg_id == ecg_id,
                            Result.model_version_id == mv.id,
                            Result.shadow.is_(False),
                        )
                        .order_by(Result.result_version.desc())
                    )
                    .scalars()
                    .first()
                )
                version = (last.result_version + 1) if last is not None else 1
                if (
                    last is not None
                    and job.payload.get("target_version")
                    and last.result_version >= int(job.payload["target_version"])
                ):
                    continue  # this rescore already ran (job re-run after a crash)
                result = new_result(ctx, ecg_id, mv.id, version, predictor, prep, prediction)
                session.add(result)
                session.flush()
                if last is not None:
                    last.superseded_by_id = result.id
                ecg.state = "scored" if result.scorable else "not_evaluated"
                create_deliveries(ctx, session, result)
                audit.record(
                    session,
                    "ecg.rescore",
                    user=job.payload.get("requested_by"),
                    patient_id=ecg.patient_id,
                    issuer_of_patient_id=ecg.issuer_of_patient_id,
                    study_instance_uid=ecg.study_instance_uid,
                    ecg_id=ecg.id,
                    detail={
                        "result_id": result.id,
                        "result_version": version,
                        "model_version": result.model_version,
                    },
                )
        return None

    return handle


def thresholds_in_force(ctx: AppContext, predictor: Predictor) -> dict[str, float]:
    """The predictor's risk thresholds (or the configured ones when it has none), as recorded on results."""
    th = getattr(predictor, "thresholds", None)
    high = getattr(th, "high", None)
    return {k: float(v) for k, v in dict(high).items()} if high else ctx.settings.thresholds.as_dict()


def apply_prediction(result: Result, prediction: Prediction) -> None:
    """Copy a prediction's probabilities, flags and risk bands onto ``result``."""
    probs = {v: float(prediction.probabilities[v]) for v in VESSELS}
    flags = {v: bool(prediction.flags[v]) for v in VESSELS}
    result.p_rca, result.p_lm, result.p_lad, result.p_lcx = (
        probs["rca"],
        probs["lm"],
        probs["lad"],
        probs["lcx"],
    )
    result.flag_rca, result.flag_lm, result.flag_lad, result.flag_lcx = (
        flags["rca"],
        flags["lm"],
        flags["lad"],
        flags["lcx"],
    )
    result.any_flagged = any(flags.values())
    result.risk_bands = dict(getattr(prediction, "bands", {}) or {})


def next_result_version(session: Session, ecg_id: int) -> int:
    """The version a rescore of ``ecg_id`` will get."""
    current = session.execute(
        select(func.max(Result.result_version)).where(Result.ecg_id == ecg_id, Result.shadow.is_(False))
    ).scalar()
    return int(current or 0) + 1
