"""Cross-validation folds keep each patient in one fold, balance the 4-bit label patterns and follow the seed."""

from __future__ import annotations

import numpy as np
import pytest

from ecgcad.training.folds import fixed_split, grouped_stratified_folds, label_patterns


def _cohort(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(300), rng.integers(1, 4, 300))  # 1–3 ECGs per patient
    per_patient = (rng.random((300, 4)) < [0.3, 0.1, 0.3, 0.25]).astype(np.uint8)
    return per_patient[patients], np.array([f"P{p}" for p in patients])


def test_label_pattern_is_the_four_bit_code() -> None:
    assert label_patterns(np.array([[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]])).tolist() == [8, 1, 15]


def test_no_patient_is_in_two_folds() -> None:
    labels, groups = _cohort()
    folds = grouped_stratified_folds(labels, groups, 5, seed=1)
    for g in np.unique(groups):
        assert len(set(folds[groups == g])) == 1


def test_folds_are_balanced_in_size_and_label_patterns() -> None:
    labels, groups = _cohort()
    folds = grouped_stratified_folds(labels, groups, 5, seed=1)
    sizes = np.bincount(folds)
    assert sizes.min() >= 0.85 * len(folds) / 5
    patterns = label_patterns(labels)
    for pattern in np.unique(patterns):
        total = (patterns == pattern).sum()
        if total < 25:
            continue
        shares = [((patterns == pattern) & (folds == f)).sum() / total for f in range(5)]
        assert max(shares) - min(shares) < 0.12, (pattern, shares)
    for k in range(4):  # each vessel's prevalence is about the same in every fold
        prev = [labels[folds == f, k].mean() for f in range(5)]
        assert max(prev) - min(prev) < 0.06


def test_folds_follow_the_seed() -> None:
    labels, groups = _cohort()
    a = grouped_stratified_folds(labels, groups, 5, seed=7)
    assert np.array_equal(a, grouped_stratified_folds(labels, groups, 5, seed=7))
    assert not np.array_equal(a, grouped_stratified_folds(labels, groups, 5, seed=8))


def test_too_few_patients_is_an_error() -> None:
    with pytest.raises(ValueError):
        grouped_stratified_folds(np.zeros((4, 4)), np.array(["a", "a", "b", "b"]), 5)


def test_fixed_split_is_grouped_and_sixty_twenty_twenty() -> None:
    labels, groups = _cohort()
    split = fixed_split(labels, groups, seed=2)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    for name, share in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        assert abs((split == name).mean() - share) < 0.05
