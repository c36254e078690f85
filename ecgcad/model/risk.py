"""Risk bands and flags per vessel from configured thresholds, and the :class:`Prediction` they form."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ecgcad.errors import ModelError
from ecgcad.vessels import VESSELS

if TYPE_CHECKING:
    from ecgcad.config import ThresholdSettings

#: Carried by every report made with a checkpoint whose metadata says ``demonstration: true``.
DISCLAIMER = "DEMONSTRATION MODEL — NOT FOR CLINICAL USE"

#: Vessels in model output order.

#: Band names, lowest to highest.
BAND_LOW = "low"
BAND_SCREENING = "screening-positive"
BAND_HIGH = "high"


@dataclasses.dataclass(frozen=True, slots=True)
class RiskThresholds:
    """Per-vessel probability cut-offs.

    Parameters
    ----------
    high:
        ``p ≥ high[v]`` → band ``"high"`` and vessel ``v`` flagged (paper: 0.15 RCA/LAD/LCX, 0.01 LM).
    screening:
        Optional lower cut (e.g. at 95 % specificity): ``screening[v] ≤ p < high[v]`` → band
        ``"screening-positive"`` (not flagged). Vessels without one have no such band.
    """

    high: Mapping[str, float]
    screening: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.high) != set(VESSELS):
            raise ModelError(f"thresholds must name exactly {list(VESSELS)}, got {sorted(self.high)}")
        for name, table in (("high", self.high), ("screening", self.screening)):
            for vessel, value in table.items():
                if vessel not in VESSELS or not 0.0 <= float(value) <= 1.0:
                    raise ModelError(f"{name} threshold for {vessel!r} must be in [0, 1], got {value!r}")

    @classmethod
    def from_settings(cls, thresholds: ThresholdSettings) -> RiskThresholds:
        """From :class:`ecgcad.config.ThresholdSettings` (``screening_<vessel>`` fields optional)."""
        screening = {
            v: float(getattr(thresholds, f"screening_{v}"))
            for v in VESSELS
            if getattr(thresholds, f"screening_{v}", None) is not None
        }
        return cls(high={k: float(x) for k, x in thresholds.as_dict().items()}, screening=screening)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """JSON-serialisable form (recorded with results)."""
        return {"high": dict(self.high), "screening": dict(self.screening)}

    def band(self, vessel: str, probability: float) -> str:
        """The risk band of ``probability`` for ``vessel``."""
        if probability >= self.high[vessel]:
            return BAND_HIGH
        cut = self.screening.get(vessel)
        if cut is not None and probability >= cut:
            return BAND_SCREENING
        return BAND_LOW


@dataclasses.dataclass(frozen=True, slots=True)
class Prediction:
    """The model's answer for one ECG.

    Attributes
    ----------
    probabilities:
        Sigmoid probability per vessel (keys :data:`VESSELS`).
    bands:
        Risk band per vessel (``"low"``, ``"screening-positive"``, ``"high"``).
    flags:
        ``True`` where the vessel is at or above its high-risk threshold.
    """

    probabilities: dict[str, float]
    bands: dict[str, str]
    flags: dict[str, bool]

    @property
    def any_flagged(self) -> bool:
        """True when any vessel is flagged (the ECG is flagged)."""
        return any(self.flags.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "probabilities": dict(self.probabilities),
            "bands": dict(self.bands),
            "flags": dict(self.flags),
            "any_flagged": self.any_flagged,
        }


def make_prediction(probabilities: Mapping[str, float], thresholds: RiskThresholds) -> Prediction:
    """Bands and flags for ``probabilities`` (one per vessel) under ``thresholds``."""
    probs = {v: float(probabilities[v]) for v in VESSELS}
    bands = {v: thresholds.band(v, p) for v, p in probs.items()}
    flags = {v: p >= thresholds.high[v] for v, p in probs.items()}
    return Prediction(probabilities=probs, bands=bands, flags=flags)
