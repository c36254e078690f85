"""Decode → gate → window: the one path from an ECG's bytes to the model's (12, 5000) input.

Scoring (:mod:`ecgcad.pipeline.scoring`), reports (:mod:`ecgcad.pipeline.reports`), ``ecgcad score`` /
``ecgcad inspect`` and data-set building (:mod:`ecgcad.training.dataset`) all call :func:`prepare_window`
(or :func:`prepare_bytes` / :func:`prepare_file` around it), so that what the service scores, what a report
draws and what a model is trained on are the same window of the same signal.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ecgcad.errors import DecodeError, EcgcadError, NotScorableError
from ecgcad.integration.formats.gate import GateVerdict, check
from ecgcad.integration.formats.signal import CanonicalSignal, canonical_window

if TYPE_CHECKING:
    from ecgcad.config import GateSettings
    from ecgcad.integration.formats.ecg import Ecg

#: Why no window came out: the bytes did not decode, the gate refused the ECG, or no window could be cut.
Failure = Literal["decode", "gate", "window"]


@dataclasses.dataclass(slots=True)
class PreparedEcg:
    """The outcome of :func:`prepare_window` for one ECG.

    ``window`` is set exactly when the ECG is to be scored; otherwise ``failure`` says which step stopped it
    and ``failure_text`` why (the gate's reasons are in ``verdict``).
    """

    ecg: Ecg | None = None
    verdict: GateVerdict | None = None
    window: CanonicalSignal | None = None
    failure: Failure | None = None
    failure_text: str = ""

    @property
    def signal(self) -> np.ndarray | None:
        """The model input: ``(12, 5000)`` float32 millivolts, NaN (missing leads) as 0; ``None`` if not scored."""
        if self.window is None:
            return None
        return np.nan_to_num(np.asarray(self.window.signal, dtype=np.float32), nan=0.0)


def prepare_window(ecg: Ecg, settings: GateSettings, *, gate: bool = True) -> PreparedEcg:
    """Gate ``ecg`` (unless ``gate`` is false) and cut the canonical window of ``settings.window_policy``.

    The gate's own window is reused when it made one, so that an ECG is resampled once.
    """
    out = PreparedEcg(ecg=ecg)
    if gate:
        out.verdict = check(ecg, settings)
        if not out.verdict.scorable:
            out.failure = "gate"
            out.failure_text = "; ".join(r.text for r in out.verdict.reasons)
            return out
        out.window = out.verdict.window
    if out.window is None:
        try:
            out.window = canonical_window(ecg, settings.window_policy)
        except NotScorableError as exc:
            out.failure, out.failure_text = "window", str(exc)
    return out


def prepare_bytes(
    data: bytes, settings: GateSettings, *, filename: str | None = None, gate: bool = True
) -> PreparedEcg:
    """Decode ``data`` (any supported format, detected by content) and :func:`prepare_window` it."""
    from ecgcad.integration.formats.readers import decode

    try:
        ecg = decode(data, filename=filename)
    except DecodeError as exc:
        return PreparedEcg(failure="decode", failure_text=str(exc))
    return prepare_window(ecg, settings, gate=gate)


def prepare_file(path: Path, settings: GateSettings) -> tuple[np.ndarray | None, list[dict[str, Any]]]:
    """Read, decode, gate and window one file: ``(signal or None, reasons)`` as ``ecgcad score`` prints them.

    Reasons are the gate's (``code``/``text``/``leads``) plus ``read-error``, ``decode-error`` or
    ``window-error`` when that step failed.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [{"code": "read-error", "text": exc.strerror or str(exc)}]
    try:
        prepared = prepare_bytes(data, settings, filename=path.name)
    except EcgcadError as exc:  # a reader's other typed errors are a failed decode too
        prepared = PreparedEcg(failure="decode", failure_text=str(exc))
    reasons = [r.to_dict() for r in prepared.verdict.reasons] if prepared.verdict is not None else []
    if prepared.failure == "decode":
        return None, [{"code": "decode-error", "text": prepared.failure_text}]
    if prepared.failure == "window":
        return None, [*reasons, {"code": "window-error", "text": prepared.failure_text}]
    if prepared.failure == "gate":
        return None, reasons
    assert prepared.window is not None
    return prepared.window.signal, reasons
