"""Settings: TOML file < ECGCAD_* environment < CLI flags; unknown keys and bad values name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.config import load_settings
from ecgcad.errors import ConfigurationError

CONTRACT_TOML = """
data_dir = "var"
database_url = ""

[dicom]
ae_title = "ECGCAD"
host = "127.0.0.1"
port = 11112
allowed_calling_aets = []

[hl7]
host = "127.0.0.1"
port = 2575

[api]
host = "127.0.0.1"
port = 8080

[model]
checkpoint = ""
device = "auto"
max_batch = 64
max_wait_ms = 20

[thresholds]
rca = 0.15
lm = 0.01
lad = 0.15
lcx = 0.15

[[destinations]]
name = "pacs"
kind = "dicom"
host = "127.0.0.1"
port = 11113
ae_title = "PACS"
send = ["sr"]

[[destinations]]
name = "ehr"
kind = "hl7"
host = "127.0.0.1"
port = 2576
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("ECGCAD_"):
            monkeypatch.delenv(key)


def test_contract_file_loads_with_every_documented_key(tmp_path: Path) -> None:
    f = tmp_path / "ecgcad.toml"
    f.write_text(CONTRACT_TOML)
    s = load_settings(f)
    assert s.dicom.ae_title == "ECGCAD" and s.dicom.port == 11112
    assert s.hl7.port == 2575 and s.api.port == 8080
    assert s.model.max_batch == 64 and s.model.max_wait_ms == 20 and s.model.device == "auto"
    assert s.thresholds.as_dict() == {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}
    assert [d.name for d in s.destinations] == ["pacs", "ehr"]
    assert s.destinations[0].send == ["sr"] and s.destinations[1].send == ["oru"]
    assert s.effective_database_url.startswith("sqlite:///") and s.effective_database_url.endswith(
        "var/ecgcad.db"
    )


def test_environment_overrides_file_and_flags_override_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "ecgcad.toml"
    f.write_text("[dicom]\nport = 1000\nae_title = 'FROMFILE'\n")
    monkeypatch.setenv("ECGCAD_DICOM__PORT", "2000")
    s = load_settings(f)
    assert s.dicom.port == 2000 and s.dicom.ae_title == "FROMFILE"
    s = load_settings(f, dicom={"port": 3000})
    assert s.dicom.port == 3000 and s.dicom.ae_title == "FROMFILE"


def test_config_file_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "x.toml"
    f.write_text("[hl7]\nport = 4444\n")
    monkeypatch.setenv("ECGCAD_CONFIG", str(f))
    assert load_settings().hl7.port == 4444


def test_env_list_values_parse_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECGCAD_DICOM__ALLOWED_CALLING_AETS", '["CART1", "MUSE"]')
    assert load_settings().dicom.allowed_calling_aets == ["CART1", "MUSE"]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[dicom]\nprot = 1\n", "dicom.prot"),
        ("bogus = 1\n", "bogus"),
        ("[dicom]\nport = 'x'\n", "dicom.port"),
        ("[thresholds]\nrca = 1.5\n", "thresholds.rca"),
        ("[[destinations]]\nname='p'\nkind='ftp'\nport=1\n", "destinations.0.kind"),
    ],
)
def test_unknown_keys_and_bad_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")):
        load_settings(f)


def test_config_show_masks_secrets_and_bad_config_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('database_url = "postgresql+psycopg://ecg:s3cretpw@db:5432/ecgcad"\n')
    result = CliRunner().invoke(app, ["config", "show", "--config", str(f)])
    assert result.exit_code == 0, result.output
    assert "s3cretpw" not in result.output
    data = json.loads(result.stdout)
    assert data["database_url"] == "postgresql+psycopg://ecg:***@db:5432/ecgcad"
    f.write_text("[dicom]\nprot = 1\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(f)])
    assert result.exit_code != 0
    assert "dicom.prot" in result.output and "Traceback" not in result.output


def test_version_and_migrate_commands(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    runner = CliRunner()
    assert runner.invoke(app, ["version", "--config", str(f)]).output.startswith("ecgcad ")
    result = runner.invoke(app, ["migrate", "--config", str(f)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "var" / "ecgcad.db").exists()


def test_transport_dict_rebuilds_the_same_settings_in_a_child_process(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        database_url="postgresql+psycopg://ecg:s3cretpw@db:5432/ecgcad",
        dicom={"port": 1234},
        destinations=[{"name": "pacs", "kind": "dicom", "port": 104, "ae_title": "PACS"}],
    )
    rebuilt = load_settings(None, **settings.transport_dict())
    assert rebuilt.effective_database_url == "postgresql+psycopg://ecg:s3cretpw@db:5432/ecgcad"
    assert rebuilt.dicom.port == 1234 and rebuilt.destinations[0].ae_title == "PACS"
    assert "s3cretpw" not in json.dumps(settings.masked_dict())
