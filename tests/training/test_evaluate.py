"""Evaluation numbers are right on known cases, and the report renders its plots into HTML and PDF."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ecgcad.training.dataset import DatasetStore
from ecgcad.training.evaluate import bootstrap_auc, calibration, decision_curve, evaluate_predictions, lowess
from ecgcad.training.evaluate_data import from_store, read_predictions, write_predictions
from ecgcad.training.evaluate_report import write_report
from ecgcad.training.thresholds import (
    choose_thresholds,
    cut_for_sensitivity,
    cut_for_specificity,
    operating_point,
)


def test_bootstrap_ci_brackets_the_auc_and_resamples_patients() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = y + rng.normal(0, 1.0, 400)
    auc, low, high = bootstrap_auc(y, s, n=300)
    assert low < auc < high and 0.04 < high - low < 0.2
    groups = np.repeat(np.arange(100), 4)  # patients of 4 identical ECGs: wider interval
    y4, s4 = np.repeat(y[:100], 4), np.repeat(s[:100], 4)
    _, low_g, high_g = bootstrap_auc(y4, s4, groups, n=300)
    _, low_e, high_e = bootstrap_auc(y4, s4, None, n=300)
    assert high_g - low_g > 1.4 * (high_e - low_e)


def test_lowess_recovers_a_line_and_resists_an_outlier() -> None:
    x = np.linspace(0, 1, 60)
    y = 0.2 + 0.5 * x
    y_out = y + np.random.default_rng(0).normal(0, 0.01, len(x))
    y_out[30] = 5.0
    xs, fit = lowess(x, y_out, frac=0.5, iterations=3)
    assert np.allclose(xs, x)
    assert np.abs(fit - y).max() < 0.02
    _, plain = lowess(x, y_out, frac=0.5, iterations=0)
    assert np.abs(plain - y).max() > 0.1  # without the robustifying passes the outlier pulls the curve


def test_calibration_of_a_calibrated_model_lies_on_the_diagonal() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 5000)
    y = (rng.random(5000) < p).astype(int)
    cal = calibration(y, p)
    assert all(abs(g["predicted"] - g["observed"]) < 0.06 for g in cal["groups"])
    assert cal["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert np.abs(np.array(cal["lowess"]["y"]) - np.array(cal["lowess"]["x"])).max() < 0.08


def test_decision_curve_net_benefit_formula() -> None:
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.9, 0.2, 0.3, 0.05, 0.01])
    dca = decision_curve(y, p, np.array([0.25]))
    # at 0.25: flagged 0.9 (TP) and 0.3 (FP): 1/5 − 1/5 · (0.25/0.75)
    assert dca["model"][0] == pytest.approx(0.2 - 0.2 / 3)
    assert dca["treat_all"][0] == pytest.approx(0.4 - 0.6 / 3)
    assert dca["treat_none"] == [0.0]


def test_threshold_rules_reach_their_targets() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (500, 4))
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, (500, 4)), 0, 1)
    spec = choose_thresholds(y, p, "specificity", 0.95)
    sens = choose_thresholds(y, p, "sensitivity", 0.9)
    for k, v in enumerate(("rca", "lm", "lad", "lcx")):
        assert operating_point(y[:, k], p[:, k], spec[v])["specificity"] >= 0.95
        assert operating_point(y[:, k], p[:, k], spec[v] - 1e-3)["specificity"] < 0.96
        assert operating_point(y[:, k], p[:, k], sens[v])["sensitivity"] >= 0.9
    assert choose_thresholds(y, p, "incidence")["rca"] == pytest.approx(y[:, 0].mean(), abs=1e-4)
    assert choose_thresholds(None, None, "paper")["lm"] == 0.01
    assert cut_for_specificity(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9]), 1.0) > 0.2
    assert cut_for_sensitivity(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.9]), 1.0) == 0.2


def _is_plot(png: Path) -> bool:
    from matplotlib import image

    pixels = image.imread(png)[..., :3]
    non_white = (pixels < 0.9).any(axis=-1).mean()
    coloured = (pixels.max(axis=-1) - pixels.min(axis=-1) > 0.2).mean()
    return non_white > 0.01 and coloured > 0.001


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) not installed")
def test_report_renders_every_plot_into_html_and_pdf(tiny_store: DatasetStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = tiny_store.labels
    probs = np.clip(0.6 * y + rng.uniform(0, 0.5, y.shape), 0, 1)
    preds = from_store(tiny_store, np.arange(tiny_store.count), probs)
    write_predictions(tmp_path / "p.csv", preds)
    preds = read_predictions(tmp_path / "p.csv")
    thresholds = {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}
    results = evaluate_predictions(
        preds, {v: 0.5 for v in thresholds}, signals=tiny_store.signals, n_bootstrap=200
    )
    paths = write_report(tmp_path / "report", preds, results, demonstration=True)
    data = json.loads(paths["json"].read_text())
    for v in ("rca", "lm", "lad", "lcx"):
        e = data["vessels"][v]
        assert e["auc"] is not None and e["auc_ci95"][0] <= e["auc"] <= e["auc_ci95"][1]
        assert {"sensitivity", "specificity", "ppv", "npv"} <= set(e["at_threshold"])
        assert e["at_specificity"]["specificity"] >= 0.95
        assert data["grade_trend"][v]["rho"] > 0
        assert "st_level_high_mv" in data["median_beats"]["vessels"][v]
    assert {"age", "sex", "site", "acquisition_period", "ecg_normal"} <= set(data["subgroups"])
    html = paths["html"].read_text()
    assert html.count("<img") >= 9 and "DEMONSTRATION MODEL" in html
    subprocess.run(
        ["pdftoppm", "-png", "-r", "40", str(paths["pdf"]), str(tmp_path / "page")], check=True, timeout=120
    )
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 10  # summary + ROC, calibration, decision, grade, subgroups, 4 median-beat pages
    assert all(_is_plot(p) for p in pages[1:])
