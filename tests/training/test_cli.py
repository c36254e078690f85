"""The commands work end to end on synthetic data: dataset → train → evaluate → thresholds → compare → promote."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ecgcad.cli import app
from ecgcad.model.checkpoint import load_checkpoint

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_training_commands_end_to_end(tmp_path: Path) -> None:
    config = tmp_path / "ecgcad.toml"
    config.write_text(f'data_dir = "{tmp_path / "var"}"\n[model]\ndevice = "cpu"\n')
    _ok(["dataset", "synthetic", str(tmp_path / "data"), "--n", "30", "--seed", "9"])
    _ok([
        "train", str(tmp_path / "data"), str(tmp_path / "run"), "--width", "4", "--epochs", "1", "--batch-size", "8",
        "--folds", "2", "--lr", "1e-3", "--device", "cpu", "--threads", "1", "--threshold-rule", "incidence",
    ])  # fmt: skip
    model = tmp_path / "run" / "model.pt"
    assert load_checkpoint(model).metadata["threshold_rule"]["rule"] == "incidence"
    out = _ok([
        "evaluate", str(tmp_path / "eval"), "--predictions", str(tmp_path / "run" / "predictions.csv"),
        "--dataset", str(tmp_path / "data"), "--bootstrap", "50", "--no-median-beats", "-c", str(config),
    ])  # fmt: skip
    assert "RCA: AUC" in out and (tmp_path / "eval" / "report.pdf").exists()
    chosen = json.loads(_ok([
        "thresholds", "choose", str(model), str(tmp_path / "spec.pt"), "--rule", "specificity", "--target", "0.9",
        "--predictions", str(tmp_path / "run" / "predictions.csv"),
    ]))  # fmt: skip
    assert load_checkpoint(tmp_path / "spec.pt").metadata["thresholds"] == chosen["thresholds"]
    compared = json.loads(_ok([
        "model", "compare", str(model), str(tmp_path / "run" / "folds" / "fold-0.pt"),
        "--dataset", str(tmp_path / "data"), "--device", "cpu", "-c", str(config),
    ]))  # fmt: skip
    assert set(compared["vessels"]) == {"rca", "lm", "lad", "lcx"} and "any_flag_flip_rate" in compared
    _ok(["evaluate", str(tmp_path / "eval2"), "--checkpoint", str(model), "--dataset", str(tmp_path / "data"),
         "--bootstrap", "20", "--no-median-beats", "--device", "cpu", "-c", str(config)])  # fmt: skip
    assert "DEMONSTRATION MODEL" in (tmp_path / "eval2" / "report.html").read_text()
    assert "promoted" in _ok(
        ["model", "promote", str(tmp_path / "spec.pt"), "--reason", "test", "-c", str(config)]
    )
    assert "promoted" in _ok(["model", "promote", str(model), "-c", str(config)])
    assert "rolled back" in _ok(["model", "rollback", "-c", str(config)])
    bad = runner.invoke(app, ["model", "rollback", "-c", str(config)])
    assert bad.exit_code != 0 and "roll back" in bad.output
