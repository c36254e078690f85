"""Retention deletes only finished, delivered raw objects past their age; maintenance upkeeps the database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import select

from ecgcad.context import AppContext
from ecgcad.db.models import AuditEvent, Delivery, EcgRecord, KvState, Result, SourceObject
from ecgcad.pipeline.maintenance import apply_retention, run_maintenance
from tests.helpers import drain
from tests.scaleout.conftest import ecg_copies


def _ingest(ctx: AppContext, n: int) -> list[int]:
    return [ctx.ingestor.ingest_file(d, filename="e.dcm").source_object_id for d in ecg_copies(n)]


def test_retention_keeps_queued_failing_and_undelivered_objects(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx(
        retention={"file_days": 30},
        destinations=[{"name": "ehr", "kind": "hl7", "port": 9, "max_attempts": 1}],
    )
    done, undelivered, failing = _ingest(ctx, 3)
    drain(ctx)
    with ctx.db.session() as s:
        ecgs = {e.source_object_id: e for e in s.execute(select(EcgRecord)).scalars()}
        for d in s.execute(select(Delivery)).scalars():
            result = s.get(Result, d.result_id)
            d.state = "sent" if result.ecg_id != ecgs[undelivered].id else "retrying"
        ecgs[failing].state = "failed"
    queued = _ingest(ctx, 1)[0]  # not decoded yet: no ECG row
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert apply_retention(ctx, now=later) == {"file": 1}
    with ctx.db.session() as s:
        deleted = {o.id: o.deleted_at is not None for o in s.execute(select(SourceObject)).scalars()}
        sha = s.get(SourceObject, done).sha256
        assert s.execute(select(AuditEvent).where(AuditEvent.event_type == "retention.deleted")).first()
    assert deleted == {done: True, undelivered: False, failing: False, queued: False}
    assert not ctx.store.path_for(sha).exists()
    assert apply_retention(ctx) == {"file": 0}, "nothing is younger than its retention"


def test_maintenance_vacuums_sqlite_and_records_a_marker(make_ctx: Callable[..., AppContext]) -> None:
    ctx = make_ctx()
    report = run_maintenance(ctx, vacuum=True)
    assert report["vacuumed"] is True and report["dialect"] == "sqlite"
    with ctx.db.session() as s:
        assert s.get(KvState, "maintenance:last") is not None


def test_retention_clears_an_hl7_message_kept_in_the_database(make_ctx: Callable[..., AppContext]) -> None:
    from sqlalchemy.orm import undefer

    from ecgcad.db.models import IN_DATABASE, Order

    ctx = make_ctx(retention={"hl7_days": 30})
    order = b"MSH|^~\\&|HIS|H|ECGCAD|H|2026||ORM^O01|O1|P|2.5.1\rPID|1||P1^^^H^MR\rORC|NW|PL1|FI1\rOBR|1|PL1|FI1\r"
    source_id = ctx.ingestor.ingest_hl7(order, control_id="O1", message_type="ORM^O01").source_object_id
    drain(ctx)
    with ctx.db.session() as s:
        assert s.execute(select(Order).where(Order.source_object_id == source_id)).first(), "order linked"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert apply_retention(ctx, now=later)["hl7"] == 1
    with ctx.db.session() as s:
        obj = s.get(SourceObject, source_id, options=[undefer(SourceObject.content)])
        assert obj.storage_path == IN_DATABASE and obj.deleted_at is not None and obj.content is None
