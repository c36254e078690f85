"""The delivery sender pool against real peers: senders (and their open connections) reused across attempts,
one per thread, closed with the context."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from ecgcad.config import DestinationSettings, load_settings
from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.db.models import Delivery
from ecgcad.integration.reports.oru import build_oru
from ecgcad.integration.reports.sr import build_stenosis_sr
from ecgcad.integration.transport.dicom import DicomStoreSender
from ecgcad.integration.transport.mllp import MllpSender
from ecgcad.integration.transport.senders import SendOutcome
from ecgcad.pipeline.delivery import SenderPool, checkout_sender, sender_pool
from ecgcad.testing.fake_predictor import FakePredictor
from tests.helpers import drain
from tests.peers import StoreScp, wait_for
from tests.pipeline.conftest import ingest_real
from tests.results.conftest import make_input
from tests.results.test_senders import MllpSink, _copies, _with_control_id


@pytest.fixture(scope="module")
def oru(ecg_dataset, ecg_bytes) -> bytes:
    return build_oru(make_input(ecg_dataset, ecg_bytes), control_id="P1")


@pytest.fixture(scope="module")
def sr(ecg_dataset, ecg_bytes) -> pydicom.Dataset:
    return build_stenosis_sr(make_input(ecg_dataset, ecg_bytes))


@pytest.fixture
def sink() -> Iterator[MllpSink]:
    s = MllpSink("AA", per_connection=None)
    try:
        yield s
    finally:
        s.close()


def _ehr(port: int, **over: object) -> DestinationSettings:
    fields: dict[str, object] = {
        "name": "ehr",
        "kind": "hl7",
        "port": port,
        "timeout_s": 5,
        "keep_open_s": 30,
    }
    return DestinationSettings.model_validate(fields | over)


def _pacs(port: int, **over: object) -> DestinationSettings:
    fields: dict[str, object] = {"name": "pacs", "kind": "dicom", "port": port, "ae_title": "PACS"}
    return DestinationSettings.model_validate(fields | {"timeout_s": 5, "keep_open_s": 30} | over)


def test_pool_reuses_one_sender_and_its_connection(sink, oru):
    pool = SenderPool()
    dest = _ehr(sink.port)
    used = []
    for i in range(4):
        with pool.checkout(dest, calling_ae="ECGCAD") as sender:
            used.append(sender)
            assert sender.send(_with_control_id(oru, f"P{i}")).delivered
    assert isinstance(used[0], MllpSender) and all(s is used[0] for s in used)
    assert sink.connections == 1 and len(sink.received) == 4
    pool.close()
    wait_for(lambda: sink.closed == 1, 2, "the pooled connection to be closed")


def test_pool_lends_each_concurrent_attempt_its_own_sender(pyscp, sr):
    pool = SenderPool()
    dest = _pacs(pyscp.port)
    first, second, third = _copies(sr, 3)
    with pool.checkout(dest, calling_ae="ECGCAD") as a, pool.checkout(dest, calling_ae="ECGCAD") as b:
        assert isinstance(a, DicomStoreSender) and a is not b
        assert a.send(first).delivered and b.send(second).delivered
        assert pool.idle_count("pacs") == 0
    assert pool.idle_count("pacs") == 2 and pyscp.established == 2
    with pool.checkout(dest, calling_ae="ECGCAD") as c:
        assert c is a  # the most recently returned sender with an open association; b idles out
        assert c.send(third).delivered
    assert pyscp.established == 2
    pool.close()
    wait_for(lambda: pyscp.released == 2, 2, "both associations released")


def test_changed_destination_settings_get_a_new_sender(sink, oru):
    pool = SenderPool()
    with pool.checkout(_ehr(sink.port), calling_ae="ECGCAD") as old:
        assert old.send(_with_control_id(oru, "P1")).delivered
    with pool.checkout(_ehr(sink.port, keep_open_s=0), calling_ae="ECGCAD") as new:
        assert new is not old
        wait_for(lambda: sink.closed == 1, 2, "the old sender's connection closed")
        assert new.send(_with_control_id(oru, "P2")).delivered
    assert sink.connections == 2
    wait_for(lambda: sink.closed == 2, 2, "keep_open_s=0: closed after the message")
    pool.close()


def test_returned_sender_gives_way_to_one_connecting_to_a_single_association_peer(tmp_path, sr):
    pacs = StoreScp(tmp_path / "pacs")  # dcmtk storescp without --fork: one association at a time
    pool = SenderPool()
    dest = _pacs(pacs.port)
    first, second = _copies(sr, 2)
    outcome: list[SendOutcome] = []
    try:
        with pool.checkout(dest, calling_ae="ECGCAD") as a:
            assert a.send(first).delivered

            def other() -> None:
                with pool.checkout(dest, calling_ae="ECGCAD") as b:
                    outcome.append(b.send(second))

            thread = threading.Thread(target=other)
            thread.start()
            # The other sender waits for storescp, which serves a's association as long as it is open.
            wait_for(lambda: any(getattr(s, "connecting", False) for s in pool._lent["pacs"]), 2, "b")
            started = time.monotonic()
        # a came back while b was connecting: a releases its association, storescp answers b.
        thread.join(10)
        assert outcome == [SendOutcome.ok("status 0x0000", 0)]
        assert time.monotonic() - started < 2  # not b's 5-s association timeout
        assert len(pacs.files()) == 2
    finally:
        pool.close()
        pacs.stop()


def test_context_close_closes_every_pooled_connection(tmp_path, sink, pyscp, oru, sr):
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "var"),
        destinations=[_pacs(pyscp.port).model_dump(), _ehr(sink.port).model_dump()],
    )
    ctx = AppContext.from_settings(settings)
    try:
        pacs, ehr = settings.destination("pacs"), settings.destination("ehr")
        for i, obj in enumerate(_copies(sr, 2)):
            with checkout_sender(ctx, pacs) as sender:
                assert sender.send(obj).delivered
            with checkout_sender(ctx, ehr) as sender:
                assert sender.send(_with_control_id(oru, f"P{i}")).delivered
        assert ctx.sender_pool is sender_pool(ctx)
        assert pyscp.established == 1 and sink.connections == 1
        assert pyscp.released == 0 and sink.closed == 0
    finally:
        ctx.close()
    wait_for(lambda: pyscp.released == 1 and sink.closed == 1, 2, "the context to close its connections")
    # After close, a delivery still works, on a connection of its own that is not kept.
    with checkout_sender(ctx, settings.destination("ehr")) as sender:
        assert sender.send(_with_control_id(oru, "P9")).delivered
    wait_for(lambda: sink.closed == 2, 2, "the connection after close() to be closed")


def test_sender_factory_is_used_as_before(tmp_path):
    from ecgcad.testing.fake_senders import FakeSender

    settings = load_settings(None, data_dir=str(tmp_path / "var"), destinations=[_ehr(2575).model_dump()])
    ctx = AppContext.from_settings(settings)
    fakes = [FakeSender(), FakeSender()]
    ctx.sender_factory = lambda dest: fakes.pop(0)
    try:
        with checkout_sender(ctx, settings.destination("ehr")) as one:
            pass
        with checkout_sender(ctx, settings.destination("ehr")) as two:
            pass
        assert one is not two and not fakes and ctx.sender_pool is None
    finally:
        ctx.close()


def test_deliveries_of_one_result_share_the_pooled_association(tmp_path, sink, pyscp):
    settings = load_settings(
        None,
        data_dir=str(tmp_path / "var"),
        queue={"backoff_base_s": 0.05, "backoff_max_s": 0.1},
        destinations=[_pacs(pyscp.port, send=["sr", "pdf"]).model_dump(), _ehr(sink.port).model_dump()],
    )
    upgrade(settings)
    ctx = AppContext.from_settings(settings)
    try:
        ctx.set_predictor(FakePredictor(fixed={"rca": 0.4, "lm": 0.005, "lad": 0.1, "lcx": 0.2}))
        ingest_real(ctx)
        drain(ctx)
        with ctx.db.session() as s:
            states = sorted((d.object_kind, d.state) for d in s.execute(select(Delivery)).scalars())
        assert states == [("oru", "sent"), ("pdf", "sent"), ("sr", "sent")]
        assert len(pyscp.stored) == 2 and pyscp.established == 1  # SR and PDF on one association
        assert sink.connections == 1 and pyscp.released == 0
        spool = Path(ctx.settings.data_dir) / "spool"
        assert spool.is_dir() and (spool.stat().st_mode & 0o777) == 0o700
        assert not any(spool.iterdir()), "objects are staged in the data folder and removed after sending"
    finally:
        ctx.close()
    wait_for(lambda: pyscp.released == 1 and sink.closed == 1, 2, "ctx.close() to close both")
