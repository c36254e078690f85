"""The deployment files: compose structure, systemd units, Dockerfiles and the sample configuration.

Docker is not available in CI, so the compose file is checked structurally (parsed YAML against the parts of
the Compose Specification we use). PyYAML is used when importable, else the system ``python3``'s.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from ecgcad.config import DestinationSettings, PacsSourceSettings, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICE_KEYS = {
    "image", "build", "command", "restart", "environment", "volumes", "depends_on", "profiles", "ports",
    "healthcheck", "deploy",
}  # fmt: skip
UNITS = ["ecgcad-serve.service", "ecgcad-worker@.service", "ecgcad-scheduler.service"]


def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        python = shutil.which("python3")
        code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
        if python is None or python == sys.executable:
            pytest.skip("PyYAML is not installed")
        out = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            pytest.skip(f"no YAML parser available: {out.stderr.strip()[-200:]}")
        return json.loads(out.stdout)
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _load_yaml(DEPLOY / "compose.yaml")
    assert isinstance(data, dict)
    return data


def test_compose_services_use_only_known_keys_and_named_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    named = set(compose["volumes"])
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, name
        assert isinstance(svc["command"], list) if "command" in svc else True
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in named, f"{name}: undeclared volume {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for port in svc.get("ports", []):
            assert re.fullmatch(r"\d+:\d+", str(port)), port


def test_compose_has_the_scale_out_roles_and_an_embedded_profile(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert s["postgres"]["image"].startswith("postgres:")
    assert s["gateway"]["command"] == ["serve", "--role", "listeners,api"]
    assert s["scheduler"]["command"] == ["scheduler"]
    assert s["worker-gpu"]["command"][0] == "worker"
    (device,) = s["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "orthanc" in s["orthanc"]["image"]
    assert s["migrate"]["command"] == ["migrate"]
    assert s["embedded"]["profiles"] == ["embedded"] and s["embedded"]["command"] == ["serve"]
    scaleout = [n for n, svc in s.items() if "scaleout" in svc.get("profiles", [])]
    assert set(scaleout) >= {"postgres", "gateway", "scheduler", "worker-gpu", "orthanc", "migrate"}
    for name in ("gateway", "scheduler", "worker-gpu", "embedded", "postgres"):
        assert s[name]["healthcheck"]["test"], f"{name} has a healthcheck"
    for name in ("gateway", "scheduler", "worker-gpu"):
        assert s[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert s[name]["environment"]["ECGCAD_DATABASE_URL"].startswith("postgresql+psycopg://")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_run_as_non_root_with_a_healthcheck(name: str) -> None:
    text = (DEPLOY / name).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0")), "the last USER is not root"
    assert re.search(r"^HEALTHCHECK\s", text, re.M)
    assert re.search(r'^ENTRYPOINT \["tini", "--", "ecgcad"\]', text, re.M)


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_structure(name: str) -> None:
    unit = _unit(name)
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["User"] == "ecgcad" and service["ExecStart"].startswith("/opt/ecgcad/bin/ecgcad ")
    assert service["Restart"] == "on-failure" and service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if name.endswith("@.service"):
        assert "%i" in service["ExecStart"]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_units_keep_the_data_folder_private(name: str) -> None:
    service = _unit(name)["Service"]
    assert service["StateDirectory"] == "ecgcad" and service["StateDirectoryMode"] == "0700"
    assert service["UMask"] == "0077"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_images_make_the_data_folder_private(name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert re.search(r"chmod 0700 /var/lib/ecgcad\b", text), "the data folder (and a new volume) is 0700"


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (the structure test above still ran)")
    target = tmp_path / name.replace("@.service", "@0.service")
    target.write_text((DEPLOY / "systemd" / name).read_text())
    out = subprocess.run([tool, "verify", str(target)], capture_output=True, text=True, timeout=60)
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        # The binary is installed by the package, not on the machine that runs the tests.
        if line.strip() and "/opt/ecgcad/bin/ecgcad is not executable" not in line
    ]
    assert not problems, "\n".join(problems)


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _keys(sub, f"{prefix}{name}.")
        elif name not in ("destinations", "pacs_sources"):
            out.append(prefix + name)
    return out


def test_sample_config_loads_and_documents_every_key() -> None:
    path = DEPLOY / "ecgcad.toml"
    settings = load_settings(path)
    assert settings.pacs_sources and settings.destinations
    text = path.read_text()
    lines = text.splitlines()
    missing = []
    for key in (
        _keys(Settings)
        + [f"destinations.{k}" for k in _keys(DestinationSettings)]
        + [f"pacs_sources.{k}" for k in _keys(PacsSourceSettings)]
    ):
        leaf = key.rsplit(".", 1)[-1]
        hits = [i for i, line in enumerate(lines) if re.match(rf"#?\s*{leaf} = ", line)]
        if not hits or not any(lines[i - 1].startswith("#") for i in hits):
            missing.append(key)
    assert not missing, f"deploy/ecgcad.toml lacks {missing}: run deploy/make_sample_config.py"
