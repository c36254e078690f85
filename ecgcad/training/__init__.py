"""Training: data sets, the training recipe, folds, evaluation, thresholds and model comparison.

Never imported by ``ecgcad serve``; inference lives in :mod:`ecgcad.model`.
"""
