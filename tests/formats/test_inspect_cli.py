"""``ecgcad inspect``: the contract used by tests outside the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.integration.formats.signal import canonical_window
from ecgcad.testing import ecg_writers as w

runner = CliRunner()
JSON_KEYS = {
    "format",
    "sampling_rate",
    "duration_s",
    "leads",
    "derived_leads",
    "scorable",
    "reasons",
    "patient_id",
    "accession_number",
    "study_instance_uid",
}


@pytest.fixture
def real_file(tmp_path: Path, real_bytes: bytes) -> Path:
    path = tmp_path / "waveform_ecg.dcm"
    path.write_bytes(real_bytes)
    return path


def test_inspect_real_dicom_prints_the_summary(real_file):
    result = runner.invoke(app, ["inspect", str(real_file)])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in (
        "dicom",
        "1.2.840.10008.5.1.4.1.1.9.1.1",
        "1000 Hz",
        "10.00 s",
        "V6",
        "uV",
        "scorable:",
        "642341",
        "03028041970546",
    ):
        assert expected in out


def test_inspect_json_has_the_contract_keys(real_file):
    result = runner.invoke(app, ["inspect", str(real_file), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert JSON_KEYS <= data.keys()
    assert data["format"] == "dicom" and data["sampling_rate"] == 1000.0 and data["duration_s"] == 10.0
    assert data["scorable"] is True and data["reasons"] == []
    assert data["patient_id"] == "642341"
    assert data["study_instance_uid"] == "1.3.76.13.65829.2.20130125082826.1072139.2"


def test_inspect_npy_writes_the_canonical_window(real_file, tmp_path, real):
    out = tmp_path / "x.npy"
    result = runner.invoke(app, ["inspect", str(real_file), "--npy", str(out)])
    assert result.exit_code == 0, result.output
    arr = np.load(out)
    assert arr.shape == (12, 5000) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, canonical_window(real).signal)


@pytest.mark.parametrize(
    "name, make, fmt, derived",
    [
        ("m.xml", lambda: w.write_muse_xml(), "muse", ["III", "aVR", "aVL", "aVF"]),
        ("a.xml", lambda: w.write_aecg_xml(), "aecg", []),
        ("e.hl7", lambda: w.write_hl7_oru_ed(w.real_dicom_ecg_bytes(), mllp=True), "hl7v2", []),
        ("wf.hl7", lambda: w.write_hl7_oru_waveform(), "hl7v2", ["III", "aVR", "aVL", "aVF"]),
    ],
)
def test_inspect_json_on_each_format(tmp_path, name, make, fmt, derived):
    path = tmp_path / name
    path.write_bytes(make())
    result = runner.invoke(app, ["inspect", str(path), "--json", "--npy", str(tmp_path / "o.npy")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["format"] == fmt and data["derived_leads"] == derived and data["scorable"] is True
    assert data["patient_id"] == w.TEST_IDENTIFIERS.patient_id
    assert np.load(tmp_path / "o.npy").shape == (12, 5000)


def test_not_scorable_ecg_reports_reasons_in_json(tmp_path, x500):
    path = tmp_path / "short.dcm"
    path.write_bytes(w.build_dicom_ecg(x500[:, :2500], 500))
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["scorable"] is False and [r["code"] for r in data["reasons"]] == ["too_short"]


def test_npy_of_a_short_record_fails_with_one_line(tmp_path, x500):
    path = tmp_path / "short.dcm"
    path.write_bytes(w.build_dicom_ecg(x500[:, :2500], 500))
    result = runner.invoke(app, ["inspect", str(path), "--npy", str(tmp_path / "o.npy")])
    assert result.exit_code != 0
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello",
        b"<?xml version='1.0'?><Other/>",
        b"MSH|^~\\&|A\rPID|1\r",
        b"\x00" * 128 + b"DICM" + b"\x02\x00",
    ],
)
def test_broken_input_exits_non_zero_with_one_line(tmp_path, content):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "Traceback" not in result.output


def test_missing_file_exits_non_zero(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nope.dcm")])
    assert result.exit_code != 0 and "cannot read" in result.stderr


def test_config_file_sets_the_gate(tmp_path, x500):
    path = tmp_path / "short.dcm"
    path.write_bytes(w.build_dicom_ecg(x500[:, :2500], 500))
    cfg = tmp_path / "c.toml"
    cfg.write_text("[gate]\nmin_duration_s = 5.0\n")
    result = runner.invoke(app, ["inspect", str(path), "--json", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scorable"] is True
