"""Durable ingest: object + rows + job commit together; duplicates are recognised; back-pressure refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from ecgcad.db.models import AuditEvent, EcgRecord, Job, SourceObject
from ecgcad.db.objects import ObjectStore
from ecgcad.db.session import Database
from ecgcad.errors import BackPressureError
from ecgcad.integration.formats.ecg import Ecg, EcgIdentifiers
from ecgcad.jobs.queue import SqlJobQueue
from ecgcad.pipeline.ingest import Ingestor
from tests.helpers import count_rows


def _ecg(uid: str = "1.2.3.4") -> Ecg:
    return Ecg(
        signal=np.zeros((12, 5000), np.float32),
        sampling_rate=500,
        format="dicom",
        identifiers=EcgIdentifiers(
            patient_id="PID-1", issuer_of_patient_id="HOSP", sop_instance_uid=uid, study_instance_uid="1.2.3"
        ),
    )


@pytest.fixture
def ingestor(db: Database, tmp_path: Path) -> Ingestor:
    return Ingestor(db, ObjectStore(tmp_path / "objects"), SqlJobQueue(db))


def test_dicom_ingest_commits_object_ecg_job_and_audit_together(ingestor: Ingestor, db: Database) -> None:
    r = ingestor.ingest_dicom(
        b"DICM-bytes-1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.9.1.1",
        sop_instance_uid="1.2.3.4",
        ecg=_ecg(),
        calling_ae="CART",
    )
    assert r.ecg_id is not None and r.job_id is not None and not r.duplicate
    with db.session() as s:
        ecg = s.get(EcgRecord, r.ecg_id)
        assert ecg is not None and ecg.patient_id == "PID-1" and ecg.issuer_of_patient_id == "HOSP"
        src = s.get(SourceObject, r.source_object_id)
        assert src is not None and Path(src.storage_path).read_bytes() == b"DICM-bytes-1"
        job = s.get(Job, r.job_id)
        assert job is not None and job.kind == "score" and job.payload == {"ecg_id": r.ecg_id}
        assert s.execute(select(AuditEvent.event_type)).scalars().all() == ["dicom.received"]


def test_identical_bytes_are_a_duplicate_and_not_queued_again(ingestor: Ingestor, db: Database) -> None:
    first = ingestor.ingest_dicom(b"same", sop_class_uid=None, sop_instance_uid="1.2.3.4", ecg=_ecg())
    second = ingestor.ingest_dicom(b"same", sop_class_uid=None, sop_instance_uid="1.2.3.4", ecg=_ecg())
    assert second.duplicate and second.job_id is None and second.ecg_id == first.ecg_id
    assert count_rows(db, Job) == 1 and count_rows(db, EcgRecord) == 1


def test_same_uid_with_different_bytes_is_a_new_audited_version(ingestor: Ingestor, db: Database) -> None:
    ingestor.ingest_dicom(b"v1", sop_class_uid=None, sop_instance_uid="1.2.3.4", ecg=_ecg())
    r = ingestor.ingest_dicom(b"v2", sop_class_uid=None, sop_instance_uid="1.2.3.4", ecg=_ecg())
    assert r.new_version and r.job_id is not None
    with db.session() as s:
        versions = s.execute(select(SourceObject.object_version).order_by(SourceObject.id)).scalars().all()
        assert versions == [1, 2]
        assert "dicom.new_version" in s.execute(select(AuditEvent.event_type)).scalars().all()


def test_decode_failure_is_stored_and_queued_for_a_not_evaluated_result(
    ingestor: Ingestor, db: Database
) -> None:
    r = ingestor.ingest_dicom(
        b"broken", sop_class_uid="1.2", sop_instance_uid="9.9", ecg=None, decode_error="no waveform"
    )
    with db.session() as s:
        ecg = s.get(EcgRecord, r.ecg_id)
        assert ecg is not None and ecg.decode_status == "failed" and ecg.decode_reason == "no waveform"
    assert r.job_id is not None


def test_hl7_retransmission_is_acknowledged_without_a_second_job(ingestor: Ingestor, db: Database) -> None:
    msg = b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|CTRL1|P|2.5.1\r"
    first = ingestor.ingest_hl7(msg, control_id="CTRL1", message_type="ORU^R01")
    again = ingestor.ingest_hl7(msg, control_id="CTRL1", message_type="ORU^R01")
    assert first.job_id is not None and again.duplicate and again.job_id is None
    assert count_rows(db, Job) == 1


def test_back_pressure_when_queue_is_at_its_limit(db: Database, tmp_path: Path) -> None:
    ing = Ingestor(db, ObjectStore(tmp_path / "o"), SqlJobQueue(db), max_depth=1)
    ing.ingest_hl7(b"m1", control_id="1", message_type="ORU^R01")
    ing._depth_cache = (0.0, 0)
    with pytest.raises(BackPressureError):
        ing.ingest_hl7(b"m2", control_id="2", message_type="ORU^R01")
    assert count_rows(db, SourceObject) == 1


def test_back_pressure_when_disk_is_under_reserve(db: Database, tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "o", min_free_bytes=10**18)
    ing = Ingestor(db, store, SqlJobQueue(db))
    with pytest.raises(BackPressureError):
        ing.ingest_hl7(b"m1", control_id="1", message_type="ORU^R01")
    assert count_rows(db, SourceObject) == 0


def test_audit_chain_verifies_and_detects_tampering(sqlite_db: Database) -> None:
    from sqlalchemy import text

    from ecgcad.db import audit

    with sqlite_db.session() as s:
        for i in range(5):
            audit.record(s, "api.read", user=f"u{i}", patient_id="P1")
    with sqlite_db.session() as s:
        report = audit.verify_session(s)
    assert report.ok and report.checked == 5
    with sqlite_db.session() as s:
        s.execute(text("DROP TRIGGER audit_events_no_update"))
        s.execute(text("UPDATE audit_events SET user = 'mallory' WHERE id = 3"))
    with sqlite_db.session() as s:
        report = audit.verify_session(s)
    assert not report.ok and report.first_broken_id == 3


def test_concurrent_ingests_share_group_commits_and_each_is_stored_once(
    ingestor: Ingestor, db: Database
) -> None:
    import threading

    results: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def send(i: int) -> None:
        try:
            start.wait(10)
            # messages 0 and 1 are identical: one must be recognised as the duplicate of the other
            body = b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|C%d|P|2.5.1\r" % (i if i > 1 else 0)
            results.append(ingestor.ingest_hl7(body, control_id=f"C{i}", message_type="ORU^R01"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 16
    assert sum(1 for r in results if r.duplicate) == 1  # type: ignore[attr-defined]
    assert count_rows(db, SourceObject) == 15 and count_rows(db, Job) == 15


def test_a_failing_item_does_not_sink_the_rest_of_its_group(ingestor: Ingestor, db: Database) -> None:
    from ecgcad.errors import StorageError

    def boom(session, existing, sha, path):  # type: ignore[no-untyped-def]
        raise RuntimeError("constraint violated")

    with pytest.raises(StorageError):
        ingestor._submit(b"bad one", boom)
    r = ingestor.ingest_hl7(b"good one", control_id="G", message_type="ORU^R01")
    assert r.job_id is not None and count_rows(db, SourceObject) == 1


def _hl7(n: int) -> bytes:
    return b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|M%d|P|2.5.1\r" % n


def test_hl7_message_is_kept_in_the_database_with_its_job(ingestor: Ingestor, db: Database) -> None:
    from sqlalchemy.orm import undefer

    from ecgcad.db.models import IN_DATABASE
    from ecgcad.db.objects import source_bytes

    r = ingestor.ingest_hl7(_hl7(1), control_id="M1", message_type="ORU^R01")
    with db.session() as s:
        obj = s.get(SourceObject, r.source_object_id, options=[undefer(SourceObject.content)])
        assert obj is not None and obj.storage_path == IN_DATABASE
        assert source_bytes(ingestor.store, obj) == _hl7(1)
    assert not any(p.is_file() for p in ingestor.store.root.rglob("*")), "no file and no second flush"


def test_a_batch_is_one_group_and_a_failing_item_does_not_sink_the_others(
    ingestor: Ingestor, db: Database
) -> None:
    from ecgcad.db import audit
    from ecgcad.errors import StorageError
    from ecgcad.pipeline.ingest import Hl7Message, _Pending

    def boom(session, existing, sha, path):  # type: ignore[no-untyped-def]
        audit.record(session, "cli.action", detail={"about": "to fail"})  # rolled back with its savepoint
        raise RuntimeError("constraint violated")

    good = [
        _Pending(_hl7(i), ingestor._hl7_apply(Hl7Message(_hl7(i), f"M{i}", "ORU^R01"), None), True)
        for i in range(4)
    ]
    items = ingestor._submit_all([good[0], good[1], _Pending(b"bad", boom, True), good[2], good[3]])
    assert [type(i.error) for i in items] == [type(None)] * 2 + [StorageError] + [type(None)] * 2
    assert all(i.result is not None and i.result.job_id is not None for i in items[:2] + items[3:])
    assert count_rows(db, SourceObject) == 4 and count_rows(db, Job) == 4
    with db.session() as s:
        assert audit.verify_session(s).ok, "the audit chain skips the rolled-back event"
        assert s.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == 4

    outcomes = ingestor.ingest_hl7_many(
        [Hl7Message(_hl7(0), "M0", "ORU^R01"), Hl7Message(_hl7(9), "M9", "ORU^R01")], peer_address="10.0.0.9"
    )
    assert [getattr(o, "duplicate", None) for o in outcomes] == [True, False]


def test_audit_tail_is_forgotten_when_a_savepoint_rolls_back(db: Database) -> None:
    from ecgcad.db import audit

    with db.session() as s:
        audit.record(s, "api.read", user="a")
        try:
            with s.begin_nested():
                audit.record(s, "api.read", user="b")
                raise RuntimeError("undo b")
        except RuntimeError:
            pass
        audit.record(s, "api.read", user="c")
    with db.session() as s:
        audit.record(s, "api.read", user="d")
    with db.session() as s:
        report = audit.verify_session(s)
        users = s.execute(select(AuditEvent.user).order_by(AuditEvent.id)).scalars().all()
    assert report.ok and report.checked == 3
    assert users == ["a", "c", "d"]
