"""Shared fixtures for the scale-out tests: an embedded context, an Orthanc holding ECGs."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from ecgcad.config import load_settings
from ecgcad.context import AppContext
from ecgcad.testing.fake_predictor import FakePredictor
from tests import helpers
from tests.peers import free_port

REAL_ECG = Path(pydicom.data.get_testdata_file("waveform_ecg.dcm"))


def ecg_copies(n: int, *, study_date: str = "20240105") -> list[bytes]:
    """``n`` copies of pydicom's real ECG, each a new study/series/instance (new UIDs)."""
    out = []
    for _ in range(n):
        ds = pydicom.dcmread(REAL_ECG)
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = study_date
        from io import BytesIO

        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


@pytest.fixture
def make_ctx(tmp_path: Path) -> Iterator[Callable[..., AppContext]]:
    """An embedded, migrated context with a fake predictor (settings overrides as keywords)."""
    made: list[AppContext] = []

    def factory(**overrides: Any) -> AppContext:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / f"svc{len(made)}"),
            "dicom": {"port": 0, "network_timeout_s": 10},
            "queue": {"min_free_disk_mb": 0, "backoff_base_s": 0.05, "backoff_max_s": 0.1},
        }
        for key, value in overrides.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
        ctx = helpers.make_ctx(
            settings=load_settings(None, **base),
            predictor=FakePredictor(fixed={"rca": 0.4, "lm": 0.0, "lad": 0.1, "lcx": 0.2}),
        )
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        ctx.close()


class Orthanc:
    """Orthanc on loopback with its own ports and storage; ``upload`` via its REST API."""

    def __init__(self, folder: Path, modalities: dict[str, list[Any]]) -> None:
        binary = Path("/usr/sbin/Orthanc")
        if not binary.exists():
            pytest.skip("Orthanc is not installed")
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": "ecgcad-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": modalities,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowFind": True,
            "UnknownSopClassAccepted": True,
        }
        folder.mkdir(parents=True, exist_ok=True)
        cfg = folder / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(binary), str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/system", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail("Orthanc did not start")
                time.sleep(0.2)

    def upload(self, data: bytes) -> str:
        req = urllib.request.Request(f"{self.base}/instances", data=data, method="POST")
        return str(json.loads(urllib.request.urlopen(req, timeout=10).read())["ID"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
