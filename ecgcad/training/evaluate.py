"""``ecgcad evaluate``: every number a clinical committee asks for, per vessel, as one JSON-able dict.

On labelled predictions (:class:`~ecgcad.training.evaluate_data.Predictions`): AUC with a 1,000-resample
bootstrap 95 % CI (resampling patients, percentile interval), sensitivity / specificity / PPV / NPV at the
configured thresholds and at the 95 %-specificity cut, calibration (deciles of predicted risk, a LOWESS
curve and the Brier score), decision curves (net benefit against treat-all and treat-none), subgroup AUCs
(age, sex, site, acquisition period, normal-ECG subset), the Spearman trend of probability against CCTA
grade, and (with the signals) high- versus low-risk median beats per lead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from ecgcad.model.metrics import roc_auc
from ecgcad.model.risk import VESSELS
from ecgcad.training.evaluate_data import Predictions
from ecgcad.training.thresholds import cut_for_specificity, operating_point

N_BOOTSTRAP = 1000
DCA_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def bootstrap_auc(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray | None = None,
    n: int = N_BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUC and its percentile 95 % CI from ``n`` resamples of patients (of ECGs when ``groups`` is None).

    Resamples with a single class are skipped. Returns ``(auc, low, high)`` (NaN when undefined).
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    auc = roc_auc(y, s)
    if math.isnan(auc):
        return auc, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = [rng.integers(0, len(y), len(y)) for _ in range(n)]
    else:
        _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
        draws = [
            np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
            for _ in range(n)
        ]
    values = []
    for idx in draws:
        yy = y[idx]
        n_pos = int(yy.sum())
        if n_pos == 0 or n_pos == len(yy):
            continue
        ranks = rankdata(s[idx])
        values.append((ranks[yy].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(yy) - n_pos)))
    if not values:
        return auc, float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return auc, float(low), float(high)


def lowess(
    x: np.ndarray, y: np.ndarray, frac: float = 2 / 3, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Locally weighted linear regression (Cleveland 1979), as ``statsmodels`` ``lowess`` does it.

    Tricube weights over the ``ceil(frac · n)`` nearest points, then ``iterations`` robustifying passes
    with bisquare weights of the residuals. Returns the sorted ``x`` and the fitted values.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    n = len(xs)
    if n < 3:
        return xs, ys.copy()
    r = min(n, max(2, int(math.ceil(frac * n))))
    robust = np.ones(n)
    fitted = np.zeros(n)
    for it in range(iterations + 1):
        for i in range(n):
            dist = np.abs(xs - xs[i])
            h = np.partition(dist, r - 1)[r - 1]
            w = np.clip(1 - (dist / h) ** 3, 0, 1) ** 3 if h > 0 else (dist == 0).astype(float)
            w = w * robust
            sw = w.sum()
            if sw <= 0:
                fitted[i] = ys[i]
                continue
            mx, my = (w * xs).sum() / sw, (w * ys).sum() / sw
            var = (w * (xs - mx) ** 2).sum()
            slope = (w * (xs - mx) * (ys - my)).sum() / var if var > 1e-12 else 0.0
            fitted[i] = my + slope * (xs[i] - mx)
        if it == iterations:
            break
        resid = ys - fitted
        s = float(np.median(np.abs(resid)))
        if s < 1e-7 * (float(np.mean(np.abs(ys))) + 1e-12):
            break  # an (almost) exact fit: nothing left to robustify (Cleveland's stopping rule)
        robust = np.clip(1 - (resid / (6 * s)) ** 2, 0, 1) ** 2
    return xs, fitted


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Deciles of predicted risk (mean predicted vs observed), a LOWESS curve and the Brier score."""
    y = np.asarray(labels, np.float64)
    p = np.asarray(probs, np.float64)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    groups = []
    for b in np.unique(which):
        m = which == b
        groups.append({"n": int(m.sum()), "predicted": float(p[m].mean()), "observed": float(y[m].mean())})
    step = max(1, len(p) // 300)  # LOWESS is O(n²): fit on at most ~300 points
    sub = np.argsort(p, kind="stable")[::step]
    xs, fit = lowess(p[sub], y[sub], frac=0.6, iterations=1)
    return {
        "brier": float(np.mean((p - y) ** 2)),
        "mean_predicted": float(p.mean()),
        "observed_rate": float(y.mean()),
        "groups": groups,
        "lowess": {"x": np.round(xs, 5).tolist(), "y": np.round(np.clip(fit, 0, 1), 5).tolist()},
    }


def decision_curve(
    labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray = DCA_THRESHOLDS
) -> dict[str, list[float]]:
    """Net benefit of the model, of treating all and of treating none at each threshold probability."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs)
    n = len(y)
    prev = y.mean() if n else float("nan")
    model, treat_all = [], []
    for t in thresholds:
        odds = t / (1 - t)
        flag = p >= t
        model.append(float((flag & y).sum() / n - (flag & ~y).sum() / n * odds))
        treat_all.append(float(prev - (1 - prev) * odds))
    return {
        "threshold": [float(t) for t in thresholds],
        "model": model,
        "treat_all": treat_all,
        "treat_none": [0.0] * len(thresholds),
    }


def subgroups(preds: Predictions) -> dict[str, dict[str, dict[str, Any]]]:
    """AUC per vessel within subgroups of the optional columns present (age, sex, site, period, normal ECG)."""
    defs: dict[str, dict[str, np.ndarray]] = {}
    ages = preds.extra.get("age") or []
    if any(a for a in ages):
        a = np.array([float(v) if v else np.nan for v in ages])
        defs["age"] = {"<50": a < 50, "50-64": (a >= 50) & (a < 65), "≥65": a >= 65}
    for col in ("sex", "site"):
        values = preds.extra.get(col) or []
        if any(values):
            arr = np.array([v or "" for v in values], dtype=object)
            defs[col] = {str(v): arr == v for v in sorted(set(arr) - {""})}
    dates = preds.extra.get("acquisition_date") or []
    if any(dates):
        arr = np.array([d or "" for d in dates], dtype=object)
        known = sorted(d for d in arr if d)
        median = known[len(known) // 2]
        defs["acquisition_period"] = {
            f"before {median[:10]}": (arr != "") & (arr < median),
            f"from {median[:10]}": arr >= median,
        }
    normal = preds.extra.get("ecg_normal") or []
    if any(normal):
        arr = np.array([(v or "").lower() in ("1", "true", "yes", "normal") for v in normal])
        defs["ecg_normal"] = {"normal ECG": arr, "abnormal ECG": ~arr & np.array([bool(v) for v in normal])}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, groups in defs.items():
        out[name] = {}
        for label, mask in groups.items():
            mask = np.asarray(mask, bool)
            out[name][label] = {
                "n": int(mask.sum()),
                "auc": {
                    v: _finite(roc_auc(preds.labels[mask, k], preds.probabilities[mask, k]))
                    for k, v in enumerate(VESSELS)
                },
            }
    return out


def grade_trend(preds: Predictions) -> dict[str, Any]:
    """Spearman correlation of each vessel's probability with its CCTA grade (where grades are known)."""
    out: dict[str, Any] = {}
    for k, v in enumerate(VESSELS):
        g = preds.grades[:, k]
        m = ~np.isnan(g)
        if m.sum() < 3 or len(np.unique(g[m])) < 2:
            out[v] = None
            continue
        rho, pval = spearmanr(g[m], preds.probabilities[m, k])
        medians = {
            str(int(x)): float(np.median(preds.probabilities[m, k][g[m] == x])) for x in np.unique(g[m])
        }
        out[v] = {
            "rho": float(rho),
            "p_value": float(pval),
            "n": int(m.sum()),
            "median_probability_by_grade": medians,
        }
    return out


def median_beat_comparison(
    signals: np.ndarray,
    preds: Predictions,
    thresholds: Mapping[str, float],
    per_group: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Average median beat per lead of high-risk (``p ≥ threshold``) versus low-risk ECGs, per vessel.

    At most ``per_group`` ECGs (seeded sample) per group. Reports per lead the mean ST-segment level
    (80–120 ms after the R peak) of each group and the largest absolute difference of the averaged beats.
    """
    from ecgcad.errors import ModelError
    from ecgcad.integration.formats.ecg import LEADS
    from ecgcad.model.explain import median_beats

    rng = np.random.default_rng(seed)
    cache: dict[int, np.ndarray | None] = {}

    def beat(row: int) -> np.ndarray | None:
        if row not in cache:
            try:
                cache[row] = median_beats(np.asarray(signals[preds.index[row]], np.float64))
            except ModelError:
                cache[row] = None
        return cache[row]

    out: dict[str, Any] = {"leads": list(LEADS), "r_index": 125, "sampling_rate": 500.0, "vessels": {}}
    st = slice(125 + 40, 125 + 60)
    for k, v in enumerate(VESSELS):
        high = np.flatnonzero(preds.probabilities[:, k] >= thresholds[v])
        low = np.flatnonzero(preds.probabilities[:, k] < thresholds[v])
        groups = {}
        for name, rows in (("high", high), ("low", low)):
            chosen = rng.choice(rows, min(per_group, len(rows)), replace=False) if len(rows) else rows
            beats = [b for b in (beat(int(r)) for r in chosen) if b is not None]
            groups[name] = (np.mean(beats, axis=0), len(beats)) if beats else (None, 0)
        (hb, nh), (lb, nl) = groups["high"], groups["low"]
        entry: dict[str, Any] = {"n_high": nh, "n_low": nl}
        if hb is not None and lb is not None:
            entry["high_beat"] = np.round(hb, 4).tolist()
            entry["low_beat"] = np.round(lb, 4).tolist()
            entry["st_level_high_mv"] = dict(
                zip(LEADS, np.round(hb[:, st].mean(axis=1), 4).tolist(), strict=True)
            )
            entry["st_level_low_mv"] = dict(
                zip(LEADS, np.round(lb[:, st].mean(axis=1), 4).tolist(), strict=True)
            )
            entry["max_abs_difference_mv"] = dict(
                zip(LEADS, np.round(np.abs(hb - lb).max(axis=1), 4).tolist(), strict=True)
            )
        out["vessels"][v] = entry
    return out


def evaluate_predictions(
    preds: Predictions,
    thresholds: Mapping[str, float],
    *,
    signals: np.ndarray | None = None,
    specificity: float = 0.95,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """All the numbers of the module docstring, JSON-serialisable (NaN → ``None``)."""
    vessels: dict[str, Any] = {}
    for k, v in enumerate(VESSELS):
        y, p = preds.labels[:, k], preds.probabilities[:, k]
        auc, low, high = bootstrap_auc(y, p, preds.patient_ids, n_bootstrap, seed + k)
        entry: dict[str, Any] = {
            "n": int(len(y)),
            "positives": int(y.sum()),
            "prevalence": float(y.mean()) if len(y) else None,
            "auc": _finite(auc),
            "auc_ci95": [_finite(low), _finite(high)],
            "at_threshold": {
                k2: _finite(x) if isinstance(x, float) else x
                for k2, x in operating_point(y, p, thresholds[v]).items()
            },
        }
        if (y == 0).any():
            cut = cut_for_specificity(y, p, specificity)
            entry["at_specificity"] = {
                "target": specificity,
                **{
                    k2: _finite(x) if isinstance(x, float) else x
                    for k2, x in operating_point(y, p, cut).items()
                },
            }
        entry["calibration"] = calibration(y, p)
        entry["decision_curve"] = decision_curve(y, p)
        vessels[v] = entry
    flags = np.stack([preds.probabilities[:, k] >= thresholds[v] for k, v in enumerate(VESSELS)], axis=1)
    out: dict[str, Any] = {
        "n_ecgs": len(preds),
        "n_patients": int(len(set(preds.patient_ids.tolist()))),
        "thresholds": {v: float(thresholds[v]) for v in VESSELS},
        "bootstrap": {
            "resamples": n_bootstrap,
            "unit": "patient",
            "interval": "percentile 95 %",
            "seed": seed,
        },
        "vessels": vessels,
        "any_vessel": operating_point(
            np.asarray(preds.labels.any(axis=1)), np.asarray(flags.any(axis=1), float), 0.5
        ),
        "subgroups": subgroups(preds),
        "grade_trend": grade_trend(preds),
    }
    if signals is not None and (preds.index >= 0).all():
        out["median_beats"] = median_beat_comparison(signals, preds, thresholds, seed=seed)
    return _clean(out)


def _clean(value: object) -> Any:  # noqa: ANN401 - a JSON value: NaN as None, numpy scalars as Python's
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
