"""The flow in one process: ingest → score (micro-batch) → SR/PDF/ORU → delivery with retries → audit."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.db.models import AuditEvent, Delivery, EcgRecord, Job, Result
from ecgcad.integration.formats.ecg import EcgIdentifiers
from ecgcad.integration.formats.readers import decode
from ecgcad.integration.transport.senders import SendOutcome
from ecgcad.pipeline import actions
from ecgcad.testing.fake_predictor import FakePredictor
from ecgcad.testing.fake_senders import FakeSender, RefusingSender
from tests.helpers import drain
from tests.pipeline.conftest import (
    FIXED,
    REAL_ECG,
    dicom_of,
    ingest_real,
    pipeline_worker,
)


def test_real_ecg_is_scored_once_and_delivered_to_every_destination(ctx: AppContext) -> None:
    ecg_id = ingest_real(ctx)
    worker = pipeline_worker(ctx)
    drain(ctx, worker)
    with ctx.db.session() as s:
        results = s.execute(select(Result).where(Result.ecg_id == ecg_id)).scalars().all()
        assert len(results) == 1
        r = results[0]
        assert r.scorable and r.probabilities() == pytest.approx(FIXED)
        assert r.flags() == {"rca": True, "lm": False, "lad": False, "lcx": True}
        assert r.any_flagged and r.demonstration
        deliveries = s.execute(select(Delivery).where(Delivery.result_id == r.id)).scalars().all()
        assert sorted((d.destination, d.object_kind, d.state) for d in deliveries) == [
            ("ehr", "oru", "sent"),
            ("pacs", "pdf", "sent"),
            ("pacs", "sr", "sent"),
        ]
        assert s.get(EcgRecord, ecg_id).state == "scored"  # type: ignore[union-attr]
        events = s.execute(select(AuditEvent.event_type)).scalars().all()
        assert events.count("delivery.sent") == 3 and "ecg.scored" in events and "dicom.received" in events
    source = pydicom.dcmread(REAL_ECG)
    sr, pdf = (dicom_of(obj) for obj in ctx.senders["pacs"].delivered)  # type: ignore[attr-defined]
    for obj in (sr, pdf):
        assert isinstance(obj, Dataset)
        assert obj.PatientID == source.PatientID and obj.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.VerificationFlag == "UNVERIFIED"
    assert pdf.Modality == "DOC"
    (oru,) = ctx.senders["ehr"].delivered  # type: ignore[attr-defined]
    text = oru.decode("utf-8") if isinstance(oru, bytes) else str(oru)
    pid = next(seg.split("|") for seg in text.split("\r") if seg.startswith("PID|"))
    assert "ORU^R01^ORU_R01" in text and pid[3].split("^")[0] == source.PatientID
    assert "DEMONSTRATION MODEL" in text


def test_failing_destination_retries_with_backoff_and_never_blocks_the_other(ctx: AppContext) -> None:
    ctx.senders["ehr"] = FakeSender([SendOutcome.retry("connection refused"), SendOutcome.retry("MSA AE")])  # type: ignore[attr-defined]
    ingest_real(ctx)
    worker = pipeline_worker(ctx)
    drain(ctx, worker)
    with ctx.db.session() as s:
        ehr = s.execute(select(Delivery).where(Delivery.destination == "ehr")).scalar_one()
        assert ehr.state == "sent" and ehr.attempts == 3
        assert {
            d.state for d in s.execute(select(Delivery).where(Delivery.destination == "pacs")).scalars()
        } == {"sent"}
    assert ctx.senders["ehr"].attempts == 3  # type: ignore[attr-defined]
    assert len(ctx.senders["ehr"].delivered) == 1  # type: ignore[attr-defined]


def test_permanent_refusal_and_exhausted_retries_end_in_the_dead_letter(ctx: AppContext) -> None:
    ctx.senders["ehr"] = FakeSender(default=SendOutcome.retry("timeout"))  # type: ignore[attr-defined]
    ctx.senders["pacs"] = RefusingSender("status 0xA900")  # type: ignore[attr-defined]
    ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    with ctx.db.session() as s:
        states = {
            (d.destination, d.object_kind): (d.state, d.attempts, d.last_response)
            for d in s.execute(select(Delivery)).scalars()
        }
    assert states[("ehr", "oru")] == ("failed", 3, "timeout")
    assert states[("pacs", "sr")][0] == "failed" and states[("pacs", "sr")][1] == 1
    assert ctx.queue.counts()["failed"] == 3


def test_undecodable_ecg_is_reported_not_evaluated_with_its_reason(ctx: AppContext) -> None:
    r = ctx.ingestor.ingest_dicom(
        b"not really",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
        sop_instance_uid="1.2.3.999",
        ecg=None,
        decode_error="no waveform sequence",
        identifiers=EcgIdentifiers(
            patient_id="MRN-NE", issuer_of_patient_id="HOSP", sop_instance_uid="1.2.3.999"
        ),
    )
    drain(ctx, pipeline_worker(ctx))
    with ctx.db.session() as s:
        result = s.execute(select(Result).where(Result.ecg_id == r.ecg_id)).scalar_one()
        assert not result.scorable and result.reason_code == "decode_failed"
        assert s.get(EcgRecord, r.ecg_id).state == "not_evaluated"  # type: ignore[union-attr]
    (oru,) = ctx.senders["ehr"].delivered  # type: ignore[attr-defined]
    assert b"|IND|" in oru and b"DECODE_FAILED" in oru and b"MRN-NE" in oru
    sr = dicom_of(ctx.senders["pacs"].delivered[0])  # type: ignore[attr-defined]
    assert sr.PatientID == "MRN-NE"


def test_a_second_run_of_the_score_job_does_not_duplicate_the_result(ctx: AppContext) -> None:
    ecg_id = ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    with ctx.db.session() as s:
        ctx.queue.defer(s, "score", {"ecg_id": ecg_id})  # e.g. a re-run after a crash
    drain(ctx, pipeline_worker(ctx))
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(Result)).scalar_one() == 1
        assert s.execute(select(func.count()).select_from(Delivery)).scalar_one() == 3
    assert len(ctx.senders["pacs"].delivered) == 2  # type: ignore[attr-defined]


def test_rescore_makes_a_correction_and_resend_sends_the_same_object(ctx: AppContext) -> None:
    ecg_id = ingest_real(ctx)
    worker = pipeline_worker(ctx)
    drain(ctx, worker)
    out = actions.rescore_ecg(ctx, ecg_id, user="alice", role="operator", address="10.0.0.1")
    assert out["result_version"] == 2
    drain(ctx, worker)
    with ctx.db.session() as s:
        versions = (
            s.execute(select(Result.result_version).where(Result.ecg_id == ecg_id).order_by(Result.id))
            .scalars()
            .all()
        )
        assert versions == [1, 2]
    orus = ctx.senders["ehr"].delivered  # type: ignore[attr-defined]
    assert len(orus) == 2 and b"|C|" in orus[1] or b"|C\r" in orus[1]
    sr2 = dicom_of(ctx.senders["pacs"].delivered[2])  # type: ignore[attr-defined]
    assert "PredecessorDocumentsSequence" in sr2
    with ctx.db.session() as s:
        sr_delivery = (
            s.execute(select(Delivery).where(Delivery.object_kind == "sr").order_by(Delivery.id))
            .scalars()
            .first()
        )
        assert sr_delivery is not None
        delivery_id = sr_delivery.id
    before = len(ctx.senders["pacs"].delivered)  # type: ignore[attr-defined]
    actions.resend_delivery(ctx, delivery_id, user="bob", role="operator")
    drain(ctx, worker)
    resent = dicom_of(ctx.senders["pacs"].delivered[before])  # type: ignore[attr-defined]
    assert resent.SOPInstanceUID == dicom_of(ctx.senders["pacs"].delivered[0]).SOPInstanceUID  # type: ignore[attr-defined]
    pdf = actions.report_pdf(ctx, ecg_id)
    assert pdf.startswith(b"%PDF-")
    with ctx.db.session() as s:
        assert s.execute(select(func.count()).select_from(Job).where(Job.state == "failed")).scalar_one() == 0


def test_site_profile_settings_shape_the_sr_and_oru(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "var"),
        reports={"sr_sop_class": "comprehensive3d", "oru_result_status": "F", "oru_include_pdf": True},
        destinations=[
            {"name": "pacs", "kind": "dicom", "port": 11113, "ae_title": "PACS"},
            {"name": "ehr", "kind": "hl7", "port": 2576},
        ],
    )
    upgrade(settings)
    ctx = AppContext.from_settings(settings)
    ctx.set_predictor(FakePredictor(fixed=FIXED))
    senders = {"pacs": FakeSender(), "ehr": FakeSender()}
    ctx.sender_factory = lambda dest: senders[dest.name]
    ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    (sr,) = (dicom_of(obj) for obj in senders["pacs"].delivered)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    (oru,) = senders["ehr"].delivered
    segments = [seg.split(b"|") for seg in oru.split(b"\r") if seg]
    obr = next(seg for seg in segments if seg[0] == b"OBR")
    assert obr[25] == b"F"
    assert any(seg[0] == b"OBX" and seg[2] == b"ED" for seg in segments), "the PDF travels in an ED OBX"
    assert b"DEMONSTRATION MODEL" not in oru, "a non-demonstration model carries no demo disclaimer"


def test_shadow_model_results_are_stored_and_never_sent(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "var"),
        model={"shadow_checkpoint": str(tmp_path / "candidate.pt")},
        destinations=[{"name": "ehr", "kind": "hl7", "port": 2576}],
    )
    upgrade(settings)
    ctx = AppContext.from_settings(settings)
    ctx.set_predictor(FakePredictor(fixed=FIXED))
    ctx._shadow = FakePredictor(name="candidate", fixed={"rca": 0.9, "lm": 0.9, "lad": 0.9, "lcx": 0.9})
    sender = FakeSender()
    ctx.sender_factory = lambda dest: sender
    ecg_id = ingest_real(ctx)
    drain(ctx, pipeline_worker(ctx))
    with ctx.db.session() as s:
        results = s.execute(select(Result).where(Result.ecg_id == ecg_id).order_by(Result.id)).scalars().all()
        assert [(r.shadow, r.model_name) for r in results] == [(False, "fake"), (True, "candidate")]
        shadow = results[1]
        assert shadow.p_rca == pytest.approx(0.9)
        assert (
            s.execute(
                select(func.count()).select_from(Delivery).where(Delivery.result_id == shadow.id)
            ).scalar_one()
            == 0
        )
    assert len(sender.delivered) == 1, "only the active model's ORU is sent"


def test_ordered_destination_sends_a_patients_results_in_order(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "var"),
        queue={"backoff_base_s": 0.05, "backoff_max_s": 0.1},
        destinations=[{"name": "ehr", "kind": "hl7", "port": 2576, "ordered_per_patient": True}],
    )
    upgrade(settings)
    ctx = AppContext.from_settings(settings)
    ctx.set_predictor(FakePredictor(fixed=FIXED))
    # the first ORU is refused once: without ordering the second ECG's ORU would overtake it
    sender = FakeSender([SendOutcome.retry("connection refused")])
    ctx.sender_factory = lambda dest: sender
    import pydicom.uid

    data = REAL_ECG.read_bytes()
    first = decode(data)
    ctx.ingestor.ingest_dicom(
        data, sop_class_uid=None, sop_instance_uid=first.identifiers.sop_instance_uid, ecg=first
    )
    ds = pydicom.dcmread(REAL_ECG)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf)
    second = decode(buf.getvalue())
    ctx.ingestor.ingest_dicom(
        buf.getvalue(), sop_class_uid=None, sop_instance_uid=ds.SOPInstanceUID, ecg=second
    )
    drain(ctx, pipeline_worker(ctx))
    delivered = [m.split(b"\r", 1)[0].split(b"|")[9] for m in sender.delivered]
    assert [c[:2] for c in delivered] == [b"E1", b"E2"], delivered
    with ctx.db.session() as s:
        assert {d.state for d in s.execute(select(Delivery)).scalars()} == {"sent"}
