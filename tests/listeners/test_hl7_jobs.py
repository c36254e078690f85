"""The worker's ``hl7`` job: ORU → ECG row + score job linked to its order; ORM/OMG/ADT → order row."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import func, select

from ecgcad.context import AppContext
from ecgcad.db.models import EcgRecord, Job, Order
from ecgcad.errors import DecodeError
from ecgcad.integration.formats.ecg import Ecg, EcgIdentifiers
from ecgcad.jobs.queue import ClaimedJob
from ecgcad.pipeline.hl7_jobs import make_hl7_handler
from tests.listeners.hl7util import oru

ORM = (
    b"MSH|^~\\&|RIS|HOSP|ECGCAD|HOSP|20240101||ORM^O01|O1|P|2.3\r"
    b"PID|1||PAT42^^^HOSP^MR||DOE^JANE\r"
    b"ORC|NW|PL-X1|FI-X1\r"
    b"OBR|1|PL-X1|FI-X1|93000^ECG^CPT\r"
)


def _job(ctx: AppContext, data: bytes, control_id: str, mtype: str) -> ClaimedJob:
    result = ctx.ingestor.ingest_hl7(data, control_id=control_id, message_type=mtype)
    return ClaimedJob(result.job_id or 0, "hl7", {"source_object_id": result.source_object_id}, 1, 5)


def _decoded(data: bytes, *, filename: str | None = None) -> Ecg:
    return Ecg(np.zeros((12, 5000), np.float32), 500.0, "hl7v2", EcgIdentifiers(patient_id="PAT42"))


def _failing(data: bytes, *, filename: str | None = None) -> Ecg:
    raise DecodeError("no waveform OBX")


def test_order_then_oru_creates_linked_ecg_and_score_job_idempotently(ctx: AppContext) -> None:
    handler = make_hl7_handler(ctx, decoder=_decoded)
    assert handler([_job(ctx, ORM, "O1", "ORM^O01")]) is None
    job = _job(ctx, oru("X1"), "X1", "ORU^R01")
    assert handler([job]) is None
    assert handler([job]) is None  # a second run changes nothing
    with ctx.db.session() as s:
        order = s.execute(select(Order)).scalar_one()
        ecg = s.execute(select(EcgRecord)).scalar_one()
        assert (order.placer_order_number, order.patient_id) == ("PL-X1", "PAT42")
        assert ecg.order_id == order.id and ecg.decode_status == "decoded"
        assert ecg.placer_order_number == "PL-X1"
        score = s.execute(select(Job).where(Job.kind == "score")).scalar_one()
        assert score.payload == {"ecg_id": ecg.id}


def test_undecodable_oru_becomes_a_failed_ecg_not_a_dropped_message(ctx: AppContext) -> None:
    handler = make_hl7_handler(ctx, decoder=_failing)
    assert handler([_job(ctx, oru("Y1"), "Y1", "ORU^R01")]) is None
    with ctx.db.session() as s:
        ecg = s.execute(select(EcgRecord)).scalar_one()
        assert ecg.decode_status == "failed" and ecg.decode_reason == "no waveform OBX"
        assert s.execute(select(func.count()).select_from(Job).where(Job.kind == "score")).scalar_one() == 1


def test_adt_and_omg_store_orders(ctx: AppContext) -> None:
    handler = make_hl7_handler(ctx, decoder=_failing)
    adt = b"MSH|^~\\&|A|B|C|D|2024||ADT^A08|D1|P|2.5\rPID|1||P9^^^H\rPV1|1|I|||||||||||||||||V1\r"
    omg = b"MSH|^~\\&|A|B|C|D|2024||OMG^O19^OMG_O19|G1|P|2.5.1\rPID|1||P9\rORC|NW|PL-G\rOBR|1|PL-G\r"
    jobs = [_job(ctx, adt, "D1", "ADT^A08"), _job(ctx, omg, "G1", "OMG^O19")]
    assert handler(jobs) is None
    with ctx.db.session() as s:
        rows: list[Any] = list(s.execute(select(Order).order_by(Order.id)).scalars())
    assert [(r.message_type, r.visit_number, r.placer_order_number) for r in rows] == [
        ("ADT^A08", "V1", None),
        ("OMG^O19", None, "PL-G"),
    ]


def test_missing_source_object_is_a_permanent_failure(ctx: AppContext) -> None:
    handler = make_hl7_handler(ctx, decoder=_failing)
    failures = handler([ClaimedJob(99, "hl7", {"source_object_id": 12345}, 1, 5)])
    assert failures is not None and getattr(failures[99], "retryable", True) is False
