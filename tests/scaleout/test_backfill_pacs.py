"""PACS backfill and catch-up against Orthanc holding ECGs that were never pushed to us."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ecgcad.context import AppContext
from ecgcad.db.models import EcgRecord, KvState, Result, SourceObject
from ecgcad.listeners.dicom_scp import DicomScp
from ecgcad.pipeline.backfill import backfill_pacs, pacs_catch_up
from tests.helpers import drain
from tests.peers import wait_for
from tests.scaleout.conftest import Orthanc, ecg_copies

pytestmark = pytest.mark.peers


def _results(ctx: AppContext) -> int:
    with ctx.db.session() as s:
        return int(s.execute(select(func.count()).select_from(Result)).scalar_one())


def test_cmove_backfill_scores_ecgs_that_exist_only_in_orthanc(
    make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx()
    scp = DicomScp(ctx)
    scp.start()
    host, port = scp.address
    orthanc = Orthanc(tmp_path / "orthanc", {"ecgcad": ["ECGCAD", host, port]})
    try:
        ctx.settings.pacs_sources = [  # type: ignore[assignment]
            {"name": "orthanc", "port": orthanc.dicom_port, "ae_title": "ORTHANC", "timeout_s": 20}
        ]
        for data in ecg_copies(3, study_date="20240105"):
            orthanc.upload(data)
        orthanc.upload(ecg_copies(1, study_date="20200101")[0])  # older than --since
        report = backfill_pacs(ctx, "orthanc", since=dt.date(2024, 1, 1))
        assert report.seen == 3 and report.queued == 3
        wait_for(lambda: scp.stored >= 3, 30, "three C-MOVE sub-operations stored by our SCP")
        drain(ctx)
        assert _results(ctx) == 3
        again = backfill_pacs(ctx, "orthanc", since=dt.date(2024, 1, 1))
        assert again.seen == 3 and again.skipped == 3 and again.queued == 0, (
            "what is stored is not retrieved again"
        )
    finally:
        orthanc.stop()
        scp.stop()


def test_cget_catch_up_retrieves_unseen_instances_and_keeps_a_marker(
    make_ctx: Callable[..., AppContext], tmp_path: Path
) -> None:
    ctx = make_ctx()
    orthanc = Orthanc(tmp_path / "orthanc", {})
    try:
        ctx.settings.pacs_sources = [  # type: ignore[assignment]
            {"name": "orthanc", "port": orthanc.dicom_port, "ae_title": "ORTHANC", "retrieve": "get"}
        ]
        today = dt.datetime.now(dt.UTC)
        for data in ecg_copies(2, study_date=f"{today:%Y%m%d}"):
            orthanc.upload(data)
        report = pacs_catch_up(ctx, "orthanc")
        assert report.queued == 2
        with ctx.db.session() as s:
            kinds = s.execute(select(SourceObject.kind)).scalars().all()
            assert kinds == ["pacs", "pacs"]
            marker = s.get(KvState, "pacs:orthanc:last_run")
            assert marker is not None and marker.value["queued"] == 2
        drain(ctx)
        assert _results(ctx) == 2
        orthanc.upload(ecg_copies(1, study_date=f"{today:%Y%m%d}")[0])
        with ctx.db.session() as s:  # as the scheduler does; the worker's registered handler runs it
            ctx.queue.defer(s, "pacs_catch_up", {"source": "orthanc"}, dedupe_key="sched:pacs:orthanc:1")
        drain(ctx)
        assert _results(ctx) == 3
        with ctx.db.session() as s:
            assert s.execute(select(func.count()).select_from(EcgRecord)).scalar_one() == 3
    finally:
        orthanc.stop()
