"""A deterministic, torch-free :class:`~ecgcad.model.predictor.Predictor` for tests and integrators.

Probabilities are a pure function of the signal's bytes (a SHA-256 per ECG mapped to [0, 1)), so the same
ECG always scores the same whatever batch it lands in; tests can pin them with ``fixed`` or make the
predictor fail with ``fail_with``. Every call's batch size is recorded in :attr:`FakePredictor.calls`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ecgcad.errors import ModelError
from ecgcad.model.preprocess import VESSEL_RECIPE
from ecgcad.model.risk import VESSELS, Prediction, RiskThresholds, make_prediction

FAKE_SHA256 = hashlib.sha256(b"ecgcad fake predictor").hexdigest()


class FakePredictor:
    """Deterministic fake of the torch predictor.

    Parameters
    ----------
    fixed:
        Probabilities per vessel returned for every ECG (overrides the hash).
    thresholds:
        Risk thresholds (default: paper defaults).
    demonstration:
        Pretend to be a demonstration model (reports carry the disclaimer).
    fail_with:
        An exception raised by :meth:`predict` (e.g. ``ModelError("boom")``), or a callable taking the
        batch and returning one to raise (or ``None`` to go on).
    max_batch:
        Largest batch accepted in one call; more raises :class:`ModelError`, so a worker's batching is
        tested.
    name, version:
        Give the model version ``"<name>-<version>+<sha8>"``.
    """

    def __init__(
        self,
        *,
        fixed: Mapping[str, float] | None = None,
        thresholds: RiskThresholds | None = None,
        demonstration: bool = False,
        fail_with: BaseException | Callable[[np.ndarray], BaseException | None] | None = None,
        max_batch: int = 64,
        name: str = "fake",
        version: str = "0.0.0",
    ) -> None:
        if fixed is not None and set(fixed) != set(VESSELS):
            raise ValueError(f"fixed must name exactly {list(VESSELS)}")
        self.fixed = dict(fixed) if fixed is not None else None
        self.thresholds = thresholds or RiskThresholds(
            high={"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}
        )
        self.demonstration = demonstration
        self.fail_with = fail_with
        self.max_batch = max_batch
        self.model_name = name
        self.checkpoint_sha256 = hashlib.sha256(f"{FAKE_SHA256}{name}{version}".encode()).hexdigest()
        self.model_version = f"{name}-{version}+{self.checkpoint_sha256[:8]}"
        self.recipe: dict[str, Any] = VESSEL_RECIPE.to_dict()
        #: Batch size of every :meth:`predict` call, in order.
        self.calls: list[int] = []

    def describe(self) -> dict[str, Any]:
        """What is recorded with each result."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "checkpoint_sha256": self.checkpoint_sha256,
            "preprocessing": dict(self.recipe),
            "thresholds": self.thresholds.to_dict(),
            "demonstration": self.demonstration,
            "device": "fake",
        }

    @staticmethod
    def probabilities_for(signal: np.ndarray) -> dict[str, float]:
        """The hash-derived probabilities of one ``(12, n)`` signal (what :meth:`predict` returns)."""
        data = np.ascontiguousarray(np.nan_to_num(np.asarray(signal, dtype=np.float32))).tobytes()
        digest = hashlib.sha256(data).digest()
        return {v: int.from_bytes(digest[4 * k : 4 * k + 4], "big") / 2**32 for k, v in enumerate(VESSELS)}

    def predict_proba(self, signals: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, 4)``."""
        arr = np.asarray(signals)
        if arr.ndim != 3 or arr.shape[1] != 12:
            raise ModelError(f"expected signals of shape (B, 12, n), got {arr.shape}")
        if len(arr) > self.max_batch:
            raise ModelError(f"batch of {len(arr)} exceeds max_batch {self.max_batch}")
        self.calls.append(len(arr))
        error = self.fail_with(arr) if callable(self.fail_with) else self.fail_with
        if error is not None:
            raise error
        rows = [self.fixed or self.probabilities_for(s) for s in arr]
        return np.array([[r[v] for v in VESSELS] for r in rows], dtype=np.float64).reshape(-1, 4)

    def predict(self, signals: np.ndarray) -> list[Prediction]:
        """One :class:`~ecgcad.model.risk.Prediction` per ECG."""
        probs = self.predict_proba(signals)
        return [make_prediction(dict(zip(VESSELS, row, strict=True)), self.thresholds) for row in probs]
