"""A viewer's report PDF never holds the write lock that every C-STORE and HL7 message waits for."""

from __future__ import annotations

import importlib
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from ecgcad.api.app import create_app
from ecgcad.context import AppContext
from ecgcad.db.migrate import upgrade
from ecgcad.db.models import EcgRecord, Result
from ecgcad.listeners.dicom_scp import TWELVE_LEAD_ECG_WAVEFORM_STORAGE, DicomScp
from tests.api.conftest import bearer, make_tokens
from tests.helpers import drain
from tests.listeners.conftest import ECG_FILE, make_settings

#: The SCU waits this long for a C-STORE response: longer than the 30 s busy timeout a stalled writer sees.
SCU_TIMEOUT_S = 60


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[AppContext, DicomScp]]:
    """An embedded service with the demonstration model, its DICOM SCP on loopback, and no destinations."""
    from ecgcad.model.demo import load_demo_model
    from ecgcad.model.predictor import TorchPredictor

    settings = make_settings(tmp_path / "svc", reports={"explanation_steps": 1})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url)
    ctx = AppContext.from_settings(settings)
    ctx.set_predictor(TorchPredictor(load_demo_model(), device="cpu", max_batch=4))
    scp = DicomScp(ctx)
    scp.start()
    yield ctx, scp
    scp.stop()
    ctx.close()


def _c_store(address: tuple[str, int], ds: pydicom.Dataset) -> int | None:
    """The C-STORE response status (``None``: no response, the association was aborted)."""
    ae = AE(ae_title="CART")
    ae.add_requested_context(TWELVE_LEAD_ECG_WAVEFORM_STORAGE, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SCU_TIMEOUT_S
    assoc = ae.associate(*address, ae_title="ECGCAD")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def _ecg_with_new_uid() -> pydicom.Dataset:
    ds = pydicom.dcmread(ECG_FILE)
    ds.SOPInstanceUID = generate_uid()
    return ds


def test_report_pdf_renders_while_a_concurrent_cstore_is_acked_within_a_second(
    service: tuple[AppContext, DicomScp], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, scp = service
    assert _c_store(scp.address, _ecg_with_new_uid()) == 0x0000
    drain(ctx, timeout=120.0)
    with ctx.db.read_session() as s:
        ecg_id = s.execute(select(EcgRecord.id)).scalar_one()
        result = s.execute(select(Result).where(Result.ecg_id == ecg_id)).scalar_one()
        assert result.scorable and result.explanations is None  # the PDF computes them
    viewer = make_tokens(ctx).viewer

    # Hold the report in the middle of its build (computing the explanations) until the C-STORE is over.
    explain_module = importlib.import_module(
        "ecgcad.model.explain"
    )  # the module, even when `ecgcad.model.explain` names the function

    real_explain = explain_module.explain
    building, stored = threading.Event(), threading.Event()

    def held_explain(*args: Any, **kwargs: Any) -> dict[str, Any]:
        building.set()
        stored.wait(SCU_TIMEOUT_S)
        return real_explain(*args, **kwargs)

    monkeypatch.setattr(explain_module, "explain", held_explain)
    response: dict[str, Any] = {}

    def get_report() -> None:
        with TestClient(create_app(ctx)) as client:
            r = client.get(f"/api/v1/ecgs/{ecg_id}/report.pdf", headers=bearer(viewer))
            response.update(status=r.status_code, body=r.content)

    viewer_thread = threading.Thread(target=get_report)
    viewer_thread.start()
    try:
        assert building.wait(60), "the report build never reached the explanations"
        started = time.monotonic()
        status = _c_store(scp.address, _ecg_with_new_uid())
        acked_after = time.monotonic() - started
    finally:
        stored.set()
        viewer_thread.join(2 * SCU_TIMEOUT_S)
    assert status == 0x0000, f"the C-STORE was not acknowledged (status {status})"
    assert acked_after < 1.0, f"the C-STORE waited {acked_after:.1f} s for the report's transaction"
    assert response["status"] == 200 and response["body"].startswith(b"%PDF-")
    # The explanations were cached after the read, so the next PDF does not compute them again.
    with ctx.db.read_session() as s:
        cached = s.get(Result, result.id)
        assert cached is not None and cached.explanations is not None
        top = cached.explanations["vessels"]["rca"]["top_windows"]
        assert top and np.isfinite([w["score"] for w in top]).all()
