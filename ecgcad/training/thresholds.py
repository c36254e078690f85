"""Choosing per-vessel thresholds by rule and writing them into a checkpoint's metadata.

Rules (a vessel is flagged when ``p ≥ threshold``):

- ``paper`` — the paper's fixed cuts: 0.15 for RCA, LAD and LCX, 0.01 for LM;
- ``incidence`` — each vessel's observed prevalence in the labelled set (the paper's 15 % / 1 % follow the
  incidence of severe disease per vessel);
- ``specificity`` — the lowest cut whose specificity is at least the target (e.g. 0.95: the screening cut);
- ``sensitivity`` — the highest cut whose sensitivity is at least the target.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from typing import Any

import numpy as np

from ecgcad.errors import ModelError
from ecgcad.model.checkpoint import DEFAULT_THRESHOLDS, load_checkpoint, save_checkpoint
from ecgcad.model.risk import VESSELS

RULES = ("paper", "incidence", "specificity", "sensitivity")


def cut_for_specificity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The lowest cut ``c`` with specificity (share of negatives with ``p < c``) ≥ ``target``."""
    neg = np.sort(np.asarray(scores, np.float64)[np.asarray(labels) == 0])
    if len(neg) == 0:
        raise ModelError("no negative cases: specificity is undefined")
    k = max(1, math.ceil(target * len(neg) - 1e-9))
    return float(min(1.0, np.nextafter(neg[k - 1], np.inf)))


def cut_for_sensitivity(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest cut ``c`` with sensitivity (share of positives with ``p ≥ c``) ≥ ``target``."""
    pos = np.sort(np.asarray(scores, np.float64)[np.asarray(labels) == 1])[::-1]
    if len(pos) == 0:
        raise ModelError("no positive cases: sensitivity is undefined")
    k = max(1, math.ceil(target * len(pos) - 1e-9))
    return float(pos[k - 1])


def choose_thresholds(
    labels: np.ndarray | None, probabilities: np.ndarray | None, rule: str, target: float | None = None
) -> dict[str, float]:
    """Per-vessel thresholds under ``rule`` from ``(n, 4)`` labels and probabilities.

    Raises
    ------
    ModelError
        Unknown rule, a target missing or outside (0, 1), or a vessel without the cases the rule needs.
    """
    if rule not in RULES:
        raise ModelError(f"unknown threshold rule {rule!r} (one of {', '.join(RULES)})")
    if rule == "paper":
        return dict(DEFAULT_THRESHOLDS)
    if labels is None or probabilities is None:
        raise ModelError(f"rule {rule!r} needs labelled predictions")
    y = np.asarray(labels)
    p = np.asarray(probabilities, np.float64)
    if rule == "incidence":
        return {v: round(float(y[:, k].mean()), 4) for k, v in enumerate(VESSELS)}
    if target is None or not 0.0 < target < 1.0:
        raise ModelError(f"rule {rule!r} needs a target in (0, 1)")
    fn = cut_for_specificity if rule == "specificity" else cut_for_sensitivity
    out = {}
    for k, v in enumerate(VESSELS):
        try:
            out[v] = fn(y[:, k], p[:, k], target)
        except ModelError as exc:
            raise ModelError(f"{v}: {exc}") from exc
    return out


def operating_point(labels: np.ndarray, scores: np.ndarray, cut: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and counts of the rule ``p ≥ cut`` (NaN where undefined)."""
    y = np.asarray(labels).astype(bool)
    flag = np.asarray(scores) >= cut
    tp, fp = int((flag & y).sum()), int((flag & ~y).sum())
    fn, tn = int((~flag & y).sum()), int((~flag & ~y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "threshold": float(cut),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def write_thresholds(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    thresholds: dict[str, float],
    *,
    rule: str,
    target: float | None = None,
    screening: dict[str, float] | None = None,
    source: str = "",
) -> str:
    """Write ``checkpoint`` again to ``out`` with ``thresholds`` (and the rule that chose them) in its metadata.

    The weights are unchanged; the file (and so the model version) is new. Returns the new SHA-256.
    """
    if set(thresholds) != set(VESSELS):
        raise ModelError(f"thresholds must name {list(VESSELS)}")
    loaded = load_checkpoint(checkpoint)
    meta: dict[str, Any] = dict(loaded.metadata)
    meta["thresholds"] = {v: float(thresholds[v]) for v in VESSELS}
    if screening is not None:
        meta["screening_thresholds"] = {v: float(screening[v]) for v in VESSELS}
    meta["threshold_rule"] = {
        "rule": rule,
        "target": target,
        "source": source,
        "chosen": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "previous": loaded.metadata.get("thresholds"),
    }
    return save_checkpoint(out, loaded.module, meta)
