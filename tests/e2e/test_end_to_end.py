"""End to end: `ecgcad serve` as a subprocess, a real ECG in by storescu (and inside an HL7 ORU), the SR and
PDF out to dcmtk storescp, the ORU out to an MLLP sink, and their content checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from tests.peers import MllpSink, StoreScp, free_port, require, wait_for

REAL_ECG = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
VESSEL_SITES = {"13647002": "rca", "3227004": "lm", "59438005": "lad", "57396003": "lcx"}
THRESHOLDS = {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}


class Running:
    def __init__(self, tmp: Path, delivery_processes: int = 0) -> None:
        self.pacs = StoreScp(tmp / "pacs")
        self.ehr = MllpSink()
        self.dicom_port, self.hl7_port, self.api_port = free_port(), free_port(), free_port()
        self.config = tmp / "ecgcad.toml"
        self.config.write_text(
            f"""
data_dir = "{tmp / "var"}"
[dicom]
port = {self.dicom_port}
[hl7]
port = {self.hl7_port}
[api]
port = {self.api_port}
[model]
max_wait_ms = 5
[queue]
delivery_processes = {delivery_processes}
[[destinations]]
name = "pacs"
kind = "dicom"
host = "127.0.0.1"
port = {self.pacs.port}
ae_title = "PACS"
send = ["sr", "pdf"]
[[destinations]]
name = "ehr"
kind = "hl7"
host = "127.0.0.1"
port = {self.ehr.port}
"""
        )
        self.log = (tmp / "serve.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ecgcad", "serve", "--config", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.log_path = tmp / "serve.log"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError("ecgcad serve exited:\n" + self.log_path.read_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2) as r:
                    return json.loads(r.read())["ready"] is True
            except OSError:
                return False

        wait_for(ready, 120, "ecgcad serve to be ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.pacs.stop()
        self.ehr.stop()
        self.log.close()


@pytest.fixture(params=[0, 1], ids=["delivery-threads", "delivery-process"])
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    require("storescu")
    r = Running(tmp_path, delivery_processes=request.param)
    try:
        yield r
    finally:
        r.stop()
    assert r.proc.returncode == 0, r.log_path.read_text()[-3000:]


SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


def _received(running: Running, *classes: str) -> dict[str, pydicom.Dataset] | None:
    """The objects of ``classes`` fully received by the PACS stand-in, or None while any is missing."""
    found: dict[str, pydicom.Dataset] = {}
    for f in running.pacs.files():
        try:
            ds = pydicom.dcmread(f)  # storescp may still be writing a file: retry on the next poll
        except Exception:  # noqa: BLE001
            continue
        if ds.SOPClassUID in classes:
            found[ds.SOPClassUID] = ds
    return found if all(c in found for c in classes) else None


def _check_sr(sr: pydicom.Dataset, source: pydicom.Dataset) -> dict[str, tuple[float, str]]:
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID"):
        assert sr.get(keyword) == source.get(keyword), keyword
    assert (
        sr.VerificationFlag == "UNVERIFIED"
        and sr.PreliminaryFlag == "PRELIMINARY"
        and sr.CompletionFlag == "COMPLETE"
    )
    found: dict[str, tuple[float, str]] = {}
    text_values: list[str] = []

    def walk(items) -> list:  # type: ignore[no-untyped-def]
        out = []
        for item in items:
            out.append(item)
            out.extend(walk(item.get("ContentSequence", [])))
        return out

    for group in walk(sr.ContentSequence):
        if group.get("ValueType") == "TEXT":
            text_values.append(str(group.TextValue))
        if group.get("ValueType") != "CONTAINER" or "ContentSequence" not in group:
            continue
        site = prob = risk = None
        for item in group.ContentSequence:
            name = item.ConceptNameCodeSequence[0].CodeValue
            if name == "363698007":
                site = VESSEL_SITES.get(item.ConceptCodeSequence[0].CodeValue)
            elif item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                prob = float(item.MeasuredValueSequence[0].NumericValue)
            elif item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodeValue in (
                "15508007",
                "75976002",
            ):
                risk = item.ConceptCodeSequence[0].CodeValue
        if site and prob is not None and risk:
            found[site] = (prob, risk)
    assert set(found) == set(THRESHOLDS), found
    for vessel, (prob, risk) in found.items():
        assert risk == ("15508007" if prob >= THRESHOLDS[vessel] else "75976002"), (vessel, prob, risk)
    assert any("DEMONSTRATION MODEL" in t for t in text_values)
    return found


def _check_oru(msg: bytes, patient_id: str, sr_probs: dict[str, tuple[float, str]] | None = None) -> None:
    segments = [s.split("|") for s in msg.decode("utf-8").split("\r") if s]
    assert segments[0][8] == "ORU^R01^ORU_R01"
    pid = next(s for s in segments if s[0] == "PID")
    assert pid[3].split("^")[0] == patient_id
    nm = [s for s in segments if s[0] == "OBX" and s[2] == "NM"]
    assert len(nm) >= 4
    import re

    for obx in nm[:4]:
        # OBX-7 is the normal range, "<threshold"; OBX-8 is A when the probability is at or above it.
        prob, threshold, flag = float(obx[5]), float(re.sub(r"^[<>=]+", "", obx[7])), obx[8]
        assert flag == ("A" if prob >= threshold else "N")
    if sr_probs is not None:
        oru_probs = sorted(round(float(obx[5]), 4) for obx in nm[:4])
        assert oru_probs == sorted(round(p, 4) for p, _ in sr_probs.values())
    assert any("DEMONSTRATION MODEL" in "|".join(s) for s in segments if s[0] == "NTE")


def test_storescu_ecg_produces_validated_sr_pdf_and_oru(running: Running) -> None:
    env = {**os.environ, "TCP_NODELAY": "1"}
    out = subprocess.run(
        ["storescu", "-aec", "ECGCAD", "-aet", "CART1", "127.0.0.1", str(running.dicom_port), str(REAL_ECG)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    objs = wait_for(lambda: _received(running, SR_CLASS, PDF_CLASS), 120, "SR and PDF in storescp")
    wait_for(lambda: running.ehr.messages, 60, "ORU at the MLLP sink")
    source = pydicom.dcmread(REAL_ECG)
    sr, pdf = objs[SR_CLASS], objs[PDF_CLASS]
    probs = _check_sr(sr, source)
    assert pdf.PatientID == source.PatientID and bytes(pdf.EncapsulatedDocument).startswith(b"%PDF")
    _check_oru(running.ehr.messages[0], str(source.PatientID), probs)


def test_ecg_inside_an_hl7_oru_is_scored_and_reported(running: Running) -> None:
    from ecgcad.testing import ecg_writers

    message = ecg_writers.write_hl7_oru_ed(
        REAL_ECG.read_bytes(),
        "DICOM",
        patient_id="MRN-E2E",
        issuer_of_patient_id="HOSP",
        control_id="E2E0001",
    )
    from ecgcad.integration.transport.mllp import MllpSender

    outcome = MllpSender("127.0.0.1", running.hl7_port, timeout=30).send(message)
    assert outcome.delivered, outcome.response
    sr = wait_for(lambda: _received(running, SR_CLASS), 120, "SR in storescp")[SR_CLASS]
    assert sr.PatientID == "MRN-E2E"
    wait_for(lambda: running.ehr.messages, 60, "ORU at the MLLP sink")
    _check_oru(running.ehr.messages[0], "MRN-E2E")


@pytest.mark.parametrize("running", [0], indirect=True, ids=["delivery-threads"])
def test_storescu_pediatric_and_flat_ecgs_get_not_evaluated_sr_and_oru(
    running: Running, tmp_path: Path
) -> None:
    """Issue 16, item 2: a pediatric and a flat ECG were acknowledged (C-STORE Success) but got no report:
    every delivery failed "not-evaluated reason text must be 1–64 characters". Each gets its SR, PDF and
    ORU as "not evaluated: <reason>"."""
    import dataclasses

    import numpy as np

    from ecgcad.integration.formats.ecg import LEADS
    from ecgcad.testing import ecg_writers as w

    cases = {
        "MRN-CHILD": (None, {"patient_age": "008Y"}, "UNDERAGE", "patient below the intended-use age"),
        "MRN-FLAT": (
            np.zeros((len(LEADS), 5000), dtype=np.float32),
            {},
            "FLAT_LEAD",
            "flat or disconnected lead",
        ),
    }
    files = []
    for n, (patient_id, (samples, ids, _, _)) in enumerate(cases.items(), start=1):
        identifiers = dataclasses.replace(
            w.TEST_IDENTIFIERS,
            patient_id=patient_id,
            study_instance_uid=f"1.2.826.0.1.3680043.10.543.16.{n}",
            series_instance_uid=f"1.2.826.0.1.3680043.10.543.16.{n}.1",
            sop_instance_uid=f"1.2.826.0.1.3680043.10.543.16.{n}.1.1",
            **ids,
        )
        path = tmp_path / f"{patient_id}.dcm"
        path.write_bytes(
            w.build_dicom_ecg(samples, 500.0 if samples is not None else None, identifiers=identifiers)
        )
        files.append(str(path))
    out = subprocess.run(
        ["storescu", "-aec", "ECGCAD", "-aet", "CART1", "127.0.0.1", str(running.dicom_port), *files],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert out.returncode == 0, out.stderr

    def reports() -> dict[str, list[pydicom.Dataset]] | None:
        by_patient: dict[str, list[pydicom.Dataset]] = {}
        for f in running.pacs.files():
            try:
                ds = pydicom.dcmread(f)
            except Exception:  # noqa: BLE001 - storescp may still be writing it
                continue
            by_patient.setdefault(str(ds.PatientID), []).append(ds)
        complete = all(len(by_patient.get(p, [])) == 2 for p in cases) and len(running.ehr.messages) >= 2
        return by_patient if complete else None

    received = wait_for(reports, 120, "an SR and a PDF per ECG in storescp, and two ORUs")
    for patient_id, (_, _, code, text) in cases.items():
        (sr,) = [ds for ds in received[patient_id] if ds.SOPClassUID == SR_CLASS]
        items = sr.ContentSequence[-1].ContentSequence
        (reason,) = [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "NOT-EVALUATED"]
        concept = reason.ConceptCodeSequence[0]
        assert (concept.CodeValue, concept.CodeMeaning) == (code, text)
        (oru,) = [m for m in running.ehr.messages if f"|{patient_id}^".encode() in m]
        assert f"|NOT-EVAL^Reason not evaluated^99ECGCAD||{code}^{text}^99ECGCAD|".encode() in oru
        assert b"|IND|" in oru
