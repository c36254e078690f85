"""ecgcad.model: Net1D, checkpoints, preprocessing, prediction, risk bands, explanations, the demo model.

The names below are exported lazily so that ``import ecgcad.model`` (and the CLI) does not import torch
until a model is actually needed.

Public API::

    load_checkpoint(path) -> LoadedModel              # .module (eval), .metadata, .sha256
    build_net1d(n_classes=4, use_bn=True, in_channels=12, **overrides) -> Net1D
    default_predictor(settings) -> TorchPredictor     # settings.model.checkpoint or the demo model
    Predictor (protocol), TorchPredictor, Prediction, RiskThresholds, VESSELS
    PreprocessingRecipe, preprocess(signals, recipe)
    explain(predictor, signal) -> dict ; median_beats(signal) -> (12, n) array
    DISCLAIMER
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names ``__getattr__`` returns, typed for readers and mypy
    from ecgcad.model.checkpoint import LoadedModel as LoadedModel
    from ecgcad.model.checkpoint import import_ecgfounder as import_ecgfounder
    from ecgcad.model.checkpoint import load_checkpoint as load_checkpoint
    from ecgcad.model.checkpoint import save_checkpoint as save_checkpoint
    from ecgcad.model.explain import explain as explain
    from ecgcad.model.explain import median_beats as median_beats
    from ecgcad.model.net1d import Net1D as Net1D
    from ecgcad.model.net1d import build_net1d as build_net1d
    from ecgcad.model.predictor import Predictor as Predictor
    from ecgcad.model.predictor import TorchPredictor as TorchPredictor
    from ecgcad.model.predictor import default_predictor as default_predictor
    from ecgcad.model.preprocess import PreprocessingRecipe as PreprocessingRecipe
    from ecgcad.model.preprocess import preprocess as preprocess
    from ecgcad.model.risk import DISCLAIMER as DISCLAIMER
    from ecgcad.model.risk import VESSELS as VESSELS
    from ecgcad.model.risk import Prediction as Prediction
    from ecgcad.model.risk import RiskThresholds as RiskThresholds

_EXPORTS = {
    "load_checkpoint": "ecgcad.model.checkpoint",
    "save_checkpoint": "ecgcad.model.checkpoint",
    "import_ecgfounder": "ecgcad.model.checkpoint",
    "LoadedModel": "ecgcad.model.checkpoint",
    "build_net1d": "ecgcad.model.net1d",
    "Net1D": "ecgcad.model.net1d",
    "default_predictor": "ecgcad.model.predictor",
    "Predictor": "ecgcad.model.predictor",
    "TorchPredictor": "ecgcad.model.predictor",
    "Prediction": "ecgcad.model.risk",
    "RiskThresholds": "ecgcad.model.risk",
    "VESSELS": "ecgcad.model.risk",
    "PreprocessingRecipe": "ecgcad.model.preprocess",
    "preprocess": "ecgcad.model.preprocess",
    "explain": "ecgcad.model.explain",
    "median_beats": "ecgcad.model.explain",
    "DISCLAIMER": "ecgcad.model.risk",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ecgcad.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
