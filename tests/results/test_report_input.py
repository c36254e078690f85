"""StenosisReportInput refuses what would make a half-valid report; derived values are deterministic."""

from __future__ import annotations

import pytest

from ecgcad.errors import BuildError
from ecgcad.integration.reports.content import derive_uid, is_valid_uid
from tests.results.conftest import make_input, not_evaluated_input


@pytest.mark.parametrize(
    "over",
    [
        {"probabilities": {"rca": 0.1, "lm": 0.1, "lad": 0.1}},
        {"probabilities": {"rca": 1.5, "lm": 0.1, "lad": 0.1, "lcx": 0.1}},
        {"flags": {"rca": False, "lm": False, "lad": False, "lcx": True}},
        {"thresholds": {"rca": 0.15, "lm": 0.01, "lad": 0.15}},
        {"checkpoint_sha256": "xyz"},
        {"result_version": 0},
        {"result_id": 0},
        {"model_version": " "},
        {"not_evaluated_reason": ("AGE", "too young")},
        {"explanations": {"rca": [{"lead": "V7", "start": 0, "end": 10}]}},
        {"explanations": {"rca": [{"lead": "V1", "start": 10, "end": 5}]}},
        {"source_dataset_bytes": b"not dicom"},
        {"preprocessing": {"f": object()}},
    ],
)
def test_invalid_scored_inputs_are_refused(ecg_dataset, ecg_bytes, over):
    with pytest.raises(BuildError):
        make_input(ecg_dataset, ecg_bytes, **over)


def test_not_evaluated_needs_a_coded_reason_and_no_scores(ecg_dataset, ecg_bytes):
    with pytest.raises(BuildError):
        not_evaluated_input(ecg_dataset, ecg_bytes, not_evaluated_reason=None)
    with pytest.raises(BuildError):
        not_evaluated_input(ecg_dataset, ecg_bytes, not_evaluated_reason=("bad code", "x"))
    with pytest.raises(BuildError):
        not_evaluated_input(ecg_dataset, ecg_bytes, probabilities={"rca": 0.1})


def test_explanation_windows_in_samples_or_seconds(ecg_dataset, ecg_bytes):
    inp = make_input(ecg_dataset, ecg_bytes)
    assert inp.explanation_windows_s("rca") == [("III", 2.0, 2.8)]
    assert inp.explanation_windows_s("lcx") == [("V5", 6.0, 6.8)]
    assert inp.flagged_vessels == ["rca", "lcx"] and inp.any_flagged


def test_derived_uids_are_valid_and_stable():
    uid = derive_uid("sr", "1.2.3", "v1", 1)
    assert uid == derive_uid("sr", "1.2.3", "v1", 1) and is_valid_uid(uid) and uid.startswith("2.25.")
    assert uid != derive_uid("sr", "1.2.3", "v1", 2)
    with pytest.raises(BuildError):
        derive_uid("x", uid_root="1.02.3")
