"""Batched prediction: the :class:`Predictor` protocol and its torch implementation.

The worker hands a predictor micro-batches of canonical signals (``(B, 12, 5000)`` float32 mV, 500 Hz —
``ecgcad.integration.formats.signal.canonical_window(ecg).signal`` stacked) and stores one :class:`Prediction` per
ECG together with what the predictor says about itself (:meth:`Predictor.describe`).

``model_version`` is ``"<name>-<version>+<first 8 hex digits of the checkpoint SHA-256>"``, e.g.
``"demo-0.1.0+1a2b3c4d"``: two files with the same name and version but different weights get different
versions, so results stay unique per (ECG, model version).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from ecgcad.errors import ModelError
from ecgcad.model.checkpoint import DEFAULT_THRESHOLDS, LoadedModel, load_checkpoint
from ecgcad.model.fastpath import ForwardPass, resolve_optimize
from ecgcad.model.preprocess import PreprocessingRecipe, preprocess
from ecgcad.model.risk import VESSELS, Prediction, RiskThresholds, make_prediction

if TYPE_CHECKING:
    from ecgcad.config import Settings

logger = logging.getLogger(__name__)


def format_model_version(name: str, version: str, sha256: str) -> str:
    """``"<name>-<version>+<sha256[:8]>"``."""
    return f"{name}-{version}+{sha256[:8]}"


@runtime_checkable
class Predictor(Protocol):
    """What the worker, ``ecgcad score`` and the evaluation code need from a model.

    Attributes
    ----------
    model_name, model_version, checkpoint_sha256:
        Recorded with every result (see the module docstring for the version format).
    recipe:
        The preprocessing recipe dict (recorded with every result).
    demonstration:
        True for a demonstration model: every report carries the disclaimer.
    thresholds:
        The risk thresholds in force.
    max_batch:
        Largest batch one forward pass takes (``predict`` splits bigger inputs).
    """

    model_name: str
    model_version: str
    checkpoint_sha256: str
    recipe: dict[str, Any]
    demonstration: bool
    thresholds: RiskThresholds
    max_batch: int

    def predict(self, signals: np.ndarray) -> list[Prediction]:
        """One :class:`Prediction` per row of ``signals`` (``(B, 12, 5000)`` float32 mV).

        Raises
        ------
        ModelError
            Wrong shape, or the forward pass failed.
        """
        ...

    def predict_proba(self, signals: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, 4)`` float64 in :data:`~ecgcad.model.risk.VESSELS` order."""
        ...

    def describe(self) -> dict[str, Any]:
        """What is recorded with each result: name, version, SHA-256, recipe, thresholds, demonstration."""
        ...


def check_signals(signals: np.ndarray, n_samples: int) -> np.ndarray:
    """Validate a batch of canonical signals; returns it as an array.

    Raises
    ------
    ModelError
        Not ``(B, 12, n_samples)``.
    """
    arr = np.asarray(signals)
    if arr.ndim != 3 or arr.shape[1] != 12 or arr.shape[2] != n_samples:
        raise ModelError(f"expected signals of shape (B, 12, {n_samples}), got {arr.shape}")
    return arr


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cpu``; ``cuda`` / ``cuda:N``.

    Raises
    ------
    ModelError
        CUDA asked for but not available, or an unknown device string.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r} (cpu, cuda, cuda:N or auto)")
    return dev


class TorchPredictor:
    """A resident ``Net1D`` that scores batches of canonical signals.

    Preprocessing runs on the CPU (vectorised numpy/scipy, float64 then float32); the forward pass runs on
    ``device`` under ``inference_mode`` as ``optimize`` selects (:mod:`ecgcad.model.fastpath`: the
    reference module, batch-norm folded, or compiled; fp32 on the CPU, bf16 on CUDA). Batches larger than
    ``max_batch`` are split. On the CPU each ECG's probabilities do not depend on the batch it lands in
    (to 1e-6; tested for every mode).

    Parameters
    ----------
    loaded:
        From :func:`~ecgcad.model.checkpoint.load_checkpoint`; must have the 4 vessel outputs.
    thresholds:
        Risk thresholds; ``None`` → the checkpoint's ``thresholds`` metadata, else the paper defaults.
    device:
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    max_batch:
        Largest forward batch.
    warmup:
        Run one forward pass now (with ``optimize="compile"``: compile every batch bucket), so the first
        real request is not the slow one.
    optimize:
        ``auto`` (= ``fold``), ``none``, ``fold`` or ``compile`` (see :mod:`ecgcad.model.fastpath`).
    compile_cache_dir:
        Where ``compile`` caches compiled artefacts; empty → torch's default cache folder.

    Raises
    ------
    ModelError
        The checkpoint's outputs are not [rca, lm, lad, lcx], the device is unavailable, or the
        optimisation cannot run here.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        thresholds: RiskThresholds | None = None,
        device: str = "auto",
        max_batch: int = 64,
        warmup: bool = True,
        optimize: str = "auto",
        compile_cache_dir: str = "",
    ) -> None:
        if tuple(loaded.outputs) != VESSELS:
            raise ModelError(
                f"checkpoint outputs {list(loaded.outputs)[:6]} are not the vessel outputs {list(VESSELS)}"
            )
        if max_batch < 1:
            raise ModelError("max_batch must be ≥ 1")
        meta = loaded.metadata
        self.loaded = loaded
        self.model_name: str = str(meta["name"])
        self.model_version: str = format_model_version(self.model_name, str(meta["version"]), loaded.sha256)
        self.checkpoint_sha256: str = loaded.sha256
        self.preprocessing: PreprocessingRecipe = loaded.recipe
        self.recipe: dict[str, Any] = self.preprocessing.to_dict()
        self.demonstration: bool = loaded.demonstration
        self.thresholds: RiskThresholds = thresholds or RiskThresholds(
            high=dict(meta.get("thresholds") or DEFAULT_THRESHOLDS)
        )
        self.max_batch = int(max_batch)
        self.device = resolve_device(device)
        self.module = loaded.module.to(self.device).eval()
        self.optimize = resolve_optimize(optimize, self.device)
        self.forward = ForwardPass(
            self.module,
            self.device,
            self.optimize,
            max_batch=self.max_batch,
            cache_dir=compile_cache_dir or None,
        )
        if warmup:
            with torch.inference_mode():
                self.forward.warmup(int(self.module.config["in_channels"]), self.preprocessing.n_samples)
        logger.info("model %s ready on %s (optimize=%s)", self.model_version, self.device, self.optimize)

    def describe(self) -> dict[str, Any]:
        """What is recorded with each result."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "checkpoint_sha256": self.checkpoint_sha256,
            "preprocessing": dict(self.recipe),
            "thresholds": self.thresholds.to_dict(),
            "demonstration": self.demonstration,
            "device": str(self.device),
            "optimize": self.optimize,
        }

    def preprocess(self, signals: np.ndarray) -> np.ndarray:
        """Model input for canonical signals (the checkpoint's recipe)."""
        return preprocess(check_signals(signals, self.preprocessing.n_samples), self.preprocessing)

    def forward_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(B, 4)`` float32 for preprocessed input, in chunks of ``max_batch``."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), self.max_batch):
                chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + self.max_batch]))
                out.append(self.forward(chunk).numpy())
        if not out:
            return np.zeros((0, len(VESSELS)), np.float32)
        return np.concatenate(out)

    def predict_proba(self, signals: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, 4)`` float64, :data:`~ecgcad.model.risk.VESSELS` order."""
        try:
            logits = self.forward_preprocessed(self.preprocess(signals)).astype(np.float64)
        except ModelError:
            raise
        except RuntimeError as exc:  # torch errors (out of memory, device lost)
            raise ModelError(f"forward pass failed: {exc}") from exc
        return 1.0 / (1.0 + np.exp(-logits))

    def predict(self, signals: np.ndarray) -> list[Prediction]:
        """One :class:`Prediction` per ECG (see :class:`Predictor`)."""
        probs = self.predict_proba(signals)
        return [make_prediction(dict(zip(VESSELS, row, strict=True)), self.thresholds) for row in probs]


def default_predictor(settings: Settings, *, warmup: bool = True) -> TorchPredictor:
    """The service's predictor: ``settings.model.checkpoint``, or the built-in demonstration model if empty.

    Thresholds come from ``settings.thresholds``; device, ``max_batch``, ``optimize`` and
    ``compile_cache_dir`` from ``settings.model``.

    Raises
    ------
    CheckpointError
        The configured checkpoint cannot be loaded strictly.
    ModelError
        Device unavailable or wrong outputs.
    """
    if settings.model.checkpoint:
        loaded = load_checkpoint(settings.model.checkpoint)
    else:
        from ecgcad.model.demo import load_demo_model

        loaded = load_demo_model()
    return TorchPredictor(
        loaded,
        thresholds=RiskThresholds.from_settings(settings.thresholds),
        device=settings.model.device,
        max_batch=settings.model.max_batch,
        warmup=warmup,
        optimize=settings.model.optimize,
        compile_cache_dir=settings.model.compile_cache_dir,
    )
