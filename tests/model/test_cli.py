"""``ecgcad score`` and ``ecgcad model …`` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.model.demo import ASSET, demo_checkpoint_bytes
from ecgcad.model.synthetic import generate

DISCLAIMER = "DEMONSTRATION MODEL — NOT FOR CLINICAL USE"


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def fake_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for decode → gate → window: files named ``bad*`` are not scorable."""
    signals = generate(3, seed=77).signals
    index = {"a.dcm": 0, "b.dcm": 1, "c.dcm": 2}

    def prepare_file(path: Path, settings) -> tuple:
        if path.name.startswith("bad"):
            return None, [{"code": "decode-error", "text": "not an ECG"}]
        return signals[index[path.name]], []

    monkeypatch.setattr("ecgcad.integration.formats.prepare.prepare_file", prepare_file)


def test_score_json_prints_one_line_per_ecg_and_the_disclaimer_on_stderr(
    fake_readers, tmp_path: Path
) -> None:
    for name in ("a.dcm", "bad.dcm", "b.dcm"):
        (tmp_path / name).write_bytes(b"x")
    result = CliRunner().invoke(app, ["score", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    lines = _json_lines(result.stdout)
    assert [Path(r["file"]).name for r in lines] == ["a.dcm", "b.dcm", "bad.dcm"]
    assert DISCLAIMER in result.stderr and DISCLAIMER not in result.stdout.replace(f'"{DISCLAIMER}"', "")
    for record in lines:
        assert record["disclaimer"] == DISCLAIMER
        assert record["model_version"].startswith("demo-0.1.0+")
    scored = [r for r in lines if r["scorable"]]
    assert len(scored) == 2 and set(scored[0]["probabilities"]) == {"rca", "lm", "lad", "lcx"}
    assert set(scored[0]["flags"]) == {"rca", "lm", "lad", "lcx"}
    bad = lines[2]
    assert bad["scorable"] is False and bad["probabilities"] is None
    assert bad["reasons"] == [{"code": "decode-error", "text": "not an ECG"}]


def test_score_explain_adds_attributions_and_median_beats(fake_readers, tmp_path: Path) -> None:
    (tmp_path / "c.dcm").write_bytes(b"x")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "c.dcm"), "--json", "--explain"])
    assert result.exit_code == 0, result.output
    (record,) = _json_lines(result.stdout)
    assert len(record["explanation"]["vessels"]["lad"]["top_windows"]) == 3
    assert np.asarray(record["median_beats"]).shape == (12, 350)


def test_score_human_output_starts_with_the_disclaimer(fake_readers, tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"x")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "a.dcm")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == DISCLAIMER
    assert "RCA" in result.stdout and "a.dcm" in result.stdout


def test_score_with_a_bad_checkpoint_fails_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    (tmp_path / "a.dcm").write_bytes(b"x")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "a.dcm"), "--checkpoint", str(bad)])
    assert result.exit_code == 2
    assert "cannot read checkpoint" in result.stderr


def test_score_on_pydicoms_real_ecg() -> None:
    from ecgcad.integration.formats import readers

    if not hasattr(readers, "decode"):
        pytest.skip("ecgcad.integration.formats.readers.decode not merged yet")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("waveform_ecg.dcm")
    result = CliRunner().invoke(app, ["score", path, "--json"])
    assert result.exit_code == 0, result.output
    (record,) = _json_lines(result.stdout)
    assert DISCLAIMER in result.stderr
    assert record["file"] == path
    assert record["scorable"] is True, record["reasons"]
    assert all(0.0 <= p <= 1.0 for p in record["probabilities"].values())


def test_model_info_prints_the_metadata(tmp_path: Path) -> None:
    ckpt = tmp_path / ASSET
    ckpt.write_bytes(demo_checkpoint_bytes())
    result = CliRunner().invoke(app, ["model", "info", str(ckpt)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["demonstration"] is True and info["name"] == "demo"
    assert info["preprocessing"]["median_window"] == 201
    assert info["parameters"] > 0 and len(info["sha256"]) == 64


def test_cli_import_does_not_load_torch() -> None:
    code = "import sys, ecgcad.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
