"""Labelled predictions: what training writes (out-of-fold) and what evaluation, thresholds and compare read.

A predictions CSV has one row per ECG: ``index`` (row of the data set store, −1 if none), ``path``,
``patient_id``, ``fold``, the labels ``y_<vessel>``, the probabilities ``p_<vessel>``, the CCTA grades
``grade_<vessel>`` (empty: unknown) and the optional manifest columns (age, sex, site, …).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgcad.model.risk import VESSELS
from ecgcad.training.dataset import OPTIONAL_COLUMNS, DatasetStore

if TYPE_CHECKING:
    from ecgcad.model.predictor import Predictor


@dataclasses.dataclass(slots=True)
class Predictions:
    """Probabilities with their labels and covariates (rows aligned)."""

    probabilities: np.ndarray
    labels: np.ndarray
    grades: np.ndarray
    patient_ids: np.ndarray
    index: np.ndarray
    fold: np.ndarray
    paths: list[str]
    extra: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(self.probabilities)

    def subset(self, mask: np.ndarray) -> Predictions:
        """The rows where ``mask`` is true."""
        rows = np.flatnonzero(mask)
        return Predictions(
            probabilities=self.probabilities[rows],
            labels=self.labels[rows],
            grades=self.grades[rows],
            patient_ids=self.patient_ids[rows],
            index=self.index[rows],
            fold=self.fold[rows],
            paths=[self.paths[k] for k in rows],
            extra={c: [v[k] for k in rows] for c, v in self.extra.items()},
        )


def from_store(
    store: DatasetStore, rows: np.ndarray, probabilities: np.ndarray, fold: np.ndarray | None = None
) -> Predictions:
    """Predictions for ``rows`` of ``store``."""
    rows = np.asarray(rows, dtype=np.int64)
    return Predictions(
        probabilities=np.asarray(probabilities, np.float64),
        labels=store.labels[rows].astype(np.int64),
        grades=store.grades[rows],
        patient_ids=store.patient_ids[rows],
        index=rows,
        fold=np.full(len(rows), -1, np.int64) if fold is None else np.asarray(fold, np.int64),
        paths=[store.records[k]["path"] for k in rows],
        extra={c: [store.records[k].get("extra", {}).get(c) for k in rows] for c in OPTIONAL_COLUMNS},
    )


def write_predictions(path: str | os.PathLike[str], preds: Predictions) -> None:
    """Write the CSV described in the module docstring."""
    extras = [c for c in OPTIONAL_COLUMNS if any(v is not None for v in preds.extra.get(c, []))]
    header = ["index", "path", "patient_id", "fold"]
    header += (
        [f"y_{v}" for v in VESSELS] + [f"p_{v}" for v in VESSELS] + [f"grade_{v}" for v in VESSELS] + extras
    )
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for k in range(len(preds)):
            row: list[Any] = [int(preds.index[k]), preds.paths[k], preds.patient_ids[k], int(preds.fold[k])]
            row += [int(x) for x in preds.labels[k]]
            row += [f"{x:.6g}" for x in preds.probabilities[k]]
            row += ["" if np.isnan(g) else f"{g:g}" for g in preds.grades[k]]
            row += [preds.extra[c][k] or "" for c in extras]
            w.writerow(row)


def read_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a predictions CSV."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))

    def num(cell: str) -> float:
        return float(cell) if cell not in ("", None) else float("nan")

    return Predictions(
        probabilities=np.array([[float(r[f"p_{v}"]) for v in VESSELS] for r in rows]).reshape(
            -1, len(VESSELS)
        ),
        labels=np.array([[int(r[f"y_{v}"]) for v in VESSELS] for r in rows], np.int64).reshape(
            -1, len(VESSELS)
        ),
        grades=np.array([[num(r.get(f"grade_{v}", "")) for v in VESSELS] for r in rows]).reshape(
            -1, len(VESSELS)
        ),
        patient_ids=np.array([r["patient_id"] for r in rows], dtype=object),
        index=np.array([int(r.get("index") or -1) for r in rows], np.int64),
        fold=np.array([int(r.get("fold") or -1) for r in rows], np.int64),
        paths=[r.get("path", "") for r in rows],
        extra={c: [r.get(c) or None for r in rows] for c in OPTIONAL_COLUMNS},
    )


def predict_store(
    predictor: Predictor, store: DatasetStore, rows: np.ndarray | None = None, chunk: int = 128
) -> Predictions:
    """Score rows of ``store`` with ``predictor`` (a :class:`~ecgcad.model.predictor.Predictor`)."""
    rows = np.arange(store.count) if rows is None else np.asarray(rows, np.int64)
    signals = store.signals
    probs = [
        predictor.predict_proba(np.asarray(signals[rows[k : k + chunk]])) for k in range(0, len(rows), chunk)
    ]
    p = np.concatenate(probs) if probs else np.zeros((0, len(VESSELS)))
    return from_store(store, rows, p)
