"""Synthetic ground truth: the training pipeline learns every territory (held-out AUC ≥ 0.9 per vessel)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_train import FULL, REDUCED, run  # noqa: E402


@pytest.mark.timeout(1800)
def test_reduced_synthetic_benchmark_reaches_auc_09_per_vessel(tmp_path: Path) -> None:
    result = run(REDUCED, tmp_path, threads=2, say=lambda line: None)
    assert result["passed"], result["auc"]


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_full_synthetic_benchmark_reaches_auc_09_per_vessel(tmp_path: Path) -> None:
    result = run(FULL, tmp_path, threads=2, report=True, say=lambda line: None)
    assert result["passed"], result["auc"]
    assert (tmp_path / "report" / "report.pdf").exists()
