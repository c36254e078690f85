"""Model comparison: a candidate against the active model (``ecgcad model compare``), and the active
model against the shadow model on the live ECGs both scored (``ecgcad model compare-shadow``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgcad.errors import ModelError
from ecgcad.model.metrics import roc_auc
from ecgcad.model.risk import VESSELS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def compare_probabilities(
    active: np.ndarray,
    candidate: np.ndarray,
    active_thresholds: Mapping[str, float],
    candidate_thresholds: Mapping[str, float],
    labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Agreement of two models on the same ECGs (``(n, 4)`` probabilities each).

    Per vessel: flag agreement and Cohen's κ, flags gained / lost by the candidate, Spearman correlation
    and mean absolute difference of the probabilities, and with ``labels`` each model's AUC, Brier score,
    mean predicted risk and the observed rate. Overall: the share of ECGs whose "any vessel flagged"
    verdict flips.
    """
    from scipy.stats import spearmanr

    a, c = np.asarray(active, np.float64), np.asarray(candidate, np.float64)
    if a.shape != c.shape or a.ndim != 2 or a.shape[1] != len(VESSELS):
        raise ModelError("both models need (n, 4) probabilities on the same ECGs")
    n = len(a)
    fa = np.stack([a[:, k] >= active_thresholds[v] for k, v in enumerate(VESSELS)], axis=1)
    fc = np.stack([c[:, k] >= candidate_thresholds[v] for k, v in enumerate(VESSELS)], axis=1)
    out: dict[str, Any] = {"n_ecgs": n, "vessels": {}}
    for k, v in enumerate(VESSELS):
        agree = float((fa[:, k] == fc[:, k]).mean()) if n else float("nan")
        pa, pc = fa[:, k].mean() if n else 0.0, fc[:, k].mean() if n else 0.0
        expected = pa * pc + (1 - pa) * (1 - pc)
        kappa = (agree - expected) / (1 - expected) if n and expected < 1 else float("nan")
        rho = (
            float(spearmanr(a[:, k], c[:, k])[0])
            if n > 2 and a[:, k].std() > 0 and c[:, k].std() > 0
            else float("nan")
        )
        entry: dict[str, Any] = {
            "flag_agreement": agree,
            "kappa": float(kappa),
            "flags_gained": int((~fa[:, k] & fc[:, k]).sum()),
            "flags_lost": int((fa[:, k] & ~fc[:, k]).sum()),
            "flag_flip_rate": float((fa[:, k] != fc[:, k]).mean()) if n else float("nan"),
            "probability_spearman": rho,
            "mean_abs_probability_difference": float(np.abs(a[:, k] - c[:, k]).mean()) if n else float("nan"),
            "flag_rate_active": float(pa),
            "flag_rate_candidate": float(pc),
        }
        if labels is not None:
            y = np.asarray(labels)[:, k]
            entry["calibration"] = {
                name: {
                    "auc": roc_auc(y, p[:, k]),
                    "brier": float(np.mean((p[:, k] - y) ** 2)),
                    "mean_predicted": float(p[:, k].mean()),
                    "observed_rate": float(y.mean()),
                }
                for name, p in (("active", a), ("candidate", c))
            }
        out["vessels"][v] = entry
    out["any_flag_flip_rate"] = float((fa.any(axis=1) != fc.any(axis=1)).mean()) if n else float("nan")
    return out


def shadow_pairs(
    session: Session, active_version: str | None = None
) -> tuple[str, str, np.ndarray, np.ndarray]:
    """Probabilities of the active and the shadow model on the ECGs both scored (from stored results).

    Returns ``(active model version, shadow model version, active (n, 4), shadow (n, 4))``.
    """
    from sqlalchemy import select

    from ecgcad.db.models import Result

    rows = session.execute(select(Result).where(Result.scorable.is_(True))).scalars().all()
    shadow = [r for r in rows if r.shadow]
    if not shadow:
        raise ModelError("no shadow results stored")
    shadow_version = shadow[-1].model_version
    live = {
        r.ecg_id: r
        for r in rows
        if not r.shadow and (active_version is None or r.model_version == active_version)
    }
    pairs = [(live[r.ecg_id], r) for r in shadow if r.model_version == shadow_version and r.ecg_id in live]
    if not pairs:
        raise ModelError("no ECG has both an active and a shadow result")

    def probs(r: Result) -> list[float]:
        return [float(getattr(r, f"p_{v}")) for v in VESSELS]

    return (
        pairs[0][0].model_version,
        shadow_version,
        np.array([probs(a) for a, _ in pairs]),
        np.array([probs(s) for _, s in pairs]),
    )
