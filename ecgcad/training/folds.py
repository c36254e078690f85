"""Cross-validation folds grouped by patient and stratified on the 4-bit label pattern (seeded).

Every ECG of one patient lands in the same fold (no patient is both trained on and validated on), and each
fold gets about the same share of every label pattern (``rca·8 + lm·4 + lad·2 + lcx`` → 16 strata). The
assignment is greedy, like scikit-learn's ``StratifiedGroupKFold(shuffle=True)``: patients are shuffled
with the seed, taken largest first, and each goes to the fold where the spread of per-pattern shares
across folds grows least (ties: the smaller fold).
"""

from __future__ import annotations

import numpy as np


def label_patterns(labels: np.ndarray) -> np.ndarray:
    """The 4-bit pattern of each row of ``(n, 4)`` 0/1 labels: ``rca·8 + lm·4 + lad·2 + lcx``."""
    y = np.asarray(labels).astype(np.int64)
    weights = 1 << np.arange(y.shape[1] - 1, -1, -1)
    return (y * weights).sum(axis=1)


def grouped_stratified_folds(
    labels: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Fold number (0 … ``n_folds − 1``) of every ECG.

    Parameters
    ----------
    labels:
        ``(n, 4)`` 0/1 labels.
    groups:
        ``(n,)`` patient identifiers (any hashable values).
    n_folds:
        Number of folds (≥ 2, at most the number of patients).
    seed:
        Seed of the patient shuffle; the same seed gives the same folds.

    Returns
    -------
    numpy.ndarray
        int ``(n,)``.

    Raises
    ------
    ValueError
        Fewer patients than folds, or mismatched lengths.
    """
    patterns = label_patterns(labels)
    groups = np.asarray(groups)
    if len(groups) != len(patterns):
        raise ValueError("labels and groups differ in length")
    unique, group_index = np.unique(groups.astype(str), return_inverse=True)
    if n_folds < 2 or len(unique) < n_folds:
        raise ValueError(f"need at least {n_folds} patients for {n_folds} folds (have {len(unique)})")
    n_strata = 1 << np.asarray(labels).shape[1]
    counts = np.zeros((len(unique), n_strata), dtype=np.int64)
    np.add.at(counts, (group_index, patterns), 1)
    totals = np.maximum(counts.sum(axis=0), 1)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    # Largest patients first (stable, so the shuffle breaks ties), then the more skewed ones.
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]

    fold_counts = np.zeros((n_folds, n_strata), dtype=np.int64)
    fold_of_group = np.empty(len(unique), dtype=np.int64)
    for g in order:
        best, best_key = 0, (np.inf, np.inf)
        for f in range(n_folds):
            fold_counts[f] += counts[g]
            spread = float(np.std(fold_counts / totals, axis=0).mean())
            fold_counts[f] -= counts[g]
            key = (round(spread, 12), int(fold_counts[f].sum()))
            if key < best_key:
                best, best_key = f, key
        fold_counts[best] += counts[g]
        fold_of_group[g] = best
    return fold_of_group[group_index]


def fixed_split(labels: np.ndarray, groups: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """A grouped, stratified train / validation / test split: ``"train"``, ``"validation"``, ``"test"``.

    Fold 0 of :func:`grouped_stratified_folds` is the test set, fold 1 the validation set, the rest train
    (so 60 / 20 / 20 % with the default 5 folds).
    """
    folds = grouped_stratified_folds(labels, groups, n_folds, seed)
    out = np.full(len(folds), "train", dtype=object)
    out[folds == 0] = "test"
    out[folds == 1] = "validation"
    return out
