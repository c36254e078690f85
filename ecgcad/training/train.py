"""``ecgcad train``: fine-tune Net1D on a data set store with the paper's recipe.

Per fold: a fresh model (from ``init`` — an ECGFounder file or one of our checkpoints — or from scratch),
AdamW over the trainable weights and the per-vessel log-variances, :func:`~.train_recipe.warmup_cosine`
per step, batches of ``batch_size`` ECGs plus an augmented copy of each, per-vessel BCE with uncertainty
weighting combined by PCGrad. After every epoch the validation macro-AUC (mean over vessels) is computed;
the best epoch's weights are the fold's model and its validation probabilities are the out-of-fold
predictions.

The output folder holds ``metrics.jsonl`` (one line per epoch), ``state/fold-K.pt`` (the last epoch, for
``--resume``), ``folds/fold-K.pt`` (each fold's best model, our checkpoint format), ``predictions.csv``
(out-of-fold, or the test set for a fixed split), ``model.pt`` (the best fold's model with the chosen
thresholds and full provenance) and ``summary.json``.

Randomness is derived from ``(seed, fold, epoch)`` at the start of every epoch, so a resumed run continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgcad.errors import ModelError
from ecgcad.model.checkpoint import VESSEL_OUTPUTS, load_checkpoint, load_state_strict, save_checkpoint
from ecgcad.model.metrics import roc_auc
from ecgcad.model.net1d import Net1D, build_net1d, net1d_from_config
from ecgcad.model.predictor import resolve_device
from ecgcad.model.preprocess import VESSEL_RECIPE
from ecgcad.training.dataset import DatasetStore
from ecgcad.training.evaluate_data import Predictions, from_store, write_predictions
from ecgcad.training.folds import fixed_split, grouped_stratified_folds
from ecgcad.training.recipe import (
    AugmentationSettings,
    UncertaintyWeighting,
    augment,
    augmentation_intensity,
    pcgrad_backward,
    per_vessel_bce,
    warmup_cosine,
)
from ecgcad.training.thresholds import choose_thresholds, cut_for_specificity

logger = logging.getLogger(__name__)


def width_architecture(width: int) -> dict[str, Any]:
    """A reduced Net1D: filters ``[w, 2w, 2w, 4w, 4w, 8w, 8w]``, one block per stage, groups of ``w``."""
    return {
        "base_filters": width,
        "ratio": 1,
        "filter_list": [width, 2 * width, 2 * width, 4 * width, 4 * width, 8 * width, 8 * width],
        "m_blocks_list": [1] * 7,
        "kernel_size": 16,
        "stride": 2,
        "groups_width": width,
    }


@dataclasses.dataclass(slots=True)
class TrainConfig:
    """Every hyper-parameter of a run (recorded in the checkpoint's provenance). Defaults: the paper."""

    epochs: int = 100
    batch_size: int = 64
    augmented_copy: bool = True
    lr: float = 3e-5
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    final_lr_fraction: float = 0.01
    uncertainty_weighting: bool = True
    pcgrad: bool = True
    augmentation: AugmentationSettings = dataclasses.field(default_factory=AugmentationSettings)
    linear_probe: bool = False
    dropout: bool = True
    split: str = "cv"
    folds: int = 5
    only_folds: list[int] | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    init: str | None = None
    architecture: dict[str, Any] | None = None
    eval_batch_size: int = 256
    name: str = "ecgcad-4vessel"
    version: str = "0.1.0"
    threshold_rule: str = "paper"
    threshold_target: float | None = None
    screening_specificity: float = 0.95

    def __post_init__(self) -> None:
        if self.split not in ("cv", "fixed"):
            raise ModelError(f"split must be 'cv' or 'fixed', not {self.split!r}")
        if self.split == "fixed" and self.folds < 3:
            raise ModelError("a fixed split needs folds ≥ 3 (one test, one validation, the rest train)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ModelError("epochs, batch size and learning rate must be positive")
        if self.linear_probe and not self.init:
            raise ModelError("--linear-probe needs --init (a probe of random features says nothing)")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class FoldResult:
    """What one fold produced."""

    fold: int
    best_epoch: int
    best_auc: float
    checkpoint: Path
    validation_rows: np.ndarray
    validation_probabilities: np.ndarray


def code_version() -> str:
    """``ecgcad <version>`` plus the git commit of the source tree when there is one."""
    from ecgcad import __version__

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"ecgcad {__version__}" + (f" ({commit})" if commit else "")


def make_module(config: TrainConfig, seed: int) -> tuple[Net1D, dict[str, Any]]:
    """A fresh 4-vessel Net1D (seeded head/weights) and provenance of its initialisation."""
    torch.manual_seed(seed)
    if config.init:
        loaded = load_checkpoint(config.init)
        arch = {**loaded.metadata["architecture"], "n_classes": len(VESSEL_OUTPUTS), "use_bn": True}
        arch["use_do"] = config.dropout
        module = net1d_from_config(arch)
        replace = loaded.metadata["architecture"].get("n_classes") != len(VESSEL_OUTPUTS)
        load_state_strict(module, loaded.module.state_dict(), source=str(config.init), replace_head=replace)
        return module, {
            "init": Path(config.init).name,
            "init_sha256": loaded.sha256,
            "head_replaced": replace,
        }
    arch = dict(config.architecture or {})
    module = build_net1d(len(VESSEL_OUTPUTS), use_bn=True, use_do=config.dropout, **arch)
    return module, {"init": "scratch"}


def _trainable(module: Net1D, linear_probe: bool) -> list[torch.nn.Parameter]:
    if linear_probe:
        for name, p in module.named_parameters():
            p.requires_grad_(name.startswith("dense."))
    return [p for p in module.parameters() if p.requires_grad]


def _set_train_mode(module: Net1D, linear_probe: bool) -> None:
    module.train()
    if linear_probe:  # a frozen backbone keeps its batch-norm statistics
        for name, child in module.named_children():
            if name != "dense":
                child.eval()


def _batches(
    x: np.ndarray, y: np.ndarray, rows: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches read from the (memory-mapped) arrays one ahead on a thread, pinned for the GPU."""
    chunks = [np.sort(rows[k : k + batch_size]) for k in range(0, len(rows), batch_size)]
    pin = device.type == "cuda"

    def load(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xb = torch.from_numpy(np.ascontiguousarray(x[idx]))
        yb = torch.from_numpy(y[idx].astype(np.float32))
        return (xb.pin_memory(), yb.pin_memory()) if pin else (xb, yb)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            assert pending is not None
            xb, yb = pending.result()
            pending = pool.submit(load, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def predict_logits(
    module: Net1D, x: np.ndarray, rows: np.ndarray, device: torch.device, batch: int, bf16: bool
) -> np.ndarray:
    """Logits ``(len(rows), 4)`` in eval mode."""
    module.eval()
    out = []
    with torch.inference_mode():
        for k in range(0, len(rows), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[rows[k : k + batch]])).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                out.append(module(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(VESSEL_OUTPUTS)), np.float32)


def macro_auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Mean per-vessel AUC over the vessels with both classes present, and the per-vessel AUCs."""
    aucs = [roc_auc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
    valid = [a for a in aucs if not np.isnan(a)]
    return (float(np.mean(valid)) if valid else float("nan")), aucs


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


class _Log:
    def __init__(self, path: Path, say: Callable[[str], None]) -> None:
        self.path = path
        self.say = say

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


@dataclasses.dataclass(slots=True)
class _FoldTraining:
    """The moving parts of one fold's training and the best epoch seen so far.

    ``best_epoch`` is 0-based and ``-1`` (with ``best_state`` ``None`` and ``best_auc`` ``-1``) until the
    first validation; ``best_probs`` are the best epoch's validation probabilities ``(len(val_rows), 4)``.
    """

    module: Net1D
    uw: UncertaintyWeighting
    optimiser: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    pcgrad_params: list[torch.nn.Parameter]
    init_info: dict[str, Any]
    steps_per_epoch: int
    total_steps: int
    best_probs: np.ndarray
    best_auc: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None


@dataclasses.dataclass(slots=True)
class _EpochLoss:
    """What one training epoch accumulated.

    ``totals`` are the per-vessel BCE sums (each batch's mean times its size, augmented copies included)
    over ``seen`` ECGs; ``started`` is the ``time.perf_counter()`` reading when the first batch was asked for.
    """

    intensity: float
    totals: np.ndarray
    seen: int
    conflicts: int
    started: float


def _fold_training(
    config: TrainConfig, fold: int, n_train: int, n_val: int, device: torch.device
) -> _FoldTraining:
    """A fresh model, uncertainty weighting, AdamW and warm-up/cosine schedule for one fold.

    Parameters
    ----------
    config:
        The run's hyper-parameters.
    fold:
        The fold number; the model is initialised with seed ``config.seed * 1000 + fold``.
    n_train, n_val:
        Sizes of the fold's training and validation sets (steps per epoch, empty best probabilities).
    device:
        Where the model and the weighting live.

    Returns
    -------
    _FoldTraining
        Ready for epoch 0, with no best epoch yet.
    """
    module, init_info = make_module(config, config.seed * 1000 + fold)
    module.to(device)
    params = _trainable(module, config.linear_probe)
    uw = UncertaintyWeighting(len(VESSEL_OUTPUTS)).to(device)
    groups = [{"params": params, "weight_decay": config.weight_decay}]
    if config.uncertainty_weighting:
        groups.append({"params": list(uw.parameters()), "weight_decay": 0.0})
    optimiser = torch.optim.AdamW(groups, lr=config.lr)
    steps_per_epoch = -(-n_train // config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: warmup_cosine(s, total, config.warmup_fraction, config.final_lr_fraction)
    )
    # PCGrad projects the gradients of every optimised tensor, the log-variances included when learned.
    pcgrad_params = params + (list(uw.parameters()) if config.uncertainty_weighting else [])
    return _FoldTraining(
        module=module,
        uw=uw,
        optimiser=optimiser,
        scheduler=scheduler,
        pcgrad_params=pcgrad_params,
        init_info=init_info,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        best_probs=np.zeros((n_val, len(VESSEL_OUTPUTS))),
    )


def _resume_fold(training: _FoldTraining, state_path: Path, device: torch.device) -> int:
    """Load the state :func:`_save_fold_state` wrote into ``training``; return the next (0-based) epoch.

    Parameters
    ----------
    training:
        A fresh :func:`_fold_training` of the same fold and configuration; updated in place.
    state_path:
        ``state/fold-K.pt`` of the run.
    device:
        Where the loaded tensors go.

    Returns
    -------
    int
        The epoch after the saved one.
    """
    saved = torch.load(state_path, map_location=device, weights_only=True)
    training.module.load_state_dict(saved["model"])
    training.uw.load_state_dict(saved["uw"])
    training.optimiser.load_state_dict(saved["optimiser"])
    training.scheduler.load_state_dict(saved["scheduler"])
    training.best_auc = float(saved["best_auc"])
    training.best_epoch = int(saved["best_epoch"])
    training.best_state = saved["best_model"]
    training.best_probs = saved["best_probs"].numpy()
    return int(saved["epoch"]) + 1


def _train_epoch(
    training: _FoldTraining,
    x: np.ndarray,
    y: np.ndarray,
    train_rows: np.ndarray,
    config: TrainConfig,
    fold: int,
    epoch: int,
    device: torch.device,
    on_step: Callable[[int, int], None] | None,
) -> _EpochLoss:
    """One pass over the shuffled training rows, each batch with an augmented copy (when configured).

    All randomness comes from ``np.random.default_rng([seed, fold, epoch])``: first the seed of the
    augmentation/PCGrad generator, then the global torch seed (dropout), then the shuffle — in that order,
    so that a resumed run repeats an uninterrupted one exactly.

    Parameters
    ----------
    training:
        The fold's model, optimiser and schedule; stepped in place.
    x, y:
        Preprocessed signals and labels of the whole store.
    train_rows:
        The fold's training rows.
    config:
        The run's hyper-parameters.
    fold, epoch:
        Which fold and (0-based) epoch: the seed, and the global step reported to ``on_step``.
    device:
        Where the batches go.
    on_step:
        Called after every optimiser step with ``(step within the fold, total steps of the fold)``.

    Returns
    -------
    _EpochLoss
        Per-vessel loss totals, ECGs seen and PCGrad conflicts.
    """
    rng = np.random.default_rng([config.seed, fold, epoch])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    torch.manual_seed(int(rng.integers(2**62)))
    intensity = augmentation_intensity(epoch, config.epochs, config.augmentation)
    _set_train_mode(training.module, config.linear_probe)
    totals = np.zeros(len(VESSEL_OUTPUTS))
    conflicts = seen = 0
    started = time.perf_counter()
    for k, (xb, yb) in enumerate(_batches(x, y, rng.permutation(train_rows), config.batch_size, device)):
        if config.augmented_copy:
            xa = augment(xb, intensity, config.augmentation, gen)
            xb, yb = torch.cat([xb, xa]), torch.cat([yb, yb])
        task, step_conflicts = _train_step(training, xb, yb, config, gen, device)
        conflicts += step_conflicts
        totals += task.float().cpu().numpy() * len(yb)
        seen += len(yb)
        if on_step:
            on_step(epoch * training.steps_per_epoch + k + 1, training.total_steps)
    return _EpochLoss(intensity, totals, seen, conflicts, started)


def _train_step(
    training: _FoldTraining,
    xb: torch.Tensor,
    yb: torch.Tensor,
    config: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """One optimiser and scheduler step on a batch: per-vessel BCE, uncertainty weighting, PCGrad.

    Parameters
    ----------
    training:
        The fold's model, weighting, optimiser and schedule; stepped in place.
    xb, yb:
        The batch (augmented copy included) on ``device``.
    config:
        The run's hyper-parameters (which of weighting and PCGrad, bf16).
    gen:
        The epoch's generator (PCGrad's random projection order).
    device:
        Where the batch is; bf16 autocast applies on CUDA only.

    Returns
    -------
    tuple[torch.Tensor, int]
        The unweighted per-vessel losses (detached) and the number of PCGrad conflicts.
    """
    training.optimiser.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"):
        logits = training.module(xb)
    task = per_vessel_bce(logits, yb)
    weighted = training.uw(task) if config.uncertainty_weighting else task
    conflicts = 0
    if config.pcgrad:
        conflicts = pcgrad_backward(weighted, training.pcgrad_params, gen)
    else:
        weighted.sum().backward()
    training.optimiser.step()
    training.scheduler.step()
    return task.detach(), conflicts


def _validate(
    training: _FoldTraining,
    x: np.ndarray,
    y: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> tuple[float, list[float], bool]:
    """Score the validation rows and keep this epoch as the best when its macro-AUC is higher.

    Parameters
    ----------
    training:
        The fold's model and best epoch so far; the best is updated in place.
    x, y:
        Preprocessed signals and labels of the whole store.
    val_rows:
        The fold's validation rows.
    config:
        The run's hyper-parameters (evaluation batch size, bf16).
    epoch:
        The (0-based) epoch just trained.
    device:
        Where the model is.

    Returns
    -------
    tuple[float, list[float], bool]
        The macro-AUC, the per-vessel AUCs, and whether this epoch became the best (always the first one).
    """
    logits_val = predict_logits(training.module, x, val_rows, device, config.eval_batch_size, config.bf16)
    probs = _sigmoid(logits_val)
    auc, per_vessel = macro_auc(y[val_rows], probs)
    improved = training.best_state is None or auc > training.best_auc
    if improved:
        training.best_auc, training.best_epoch, training.best_probs = auc, epoch, probs
        training.best_state = {k: v.detach().cpu().clone() for k, v in training.module.state_dict().items()}
    return auc, per_vessel, improved


def _epoch_record(
    training: _FoldTraining,
    fold: int,
    epoch: int,
    loss: _EpochLoss,
    auc: float,
    per_vessel: list[float],
    improved: bool,
) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of one epoch (``epoch`` 1-based there; ``seconds`` since the first batch).

    Parameters
    ----------
    training:
        The fold's schedule and uncertainty weighting after the epoch.
    fold, epoch:
        Which fold and (0-based) epoch.
    loss:
        What :func:`_train_epoch` returned.
    auc, per_vessel, improved:
        What :func:`_validate` returned.

    Returns
    -------
    dict[str, Any]
        The JSON record.
    """
    mean_loss = (loss.totals / max(loss.seen, 1)).round(5).tolist()
    return {
        "fold": fold,
        "epoch": epoch + 1,
        "lr": training.scheduler.get_last_lr()[0],
        "augmentation_intensity": round(loss.intensity, 4),
        "train_loss": dict(zip(VESSEL_OUTPUTS, mean_loss, strict=True)),
        "uncertainty_weights": dict(
            zip(VESSEL_OUTPUTS, [round(w, 4) for w in training.uw.weights], strict=True)
        ),
        "pcgrad_conflicts": loss.conflicts,
        "val_auc": dict(zip(VESSEL_OUTPUTS, [round(a, 4) for a in per_vessel], strict=True)),
        "val_macro_auc": round(auc, 4),
        "best": improved,
        "seconds": round(time.perf_counter() - loss.started, 2),
    }


def _save_fold_state(training: _FoldTraining, state_path: Path, epoch: int) -> None:
    """Write ``state/fold-K.pt`` (everything :func:`_resume_fold` needs) atomically: a temporary file, then
    a rename, so an interruption leaves the previous epoch's state intact.

    Parameters
    ----------
    training:
        The fold's model, weighting, optimiser, schedule and best epoch.
    state_path:
        ``state/fold-K.pt`` of the run (its folder is created).
    epoch:
        The (0-based) epoch just finished.
    """
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_name(state_path.name + ".tmp")
    torch.save(
        {
            "model": training.module.state_dict(),
            "uw": training.uw.state_dict(),
            "optimiser": training.optimiser.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "epoch": epoch,
            "best_auc": training.best_auc,
            "best_epoch": training.best_epoch,
            "best_model": training.best_state,
            "best_probs": torch.from_numpy(np.asarray(training.best_probs)),
        },
        tmp,
    )
    os.replace(tmp, state_path)


def _write_fold_checkpoint(
    training: _FoldTraining, out: Path, fold: int, metadata_base: dict[str, Any]
) -> Path:
    """Put the best epoch's weights back into the model and write ``folds/fold-K.pt`` and
    ``folds/fold-K.done.json`` (the marker that lets ``--resume`` skip the fold).

    Parameters
    ----------
    training:
        The fold's model and best epoch (there must be one); the model ends on the CPU in eval mode.
    out:
        The run folder.
    fold:
        The fold number.
    metadata_base:
        The run's checkpoint metadata; the fold's provenance (initialisation, best epoch, validation
        macro-AUC, uncertainty weights) is added to a copy.

    Returns
    -------
    Path
        The checkpoint written.
    """
    assert training.best_state is not None
    module = training.module
    module.load_state_dict(training.best_state)
    module.cpu().eval()
    ckpt = out / "folds" / f"fold-{fold}.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata_base)
    meta["provenance"] = {
        **metadata_base["provenance"],
        **training.init_info,
        "fold": fold,
        "best_epoch": training.best_epoch + 1,
        "validation_macro_auc": round(training.best_auc, 4),
        "uncertainty_weights": training.uw.weights,
    }
    save_checkpoint(ckpt, module, meta)
    (out / "folds" / f"fold-{fold}.done.json").write_text(
        json.dumps({"fold": fold, "best_epoch": training.best_epoch + 1, "best_auc": training.best_auc})
    )
    return ckpt


def train_fold(
    store: DatasetStore,
    x: np.ndarray,
    fold: int,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    config: TrainConfig,
    out: Path,
    log: _Log,
    *,
    resume: bool,
    metadata_base: dict[str, Any],
    on_step: Callable[[int, int], None] | None = None,
) -> FoldResult:
    """Train one fold (resuming from ``state/fold-K.pt`` when asked); write its best checkpoint.

    Every epoch is trained, validated, logged (``metrics.jsonl`` and a progress line) and saved to
    ``state/fold-K.pt``; at the end the best epoch's weights go to ``folds/fold-K.pt``.

    Parameters
    ----------
    store:
        The data set (labels).
    x:
        Its preprocessed signals.
    fold:
        The fold number.
    train_rows, val_rows:
        The fold's training and validation rows.
    config:
        The run's hyper-parameters.
    out:
        The run folder.
    log:
        Where epoch records and progress lines go.
    resume:
        Continue from ``state/fold-K.pt`` when it exists.
    metadata_base:
        The run's checkpoint metadata (the fold's provenance is added).
    on_step:
        Called after every optimiser step with ``(step within the fold, total steps of the fold)``.

    Returns
    -------
    FoldResult
        The best epoch (1-based), its macro-AUC, the checkpoint and the validation probabilities.
    """
    y = store.labels
    device = resolve_device(config.device)
    training = _fold_training(config, fold, len(train_rows), len(val_rows), device)
    state_path = out / "state" / f"fold-{fold}.pt"
    start_epoch = 0
    if resume and state_path.exists():
        start_epoch = _resume_fold(training, state_path, device)
        log.say(f"fold {fold}: resuming at epoch {start_epoch + 1}")
    for epoch in range(start_epoch, config.epochs):
        loss = _train_epoch(training, x, y, train_rows, config, fold, epoch, device, on_step)
        auc, per_vessel, improved = _validate(training, x, y, val_rows, config, epoch, device)
        log.write(_epoch_record(training, fold, epoch, loss, auc, per_vessel, improved))
        log.say(
            f"fold {fold} epoch {epoch + 1}/{config.epochs}: val macro-AUC {auc:.3f}"
            + (" *" if improved else "")
        )
        _save_fold_state(training, state_path, epoch)
    ckpt = _write_fold_checkpoint(training, out, fold, metadata_base)
    return FoldResult(
        fold,
        training.best_epoch + 1,
        training.best_auc,
        ckpt,
        np.asarray(val_rows),
        np.asarray(training.best_probs),
    )


def _split(store: DatasetStore, config: TrainConfig) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(fold, train rows, validation rows)`` per fold, and for a fixed split ``fold = 0``."""
    labels, groups = store.labels, store.patient_ids
    if config.split == "fixed":
        given = store.column("split")
        if all(s in ("train", "validation", "test") for s in given):
            split = np.array(given, dtype=object)
        else:
            split = fixed_split(labels, groups, config.folds, config.seed)
        return [(0, np.flatnonzero(split == "train"), np.flatnonzero(split == "validation"))]
    folds = grouped_stratified_folds(labels, groups, config.folds, config.seed)
    wanted = config.only_folds if config.only_folds is not None else range(config.folds)
    return [(f, np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in wanted]


def train(
    store: DatasetStore,
    out: str | os.PathLike[str],
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the training described in the module docstring; returns the summary (also ``summary.json``).

    Raises
    ------
    ModelError
        Bad configuration, an output folder holding another run (without ``resume``), or too little data.
    """
    root = Path(out)
    say = progress or (lambda line: logger.info("%s", line))
    config_path = root / "config.json"
    if root.exists() and any(root.iterdir()):
        if not resume:
            raise ModelError(f"{root} is not empty (use --resume to continue the run there)")
        previous = json.loads(config_path.read_text()) if config_path.exists() else None
        if previous is not None and previous != json.loads(json.dumps(config.to_dict())):
            raise ModelError(f"{root} holds a run with other hyper-parameters; resume with the same flags")
    root.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_dict(), indent=1))
    log = _Log(root / "metrics.jsonl", say)
    x = store.preprocessed(VESSEL_RECIPE)
    device = resolve_device(config.device)
    metadata_base = {
        "name": config.name,
        "version": config.version,
        "architecture": {},
        "outputs": list(VESSEL_OUTPUTS),
        "preprocessing": VESSEL_RECIPE.to_dict(),
        "thresholds": choose_thresholds(None, None, "paper"),
        "intended_use": "Research model trained with ecgcad train; validate locally before clinical use.",
        "demonstration": store.index.get("source") == "synthetic",
        "provenance": {
            "data_manifest_sha256": store.manifest_sha256,
            "data_count": store.count,
            "label_mapping": store.index.get("label_mapping"),
            "code_version": code_version(),
            "hyper_parameters": config.to_dict(),
            "torch": str(torch.__version__),
            "device": str(device),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    if metadata_base["demonstration"]:
        from ecgcad.model.risk import DISCLAIMER

        metadata_base["disclaimer"] = DISCLAIMER
    probe, _ = make_module(config, config.seed)
    metadata_base["architecture"] = probe.config
    results: list[FoldResult] = []
    for fold, train_rows, val_rows in _split(store, config):
        if len(train_rows) == 0 or len(val_rows) == 0:
            raise ModelError(f"fold {fold}: empty training or validation set")
        done = root / "folds" / f"fold-{fold}.done.json"
        if resume and done.exists():
            say(f"fold {fold}: already done")
            info = json.loads(done.read_text())
            saved = torch.load(root / "state" / f"fold-{fold}.pt", map_location="cpu", weights_only=True)
            results.append(
                FoldResult(fold, info["best_epoch"], info["best_auc"], root / "folds" / f"fold-{fold}.pt",
                           val_rows, saved["best_probs"].numpy())
            )  # fmt: skip
            continue
        say(f"fold {fold}: {len(train_rows)} train, {len(val_rows)} validation ECGs")
        results.append(
            train_fold(store, x, fold, train_rows, val_rows, config, root, log, resume=resume,
                       metadata_base=metadata_base, on_step=on_step)
        )  # fmt: skip
    return _finish(store, root, config, results, x, device)


def _finish(
    store: DatasetStore,
    root: Path,
    config: TrainConfig,
    results: list[FoldResult],
    x: np.ndarray,
    device: torch.device,
) -> dict[str, Any]:
    """Out-of-fold predictions, thresholds and ``model.pt`` from the best fold."""
    best = max(results, key=lambda r: r.best_auc)
    if config.split == "fixed":
        given = store.column("split")
        split = (
            np.array(given, dtype=object)
            if all(s in ("train", "validation", "test") for s in given)
            else fixed_split(store.labels, store.patient_ids, config.folds, config.seed)
        )
        choose_rows, choose_probs = best.validation_rows, best.validation_probabilities
        test_rows = np.flatnonzero(split == "test")
        loaded = load_checkpoint(best.checkpoint)
        probs = _sigmoid(
            predict_logits(
                loaded.module.to(device), x, test_rows, device, config.eval_batch_size, config.bf16
            )
        )
        preds: Predictions = from_store(store, test_rows, probs)
    else:
        rows = np.concatenate([r.validation_rows for r in results])
        probs = np.concatenate([r.validation_probabilities for r in results])
        folds = np.concatenate([np.full(len(r.validation_rows), r.fold) for r in results])
        order = np.argsort(rows)
        preds = from_store(store, rows[order], probs[order], folds[order])
        choose_rows, choose_probs = rows, probs
    write_predictions(root / "predictions.csv", preds)
    y_choose = store.labels[choose_rows]
    thresholds = choose_thresholds(y_choose, choose_probs, config.threshold_rule, config.threshold_target)
    screening = {
        v: cut_for_specificity(y_choose[:, k], choose_probs[:, k], config.screening_specificity)
        for k, v in enumerate(VESSEL_OUTPUTS)
        if (y_choose[:, k] == 0).any()
    }
    loaded = load_checkpoint(best.checkpoint)
    meta = dict(loaded.metadata)
    meta["thresholds"] = thresholds
    meta["screening_thresholds"] = screening
    meta["threshold_rule"] = {
        "rule": config.threshold_rule,
        "target": config.threshold_target,
        "source": "out-of-fold predictions" if config.split == "cv" else "validation set",
        "screening_specificity": config.screening_specificity,
    }
    meta["provenance"] = {
        **meta["provenance"],
        "selected_fold": best.fold,
        "folds": [
            {"fold": r.fold, "best_epoch": r.best_epoch, "validation_macro_auc": round(r.best_auc, 4)}
            for r in results
        ],
    }
    sha = save_checkpoint(root / "model.pt", loaded.module, meta)
    macro, per_vessel = macro_auc(preds.labels, preds.probabilities)
    summary = {
        "model": str(root / "model.pt"),
        "sha256": sha,
        "selected_fold": best.fold,
        "folds": meta["provenance"]["folds"],
        "predictions": str(root / "predictions.csv"),
        "predictions_kind": "out-of-fold" if config.split == "cv" else "test",
        "auc": dict(zip(VESSEL_OUTPUTS, [round(a, 4) for a in per_vessel], strict=True)),
        "macro_auc": round(macro, 4),
        "thresholds": thresholds,
        "screening_thresholds": screening,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def copy_model(summary: dict[str, Any], dest: str | os.PathLike[str]) -> None:
    """Copy the run's ``model.pt`` to ``dest``."""
    shutil.copyfile(summary["model"], dest)
