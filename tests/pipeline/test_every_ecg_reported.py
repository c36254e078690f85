"""Every acknowledged ECG gets its report (issue 16, items 2 and 3): scored, or "not evaluated: <reason>" —
pediatric, flat, noisy and corrupt ECGs, an unparsable birth date, a scoring job out of attempts — and a
report that cannot be built is an alert on ``/metrics`` and the dashboard, not a quiet ``failed``."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, EcgRecord
from ecgcad.errors import BuildError
from ecgcad.integration.formats.ecg import LEADS
from ecgcad.testing import ecg_writers as w
from ecgcad.testing.fake_predictor import FakePredictor
from tests.helpers import drain
from tests.pipeline.conftest import (
    FIXED,
    assert_processing_error_reported,
    ingest_dicom,
    ingest_real,
    not_evaluated_code,
    pipeline_worker,
    reports_of,
)

_uids = iter(range(1, 1000))


def _dicom_ecg(signal: np.ndarray | None = None, *, sensitivity: str | None = None, **ids: Any) -> bytes:
    identifiers = dataclasses.replace(
        w.TEST_IDENTIFIERS, sop_instance_uid=f"1.2.826.0.1.3680043.10.543.99.{next(_uids)}", **ids
    )
    data = w.build_dicom_ecg(signal, 500.0 if signal is not None else None, identifiers=identifiers)
    if sensitivity is None:
        return data
    ds = pydicom.dcmread(io.BytesIO(data))
    for group in ds.WaveformSequence:
        for channel in group.ChannelDefinitionSequence:
            channel.ChannelSensitivity = sensitivity
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


FLAT = np.zeros((len(LEADS), 5000), dtype=np.float32)
NOISY = w.real_signal(500.0) + np.random.default_rng(0).normal(0, 0.5, (len(LEADS), 5000)).astype(np.float32)


@pytest.mark.parametrize(
    ("make", "report_code"),
    [
        (lambda: _dicom_ecg(patient_age="010Y"), "UNDERAGE"),
        (lambda: _dicom_ecg(FLAT), "FLAT_LEAD"),
        (lambda: _dicom_ecg(NOISY), "NOISE"),
        (lambda: _dicom_ecg(sensitivity="-2.5"), "BAD_SENSITIVITY"),
        (lambda: _dicom_ecg(sensitivity="1e300"), "NON_FINITE"),
    ],
    ids=["pediatric", "flat", "noisy", "negative-sensitivity", "overflowing-samples"],
)
def test_acknowledged_ecg_that_is_not_evaluated_gets_sr_pdf_and_oru(
    ctx: AppContext, make: Any, report_code: str
) -> None:
    """Before: C-STORE Success, then every delivery failed "reason text must be 1–64 characters"."""
    ecg_id = ingest_dicom(ctx, make())
    drain(ctx, pipeline_worker(ctx))
    result, received = reports_of(ctx, ecg_id)
    assert not result.scorable
    assert {kind: state for kind, (state, _) in received.items()} == {
        "sr": "sent",
        "pdf": "sent",
        "oru": "sent",
    }
    assert not_evaluated_code(received["sr"][1]) == report_code
    oru = received["oru"][1]
    assert f"|CWE|NOT-EVAL^Reason not evaluated^99ECGCAD||{report_code}^".encode() in oru
    assert b"|IND|" in oru
    with ctx.db.session() as s:
        assert s.get(EcgRecord, ecg_id).state == "not_evaluated"  # type: ignore[union-attr]


def test_unparsable_birth_date_is_left_out_and_the_scored_sr_is_delivered(ctx: AppContext) -> None:
    """Before: ``PatientBirthDate=00000000`` scored, but the SR failed with "year 0 is out of range"."""
    ecg_id = ingest_dicom(ctx, _dicom_ecg(patient_birth_date="00000000"))
    drain(ctx, pipeline_worker(ctx))
    result, received = reports_of(ctx, ecg_id)
    assert result.scorable
    assert {kind: state for kind, (state, _) in received.items()} == {
        "sr": "sent",
        "pdf": "sent",
        "oru": "sent",
    }
    sr = received["sr"][1]
    assert sr.PatientBirthDate == "" and sr.PatientID == w.TEST_IDENTIFIERS.patient_id


def test_score_job_out_of_attempts_makes_the_ecg_not_evaluated_processing_error(ctx: AppContext) -> None:
    """Before: the job failed 5 times and the ECG stayed ``queued`` forever, with no report."""
    ctx.set_predictor(FakePredictor(fixed=FIXED, fail_with=RuntimeError("device lost")))
    ecg_id = ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    assert ctx.queue.counts()["failed"] == 1, "the score job is in the dead letter"
    assert_processing_error_reported(ctx, ecg_id)
    with ctx.db.session() as s:
        assert s.get(EcgRecord, ecg_id).state == "not_evaluated"  # type: ignore[union-attr]
        events = s.execute(select(AuditEvent.event_type)).scalars().all()
        assert "ecg.not_evaluated" in events


def test_score_job_out_of_attempts_without_a_model_marks_the_ecg_failed(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model() -> Any:
        raise RuntimeError("checkpoint missing")

    monkeypatch.setattr(ctx, "get_predictor", no_model)
    ecg_id = ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    with ctx.db.session() as s:
        assert s.get(EcgRecord, ecg_id).state == "failed"  # type: ignore[union-attr]


def test_report_that_cannot_be_built_is_an_alert_on_metrics_and_dashboard(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    import ecgcad.integration.reports.sr as sr_module
    from ecgcad.api.app import create_app
    from ecgcad.api.auth import create_token

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette's TestClient warns that it will move to httpx2
        from fastapi.testclient import TestClient

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise BuildError("a value the SR cannot carry")

    monkeypatch.setattr(sr_module, "build_stenosis_sr", broken)
    ecg_id = ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    _, received = reports_of(ctx, ecg_id)
    assert {kind: state for kind, (state, _) in received.items()} == {
        "sr": "failed",
        "pdf": "sent",
        "oru": "sent",
    }
    with ctx.db.session() as s:
        token = create_token(s, "victor-viewer", "viewer")
        failed = s.execute(select(AuditEvent).where(AuditEvent.event_type == "delivery.failed")).scalar_one()
        assert failed.outcome == 8 and failed.detail["content_error"] is True
    with TestClient(create_app(ctx)) as client:
        metrics = client.get("/metrics").text
        page = client.get("/", headers={"Authorization": f"Bearer {token}"}).text
    assert 'ecgcad_delivery_content_errors{destination="pacs",kind="sr"} 1' in metrics
    assert 'id="content-errors">1</b>' in page
