"""Fixtures for the API tests: an application context on a migrated database, seeded ECGs, results and
deliveries, one token per role, and stand-ins for the pipeline actions (resend, rescore, report PDF)."""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette >= 1.0 warns that its TestClient will move from httpx to httpx2; the client works as is.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from ecgcad.api.app import create_app
from ecgcad.api.auth import create_token
from ecgcad.config import Settings
from ecgcad.context import AppContext
from ecgcad.db.models import Delivery, EcgRecord, ModelVersion, Result, SourceObject, utcnow
from ecgcad.db.session import Database
from ecgcad.errors import QueueError
from ecgcad.pipeline import actions
from tests import helpers

PATIENT_FLAGGED = "PAT-0001"
PATIENT_LOW = "PAT-0002"
PATIENT_NAME = "DOE^JANE"
THRESHOLDS = {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}


def ecg_dicom_bytes() -> bytes:
    """pydicom's real Mortara 12-lead ECG, as bytes (for a tracing the dashboard can draw)."""
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file("waveform_ecg.dcm"))).read_bytes()


@dataclass
class Seeded:
    """Ids of the seeded rows."""

    flagged_ecg: int
    low_ecg: int
    unscored_ecg: int
    not_evaluated_ecg: int
    failed_delivery: int
    sent_delivery: int
    model_version: str
    ecg_ids: list[int] = field(default_factory=list)


def _source(session: Any, store: Any, data: bytes, n: int) -> SourceObject:
    sha, path = store.put(data)
    obj = SourceObject(
        sha256=sha, size=len(data), storage_path=str(path), kind="dicom", sop_instance_uid=f"1.2.3.{n}"
    )
    session.add(obj)
    session.flush()
    return obj


def _ecg(session: Any, obj: SourceObject, n: int, patient_id: str, **kw: Any) -> EcgRecord:
    row = EcgRecord(
        source_object_id=obj.id,
        format="dicom",
        patient_id=patient_id,
        issuer_of_patient_id="HOSP",
        patient_name=PATIENT_NAME,
        patient_birth_date="19600101",
        patient_sex="F",
        accession_number=f"ACC{n:04d}",
        study_instance_uid=f"1.2.826.0.1.{n}",
        sop_instance_uid=f"1.2.826.0.1.{n}.1",
        decode_status="decoded",
        **kw,
    )
    session.add(row)
    session.flush()
    return row


def _result(
    session: Any, ecg: EcgRecord, mv: ModelVersion, probs: dict[str, float] | None, **kw: Any
) -> Result:
    flags = {v: (probs is not None and probs[v] >= THRESHOLDS[v]) for v in THRESHOLDS}
    r = Result(
        ecg_id=ecg.id,
        model_version_id=mv.id,
        scorable=probs is not None,
        p_rca=probs and probs["rca"],
        p_lm=probs and probs["lm"],
        p_lad=probs and probs["lad"],
        p_lcx=probs and probs["lcx"],
        flag_rca=flags["rca"],
        flag_lm=flags["lm"],
        flag_lad=flags["lad"],
        flag_lcx=flags["lcx"],
        any_flagged=any(flags.values()),
        thresholds=THRESHOLDS,
        model_name=mv.name,
        model_version=mv.version,
        checkpoint_sha256=mv.checkpoint_sha256,
        demonstration=True,
        **kw,
    )
    session.add(r)
    session.flush()
    return r


def seed(ctx: AppContext) -> Seeded:
    """Four ECGs: flagged (RCA), low risk, not evaluated, unscored; deliveries failed and sent."""
    data = ecg_dicom_bytes()
    with ctx.db.session() as s:
        mv = ModelVersion(name="ecgfounder-cad", version="demo-1", checkpoint_sha256="ab" * 32, role="active")
        s.add(mv)
        s.add(
            ModelVersion(name="ecgfounder-cad", version="demo-2", checkpoint_sha256="cd" * 32, role="shadow")
        )
        s.flush()
        old = utcnow() - dt.timedelta(days=3)
        e1 = _ecg(s, _source(s, ctx.store, data, 1), 1, PATIENT_FLAGGED, state="scored")
        e2 = _ecg(
            s, _source(s, ctx.store, data + b"\0\0", 2), 2, PATIENT_LOW, state="scored", received_at=old
        )
        e3 = _ecg(s, _source(s, ctx.store, data + b"\0\0\0\0", 3), 3, PATIENT_LOW, state="not_evaluated")
        e4 = _ecg(s, _source(s, ctx.store, data + b"\0" * 6, 4), 4, PATIENT_FLAGGED, state="queued")
        r1 = _result(s, e1, mv, {"rca": 0.42, "lm": 0.004, "lad": 0.09, "lcx": 0.10})
        r2 = _result(s, e2, mv, {"rca": 0.02, "lm": 0.001, "lad": 0.03, "lcx": 0.05})
        _result(s, e3, mv, None, reason_code="too_short", reason_text="recording shorter than 10 s")
        d_failed = Delivery(
            result_id=r1.id,
            destination="pacs",
            object_kind="sr",
            state="failed",
            attempts=10,
            last_response="0xA700 out of resources",
        )
        d_sent = Delivery(
            result_id=r1.id,
            destination="ehr",
            object_kind="oru",
            state="sent",
            attempts=1,
            last_response="AA",
            sent_at=utcnow(),
        )
        d_low = Delivery(result_id=r2.id, destination="pacs", object_kind="sr", state="sent", attempts=1)
        s.add_all([d_failed, d_sent, d_low])
        s.flush()
        return Seeded(
            e1.id, e2.id, e4.id, e3.id, d_failed.id, d_sent.id, mv.version, [e1.id, e2.id, e3.id, e4.id]
        )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings under tmp_path with two destinations."""
    return Settings(
        data_dir=tmp_path / "var",
        api={"port": 0},
        destinations=[
            {"name": "pacs", "kind": "dicom", "port": 11113, "ae_title": "PACS"},
            {"name": "ehr", "kind": "hl7", "port": 2576},
        ],
    )


def make_ctx(settings: Settings, url: str | None = None) -> AppContext:
    """A context on ``url`` (default: the embedded SQLite under data_dir), migrated to head."""
    if url is not None:
        settings = settings.model_copy()
        settings.database_url = url  # type: ignore[assignment]  # validated on assignment
    return helpers.make_ctx(settings=settings)


@pytest.fixture
def ctx(settings: Settings) -> Iterator[AppContext]:
    """An application context on SQLite."""
    c = make_ctx(settings)
    yield c
    c.close()


@pytest.fixture
def any_ctx(settings: Settings, db: Database) -> Iterator[AppContext]:
    """An application context on each engine (SQLite and a real PostgreSQL)."""
    c = make_ctx(settings, db.url)
    yield c
    c.close()


@dataclass
class Tokens:
    admin: str
    operator: str
    viewer: str

    def for_role(self, role: str) -> str:
        return str(getattr(self, role))


def make_tokens(ctx: AppContext) -> Tokens:
    with ctx.db.session() as s:
        return Tokens(
            admin=create_token(s, "alice-admin", "admin"),
            operator=create_token(s, "oscar-operator", "operator"),
            viewer=create_token(s, "victor-viewer", "viewer"),
        )


@pytest.fixture
def seeded(ctx: AppContext) -> Seeded:
    return seed(ctx)


@pytest.fixture
def tokens(ctx: AppContext) -> Tokens:
    return make_tokens(ctx)


@dataclass
class ActionCalls:
    """What the stand-in pipeline actions were asked to do."""

    calls: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    fail_with: BaseException | None = None


@pytest.fixture
def stand_in_actions(monkeypatch: pytest.MonkeyPatch, ctx: AppContext) -> ActionCalls:
    """Replace the pipeline actions with stand-ins that record their calls (resend marks the delivery pending)."""
    record = ActionCalls()

    def resend_delivery(
        c: Any, delivery_id: int, *, user: str, role: str, address: str | None
    ) -> dict[str, Any]:
        record.calls.append(("resend", delivery_id, {"user": user, "role": role, "address": address}))
        if record.fail_with is not None:
            raise record.fail_with
        with c.db.session() as s:
            d = s.get(Delivery, delivery_id)
            if d is None:
                raise QueueError(f"no delivery {delivery_id}")
            d.state, d.attempts = "pending", 0
        return {"delivery_id": delivery_id, "state": "pending"}

    def rescore_ecg(c: Any, ecg_id: int, *, user: str, role: str, address: str | None) -> dict[str, Any]:
        record.calls.append(("rescore", ecg_id, {"user": user, "role": role, "address": address}))
        if record.fail_with is not None:
            raise record.fail_with
        return {"ecg_id": ecg_id, "job_id": 99, "state": "queued"}

    def report_pdf(c: Any, ecg_id: int) -> bytes:
        record.calls.append(("report", ecg_id, {}))
        if record.fail_with is not None:
            raise record.fail_with
        return b"%PDF-1.4\n% stand-in report\n%%EOF\n"

    monkeypatch.setattr(actions, "resend_delivery", resend_delivery)
    monkeypatch.setattr(actions, "rescore_ecg", rescore_ecg)
    monkeypatch.setattr(actions, "report_pdf", report_pdf)
    return record


@pytest.fixture
def client(ctx: AppContext) -> Iterator[TestClient]:
    """An in-process client of the app (client address ``testclient``)."""
    with TestClient(create_app(ctx)) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_field(html: str) -> str:
    """The value of the first ``csrf_token`` hidden field of a dashboard page."""
    found = re.search(r'name="csrf_token" value="([^"]*)"', html)
    assert found is not None, "the page has no csrf_token field"
    return found.group(1)


def dashboard_login(client: TestClient, token: str) -> Any:
    """Log in through the login form as a browser would (its CSRF field and cookie); the POST's response."""
    page = client.get("/login")
    return client.post(
        "/login", data={"token": token, "csrf_token": csrf_field(page.text)}, follow_redirects=False
    )
