"""Operator commands against real peers: `selftest`, `deliveries list/resend`, `rescore`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgcad.cli import app
from tests.peers import MllpSink, StoreScp, free_port, require


@pytest.fixture
def peers(tmp_path: Path):  # type: ignore[no-untyped-def]
    require("storescp")
    pacs = StoreScp(tmp_path / "pacs")
    ehr = MllpSink()
    yield pacs, ehr
    pacs.stop()
    ehr.stop()


def _config(tmp_path: Path, pacs_port: int, ehr_port: int) -> Path:
    cfg = tmp_path / "ecgcad.toml"
    cfg.write_text(
        f"""
data_dir = "{tmp_path / "var"}"
[[destinations]]
name = "pacs"
kind = "dicom"
port = {pacs_port}
ae_title = "PACS"
timeout_s = 5
[[destinations]]
name = "ehr"
kind = "hl7"
port = {ehr_port}
timeout_s = 5
"""
    )
    return cfg


def test_selftest_reports_each_destination(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    pacs, ehr = peers
    result = CliRunner().invoke(app, ["selftest", "--config", str(_config(tmp_path, pacs.port, ehr.port))])
    assert result.exit_code == 0, result.output
    assert "C-ECHO status 0x0000" in result.output and "MSA AA" in result.output


def test_selftest_fails_when_a_destination_is_down(tmp_path: Path, peers) -> None:  # type: ignore[no-untyped-def]
    pacs, _ = peers
    result = CliRunner().invoke(app, ["selftest", "--config", str(_config(tmp_path, pacs.port, free_port()))])
    assert result.exit_code == 1
    assert "NO" in result.output


def test_deliveries_list_and_resend_and_rescore_commands(tmp_path: Path) -> None:
    from ecgcad.config import load_settings
    from ecgcad.context import AppContext
    from ecgcad.db.migrate import upgrade
    from ecgcad.testing.ecg_writers import real_dicom_ecg_bytes

    cfg = _config(tmp_path, free_port(), free_port())
    runner = CliRunner()
    assert runner.invoke(app, ["migrate", "--config", str(cfg)]).exit_code == 0
    settings = load_settings(cfg)
    upgrade(settings)
    ctx = AppContext.from_settings(settings)
    from ecgcad.integration.formats.readers import decode

    data = real_dicom_ecg_bytes()
    ecg = decode(data)
    r = ctx.ingestor.ingest_dicom(
        data, sop_class_uid=None, sop_instance_uid=ecg.identifiers.sop_instance_uid, ecg=ecg
    )
    result = runner.invoke(app, ["deliveries", "list", "--json", "--config", str(cfg)])
    assert result.exit_code == 0 and result.stdout.strip() == ""
    result = runner.invoke(app, ["rescore", str(r.ecg_id), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "result version 1" in result.output
    result = runner.invoke(app, ["rescore", "9999", "--config", str(cfg)])
    assert result.exit_code != 0 and "no ECG 9999" in result.output
    result = runner.invoke(app, ["deliveries", "resend", "4242", "--config", str(cfg)])
    assert result.exit_code != 0 and "no delivery 4242" in result.output
    assert (
        json.loads(runner.invoke(app, ["config", "show", "--config", str(cfg)]).stdout)["destinations"][0][
            "name"
        ]
        == "pacs"
    )
