"""The pipeline tests' context (fake predictor and senders on two destinations) and their shared steps."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.db.models import Delivery, Result
from ecgcad.integration.formats.readers import decode
from ecgcad.jobs.worker import Worker
from ecgcad.pipeline.handlers import register_handlers
from ecgcad.testing.fake_predictor import FakePredictor
from ecgcad.testing.fake_senders import FakeSender
from tests.helpers import make_ctx

FIXED = {"rca": 0.40, "lm": 0.005, "lad": 0.10, "lcx": 0.20}
REAL_ECG = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))


def dicom_of(payload: object) -> Dataset:
    """A delivered SR / PDF: Part 10 bytes (Explicit VR Little Endian), decoded."""
    assert isinstance(payload, bytes)
    ds = pydicom.dcmread(io.BytesIO(payload))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    return ds


#: A PACS taking SR and PDF, and an EHR taking the ORU (both fake senders: ``ctx.senders[name].delivered``).
DESTINATIONS: list[dict[str, Any]] = [
    {
        "name": "pacs",
        "kind": "dicom",
        "host": "127.0.0.1",
        "port": 11113,
        "ae_title": "PACS",
        "send": ["sr", "pdf"],
    },
    {"name": "ehr", "kind": "hl7", "host": "127.0.0.1", "port": 2576, "max_attempts": 3},
]


def fake_context(data_dir: Path, *, database_url: str = "", **queue: Any) -> AppContext:
    """A migrated context with the fixed fake model (a demonstration model) and fake senders for
    :data:`DESTINATIONS`, fast backoff; ``queue`` adds ``[queue]`` settings."""
    settings = load_settings(
        None,
        data_dir=str(data_dir),
        database_url=database_url,
        queue={"backoff_base_s": 0.05, "backoff_max_s": 0.1, **queue},
        destinations=DESTINATIONS,
    )
    context = make_ctx(settings=settings, predictor=FakePredictor(fixed=FIXED, demonstration=True))
    context.senders = {"pacs": FakeSender(), "ehr": FakeSender()}  # type: ignore[attr-defined]
    context.sender_factory = lambda dest: context.senders[dest.name]  # type: ignore[attr-defined]
    return context


@pytest.fixture
def ctx(tmp_path: Path) -> AppContext:
    return fake_context(tmp_path / "var")


def pipeline_worker(ctx: AppContext) -> Worker:
    worker = Worker(ctx.queue)
    register_handlers(ctx, worker)
    return worker


def ingest_dicom(ctx: AppContext, data: bytes) -> int:
    """Ingest ``data`` as the DICOM listener does after a C-STORE (decoded, then committed); the ECG id."""
    ecg = decode(data)
    r = ctx.ingestor.ingest_dicom(
        data,
        sop_class_uid=ecg.identifiers.sop_class_uid,
        sop_instance_uid=ecg.identifiers.sop_instance_uid,
        ecg=ecg,
        calling_ae="CART",
        peer_address="127.0.0.1",
    )
    assert r.ecg_id is not None
    return r.ecg_id


def ingest_real(ctx: AppContext) -> int:
    """Ingest pydicom's real 12-lead ECG; the ECG id."""
    return ingest_dicom(ctx, REAL_ECG.read_bytes())


def reports_of(ctx: AppContext, ecg_id: int) -> tuple[Result, dict[str, tuple[str, Any]]]:
    """The ECG's result and its deliveries: kind → (state, the object the fake peer received)."""
    with ctx.db.session() as s:
        result = s.execute(select(Result).where(Result.ecg_id == ecg_id)).scalar_one()
        s.expunge(result)
        deliveries = s.execute(select(Delivery).where(Delivery.result_id == result.id)).scalars().all()
        states = {d.object_kind: (d.state, d.object_uid) for d in deliveries}
    received: dict[str, tuple[str, Any]] = {}
    for kind, (state, uid) in states.items():
        if kind == "oru":
            sent = [m for m in ctx.senders["ehr"].delivered if f"|{uid}|".encode() in m]  # type: ignore[attr-defined]
        else:
            sent = [d for d in map(dicom_of, ctx.senders["pacs"].delivered) if d.SOPInstanceUID == uid]  # type: ignore[attr-defined]
        received[kind] = (state, sent[0] if sent else None)
    return result, received


def not_evaluated_code(sr: pydicom.Dataset) -> str:
    items = sr.ContentSequence[-1].ContentSequence
    (item,) = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "NOT-EVALUATED"]
    return str(item.ConceptCodeSequence[0].CodeValue)


def assert_processing_error_reported(ctx: AppContext, ecg_id: int) -> None:
    """The ECG's result is "not evaluated: processing error", and its SR, PDF and ORU were all sent so."""
    result, received = reports_of(ctx, ecg_id)
    assert not result.scorable and result.reason_code == "processing_error"
    assert {kind: state for kind, (state, _) in received.items()} == {
        "sr": "sent",
        "pdf": "sent",
        "oru": "sent",
    }
    assert not_evaluated_code(received["sr"][1]) == "PROCESSING_ERROR"
    assert b"PROCESSING_ERROR^processing error^99ECGCAD" in received["oru"][1]
