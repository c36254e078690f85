"""The validated input of every outbound result object (DICOM SR, Encapsulated PDF, HL7 ORU^R01).

:class:`StenosisReportInput` gathers everything the builders in :mod:`ecgcad.integration.reports.sr`,
:mod:`ecgcad.integration.reports.pdf` and :mod:`ecgcad.integration.reports.oru` need, and checks it once, in its
constructor, so that the builders never produce a half-valid object (validated in the constructor).

Conventions
-----------
- Vessels are keyed ``"rca"``, ``"lm"``, ``"lad"``, ``"lcx"`` (model output order, :data:`VESSELS`).
- ``explanations`` maps a vessel to its top windows, each ``{"lead": "V2", "start": s, "end": e}``.
  ``start``/``end`` are **sample indices** into ``signal`` (500 Hz canonical: 0 … 5000, end exclusive)
  when they are ``int``; when they are ``float`` they are **seconds** from the start of ``signal``.
  :meth:`StenosisReportInput.explanation_windows_s` returns every window in seconds.
- ``source_key`` identifies the source ECG for deterministic UIDs: the source SOP Instance UID when
  there is one, else an explicit ``source_key``, else a hash of the copied identifiers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from ecgcad.errors import BuildError
from ecgcad.integration.formats.ecg import LEADS, TARGET_RATE_HZ, EcgIdentifiers
from ecgcad.vessels import VESSELS

#: Vessel keys in model output order.

#: Display names of the vessels.
VESSEL_NAMES: dict[str, str] = {
    "rca": "Right coronary artery (RCA)",
    "lm": "Left main coronary artery (LM)",
    "lad": "Left anterior descending artery (LAD)",
    "lcx": "Left circumflex artery (LCX)",
}

#: The disclaimer every report of a demonstration model carries.
DEMONSTRATION_DISCLAIMER = "DEMONSTRATION MODEL — NOT FOR CLINICAL USE"

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` is a syntactically valid DICOM UID (digits and dots, ≤ 64 characters)."""
    return bool(uid) and len(uid) <= 64 and bool(_UID_RE.match(uid))


@dataclasses.dataclass(frozen=True, slots=True)
class PredecessorReference:
    """The SR (or PDF) that a corrected result replaces (PredecessorDocumentsSequence).

    Parameters
    ----------
    sop_class_uid:
        SOP Class UID of the superseded object.
    sop_instance_uid:
        SOP Instance UID of the superseded object.
    series_instance_uid:
        Its Series Instance UID; ``None`` = the deterministic SR series of this source and model version
        (which is where :func:`ecgcad.integration.reports.sr.build_stenosis_sr` puts every version).
    study_instance_uid:
        Its Study Instance UID; ``None`` = the same study as the report.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None

    def __post_init__(self) -> None:
        for name in ("sop_class_uid", "sop_instance_uid", "series_instance_uid", "study_instance_uid"):
            value = getattr(self, name)
            if value is not None and not is_valid_uid(value):
                raise BuildError(f"predecessor {name} is not a valid UID: {value!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class StenosisReportInput:
    """Everything one stenosis report needs, validated on construction.

    Parameters
    ----------
    identifiers:
        Identifiers copied unchanged from the source ECG.
    result_id:
        Database id of the result (≥ 1); part of HL7 control ids and the PDF.
    result_version:
        1 for the first result of this ECG and model version, > 1 for a correction.
    scorable:
        False when the ECG failed the quality / intended-use gate (a "not evaluated" report).
    probabilities:
        Probability per vessel in [0, 1], keys :data:`VESSELS` (empty when not scorable).
    thresholds:
        High-risk threshold per vessel in [0, 1], keys :data:`VESSELS`.
    flags:
        Whether each vessel is flagged (``probability >= threshold``), keys :data:`VESSELS`
        (empty when not scorable). Must agree with ``probabilities`` and ``thresholds``.
    model_name, model_version:
        Model identity (e.g. ``"ecgfounder-cad4"``, ``"1.0.0"``).
    checkpoint_sha256:
        SHA-256 of the checkpoint file (64 lower-case hex digits).
    preprocessing:
        The preprocessing recipe stored in the checkpoint metadata (JSON-serialisable).
    window_policy:
        Which 10 s of a longer record were scored (``"first"`` / ``"best"``).
    demonstration:
        The checkpoint is a demonstration model: every report carries :data:`DEMONSTRATION_DISCLAIMER`.
    intended_use:
        The configured intended-use text.
    result_time:
        When the result was computed (timezone-aware or naive local time).
    not_evaluated_reason:
        ``(code, text)`` when not scorable (e.g. ``("AGE", "Patient younger than 18 years")``);
        ``code`` is 1–16 characters ``[A-Z0-9_-]``. Required iff ``scorable`` is False.
    source_dataset_bytes:
        The original DICOM ECG (Part 10 bytes) when the source was DICOM: SR evidence and the patient
        and study attributes (with issuers) are copied from it.
    signal:
        Canonical signal for the PDF tracing: float32 mV, shape ``(12, n)`` at ``sampling_rate``.
    sampling_rate:
        Samples per second of ``signal`` and ``median_beats`` (default 500).
    explanations:
        Per vessel, a list of ``{"lead", "start", "end"}`` windows (see module docstring for units).
    median_beats:
        Median (representative) beats, shape ``(12, m)``, mV, at ``sampling_rate``.
    predecessor:
        The SR being corrected (required when ``result_version > 1`` for the SR; optional otherwise).
    placer_order_number, filler_order_number, accession_number:
        Order information; ``None`` falls back to ``identifiers``.
    requested_procedure_id:
        Requested Procedure ID of the order, when known (ReferencedRequestSequence).
    source_key:
        Overrides the key used to derive result UIDs (see module docstring).
    """

    identifiers: EcgIdentifiers
    result_id: int
    result_version: int
    scorable: bool
    probabilities: Mapping[str, float]
    thresholds: Mapping[str, float]
    flags: Mapping[str, bool]
    model_name: str
    model_version: str
    checkpoint_sha256: str
    preprocessing: Mapping[str, Any]
    window_policy: str
    demonstration: bool
    intended_use: str
    result_time: dt.datetime
    not_evaluated_reason: tuple[str, str] | None = None
    source_dataset_bytes: bytes | None = None
    signal: np.ndarray | None = None
    sampling_rate: float = float(TARGET_RATE_HZ)
    explanations: Mapping[str, list[dict[str, Any]]] | None = None
    median_beats: np.ndarray | None = None
    predecessor: PredecessorReference | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    accession_number: str | None = None
    requested_procedure_id: str | None = None
    source_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.identifiers, EcgIdentifiers):
            raise BuildError("identifiers must be an EcgIdentifiers")
        if not isinstance(self.result_id, int) or isinstance(self.result_id, bool) or self.result_id < 1:
            raise BuildError(f"result_id must be a positive int, got {self.result_id!r}")
        if (
            not isinstance(self.result_version, int)
            or isinstance(self.result_version, bool)
            or self.result_version < 1
        ):
            raise BuildError(f"result_version must be an int >= 1, got {self.result_version!r}")
        self._check_thresholds()
        if self.scorable:
            self._check_scores()
            if self.not_evaluated_reason is not None:
                raise BuildError("a scorable result has no not_evaluated_reason")
        else:
            if self.probabilities or self.flags:
                raise BuildError("a not-evaluated result carries no probabilities or flags")
            self._check_reason()
        for name in ("model_name", "model_version", "window_policy", "intended_use"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise BuildError(f"{name} must be a non-empty string")
        if not isinstance(self.checkpoint_sha256, str) or not _SHA256_RE.match(self.checkpoint_sha256):
            raise BuildError("checkpoint_sha256 must be 64 lower-case hexadecimal digits")
        try:
            json.dumps(dict(self.preprocessing), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise BuildError(f"preprocessing must be JSON-serialisable: {exc}") from exc
        if not isinstance(self.result_time, dt.datetime):
            raise BuildError("result_time must be a datetime")
        if not self.sampling_rate > 0:
            raise BuildError("sampling_rate must be positive")
        if self.source_dataset_bytes is not None:
            self._check_source()
        if self.signal is not None:
            self._check_array("signal", self.signal, min_samples=self.sampling_rate)
        if self.median_beats is not None:
            self._check_array("median_beats", self.median_beats, min_samples=10)
        if self.explanations is not None:
            self._check_explanations()
        if self.predecessor is not None and not isinstance(self.predecessor, PredecessorReference):
            raise BuildError("predecessor must be a PredecessorReference")
        if self.source_key is not None and not self.source_key.strip():
            raise BuildError("source_key must be non-empty when given")

    # -- validation helpers -------------------------------------------------------------------------

    def _check_thresholds(self) -> None:
        if set(self.thresholds) != set(VESSELS):
            raise BuildError(f"thresholds must have exactly the keys {VESSELS}")
        for vessel, value in self.thresholds.items():
            if not _is_unit_interval(value):
                raise BuildError(f"threshold for {vessel} must be in [0, 1], got {value!r}")

    def _check_scores(self) -> None:
        if set(self.probabilities) != set(VESSELS):
            raise BuildError(f"probabilities must have exactly the keys {VESSELS}")
        if set(self.flags) != set(VESSELS):
            raise BuildError(f"flags must have exactly the keys {VESSELS}")
        for vessel in VESSELS:
            p = self.probabilities[vessel]
            if not _is_unit_interval(p):
                raise BuildError(f"probability for {vessel} must be in [0, 1], got {p!r}")
            flag = self.flags[vessel]
            if not isinstance(flag, bool):
                raise BuildError(f"flag for {vessel} must be a bool")
            if flag != (float(p) >= float(self.thresholds[vessel])):
                raise BuildError(f"flag for {vessel} disagrees with its probability and threshold")

    def _check_reason(self) -> None:
        reason = self.not_evaluated_reason
        if reason is None or len(reason) != 2:
            raise BuildError("a not-evaluated result needs not_evaluated_reason = (code, text)")
        code, text = reason
        if not isinstance(code, str) or not re.fullmatch(r"[A-Z0-9_-]{1,16}", code):
            raise BuildError(f"not-evaluated reason code must match [A-Z0-9_-]{{1,16}}, got {code!r}")
        if not isinstance(text, str) or not text.strip() or len(text) > 64:
            raise BuildError("not-evaluated reason text must be 1–64 characters")

    def _check_source(self) -> None:
        from pydicom.errors import InvalidDicomError
        from pydicom.filereader import read_partial

        # Only the four UIDs are checked: reading stops after the last of them, so the waveform and its
        # annotations (most of an ECG object) are never parsed.
        last = 0x0020000E  # SeriesInstanceUID
        try:
            ds = read_partial(
                io.BytesIO(self.source_dataset_bytes or b""),
                stop_when=lambda tag, _vr, _length: tag > last,
                specific_tags=[0x00080016, 0x00080018, 0x0020000D, 0x0020000E],
            )
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise BuildError(f"source_dataset_bytes is not a readable DICOM object: {exc}") from exc
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not ds.get(keyword):
                raise BuildError(f"source dataset lacks {keyword}")

    def _check_array(self, name: str, array: np.ndarray, *, min_samples: float) -> None:
        if not isinstance(array, np.ndarray) or array.ndim != 2 or array.shape[0] != len(LEADS):
            raise BuildError(f"{name} must be an array of shape (12, n)")
        if array.shape[1] < min_samples:
            raise BuildError(f"{name} is too short ({array.shape[1]} samples)")

    def _check_explanations(self) -> None:
        assert self.explanations is not None
        unknown = set(self.explanations) - set(VESSELS)
        if unknown:
            raise BuildError(f"explanations for unknown vessels: {sorted(unknown)}")
        for vessel, windows in self.explanations.items():
            for window in windows:
                if set(window) < {"lead", "start", "end"} or window.get("lead") not in LEADS:
                    raise BuildError(f"explanation window for {vessel} needs lead (one of LEADS), start, end")
                start, end = window["start"], window["end"]
                if (
                    type(start) is not type(end)
                    or not isinstance(start, int | float)
                    or isinstance(start, bool)
                ):
                    raise BuildError(
                        f"explanation window for {vessel}: start and end must both be int or float"
                    )
                if not 0 <= start < end:
                    raise BuildError(f"explanation window for {vessel}: need 0 <= start < end")

    # -- derived values -----------------------------------------------------------------------------

    @property
    def any_flagged(self) -> bool:
        """True when at least one vessel is flagged."""
        return any(self.flags.values())

    @property
    def flagged_vessels(self) -> list[str]:
        """Flagged vessel keys in :data:`VESSELS` order."""
        return [v for v in VESSELS if self.flags.get(v)]

    @property
    def effective_placer_order_number(self) -> str | None:
        """The placer order number (argument, else identifiers)."""
        return self.placer_order_number or self.identifiers.placer_order_number

    @property
    def effective_filler_order_number(self) -> str | None:
        """The filler order number (argument, else identifiers)."""
        return self.filler_order_number or self.identifiers.filler_order_number

    @property
    def effective_accession_number(self) -> str | None:
        """The accession number (argument, else identifiers)."""
        return self.accession_number or self.identifiers.accession_number

    @property
    def uid_source_key(self) -> str:
        """The key result UIDs derive from: source SOP Instance UID, ``source_key``, or an identifier hash."""
        if self.identifiers.sop_instance_uid:
            return self.identifiers.sop_instance_uid
        if self.source_key:
            return self.source_key
        blob = json.dumps(self.identifiers.to_dict(), sort_keys=True).encode("utf-8")
        return "identifiers-sha256:" + hashlib.sha256(blob).hexdigest()

    @property
    def disclaimer(self) -> str | None:
        """:data:`DEMONSTRATION_DISCLAIMER` for a demonstration model, else ``None``."""
        return DEMONSTRATION_DISCLAIMER if self.demonstration else None

    def algorithm_parameters(self) -> list[str]:
        """Algorithm parameters as ``key=value`` strings (TID 4019 / NTE): thresholds, window policy, recipe."""
        params = [f"threshold_{v}={float(self.thresholds[v]):g}" for v in VESSELS]
        params.append(f"window_policy={self.window_policy}")
        params.append(f"checkpoint_sha256={self.checkpoint_sha256}")
        params.append(
            "preprocessing=" + json.dumps(dict(self.preprocessing), sort_keys=True, separators=(",", ":"))
        )
        return params

    def explanation_windows_s(self, vessel: str) -> list[tuple[str, float, float]]:
        """The explanation windows of ``vessel`` as ``(lead, start_s, end_s)``."""
        out: list[tuple[str, float, float]] = []
        for window in (self.explanations or {}).get(vessel, []):
            start, end = window["start"], window["end"]
            if isinstance(start, int):
                out.append((window["lead"], start / self.sampling_rate, end / self.sampling_rate))
            else:
                out.append((window["lead"], float(start), float(end)))
        return out


def _is_unit_interval(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        return False
    v = float(value)
    return math.isfinite(v) and 0.0 <= v <= 1.0


# -- deterministic UIDs ---------------------------------------------------------------------------------

#: Namespace of ecgcad's UUID-derived UIDs (a fixed random UUID; never change it, or resends get new UIDs).
UID_NAMESPACE = uuid.UUID("5d0e9f3c-8a2b-4c61-9d57-3e2f0b7a4c19")


def derive_uid(*parts: object, uid_root: str | None = None) -> str:
    """A deterministic DICOM UID for ``parts``.

    Without ``uid_root`` the UID is ``2.25.<decimal of uuid5(UID_NAMESPACE, "|".join(parts))>`` — the
    UUID-derived form of PS3.5 §B.2, which needs no registered root (at most 44 characters). With an
    organisation's registered ``uid_root`` the UID is ``<uid_root>.<decimal digits of the SHA-256 of the
    parts>``, cut to 64 characters.

    Parameters
    ----------
    parts:
        Values that identify the object (e.g. ``"sr", source SOP Instance UID, model version, 1``).
    uid_root:
        Optional registered UID root (digits and dots, at most 40 characters).

    Returns
    -------
    str
        The UID.

    Raises
    ------
    BuildError
        ``uid_root`` is not a valid UID prefix.
    """
    text = "|".join(str(p) for p in parts)
    if uid_root is None:
        return "2.25." + str(uuid.uuid5(UID_NAMESPACE, text).int)
    if not is_valid_uid(uid_root) or len(uid_root) > 40:
        raise BuildError(f"uid_root must be a valid UID of at most 40 characters, got {uid_root!r}")
    digits = str(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big"))
    suffix = digits[: 64 - len(uid_root) - 1].lstrip("0") or "1"
    return f"{uid_root}.{suffix}"


def study_instance_uid_for(inp: StenosisReportInput, *, uid_root: str | None = None) -> str:
    """The report's Study Instance UID: copied from the source, else derived from the source key."""
    return inp.identifiers.study_instance_uid or derive_uid("study", inp.uid_source_key, uid_root=uid_root)


def device_uid_for(inp: StenosisReportInput, *, uid_root: str | None = None) -> str:
    """Device UID of the scoring algorithm: changes with the model name, version and checkpoint."""
    return derive_uid("device", inp.model_name, inp.model_version, inp.checkpoint_sha256, uid_root=uid_root)


def result_uids(inp: StenosisReportInput, kind: str, *, uid_root: str | None = None) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` of the ``kind`` (``"sr"``/``"pdf"``) object of ``inp``.

    The series depends on (source key, model version) only, so that corrections of a result land in the
    same series; the instance also depends on ``result_version``. A resend of one result version
    therefore has the same UIDs, and PACS recognises it as the same object.
    """
    series = derive_uid(f"{kind}-series", inp.uid_source_key, inp.model_version, uid_root=uid_root)
    sop = derive_uid(kind, inp.uid_source_key, inp.model_version, inp.result_version, uid_root=uid_root)
    return series, sop
