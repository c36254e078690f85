"""The demonstration model: a reduced-width Net1D trained on synthetic ECGs, shipped in the package.

No trained 4-vessel weights are public, so ecgcad ships this clearly labelled model (``demonstration:
true`` in its metadata; every report made with it carries :data:`DISCLAIMER`). :func:`build_demo_model`
rebuilds it reproducibly from seeds on a CPU in a few minutes; ``ecgcad model demo OUT`` runs it. The
result depends only on the seeds, the torch/numpy versions and the thread count (recorded in the
provenance).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgcad.model.checkpoint import (
    DEFAULT_THRESHOLDS,
    VESSEL_OUTPUTS,
    LoadedModel,
    load_checkpoint_bytes,
    save_checkpoint,
)
from ecgcad.model.metrics import roc_auc
from ecgcad.model.net1d import build_net1d
from ecgcad.model.preprocess import VESSEL_RECIPE, preprocess
from ecgcad.model.risk import DISCLAIMER
from ecgcad.model.synthetic import generate

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_VERSION = "0.1.0"
#: File name of the shipped checkpoint inside ``ecgcad/model/assets``.
ASSET = "demo_model.pt"

#: Reduced-width Net1D of the demonstration model (the full model is too slow to train on 2 CPU cores).
DEMO_ARCHITECTURE: dict[str, Any] = {
    "base_filters": 16,
    "ratio": 1,
    "filter_list": [16, 32, 32, 64, 64, 128, 128],
    "m_blocks_list": [1, 1, 1, 1, 1, 1, 1],
    "kernel_size": 16,
    "stride": 2,
    "groups_width": 16,
}


@dataclasses.dataclass(frozen=True, slots=True)
class DemoRecipe:
    """Seeds and sizes of the demonstration model's training run."""

    train_size: int = 3000
    validation_size: int = 600
    train_seed: int = 20240501
    validation_seed: int = 20240502
    torch_seed: int = 7
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    threads: int = 2


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[k : k + batch_size] for k in range(0, n, batch_size)]


def train_demo_module(
    x_train: np.ndarray,
    y_train: np.ndarray,
    recipe: DemoRecipe,
    progress: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train the reduced Net1D on preprocessed inputs with BCE (seeded; AdamW with cosine decay)."""
    torch.manual_seed(recipe.torch_seed)
    module = build_net1d(n_classes=len(VESSEL_OUTPUTS), use_bn=True, use_do=False, **DEMO_ARCHITECTURE)
    optimiser = torch.optim.AdamW(
        module.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    rng = np.random.default_rng(recipe.torch_seed)
    steps = recipe.epochs * -(-len(x_train) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=recipe.learning_rate, total_steps=steps, pct_start=0.1
    )
    loss_fn = nn.BCEWithLogitsLoss()
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train.astype(np.float32))
    module.train()
    for epoch in range(recipe.epochs):
        total = 0.0
        for idx in _batches(len(x_train), recipe.batch_size, rng):
            index = torch.from_numpy(idx)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(module(xt[index]), yt[index])
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        if progress:
            progress(f"epoch {epoch + 1}/{recipe.epochs}: loss {total / len(x_train):.4f}")
    return module.eval()


def evaluate_auc(module: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per-vessel AUC of ``module`` on preprocessed inputs ``x`` with labels ``y``."""
    with torch.inference_mode():
        logits = torch.cat([module(torch.from_numpy(x[k : k + 128])) for k in range(0, len(x), 128)])
    scores = logits.float().numpy()
    return {v: round(roc_auc(y[:, i], scores[:, i]), 4) for i, v in enumerate(VESSEL_OUTPUTS)}


def build_demo_model(
    out: str | os.PathLike[str],
    recipe: DemoRecipe | None = None,
    progress: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Generate synthetic data, train the demonstration model and write its checkpoint to ``out``.

    Parameters
    ----------
    out:
        Checkpoint file to write (our format, ``demonstration: true``).
    recipe:
        Sizes and seeds (default :class:`DemoRecipe`).
    progress:
        Called with one line per stage / epoch.

    Returns
    -------
    LoadedModel
        The written checkpoint, loaded back.
    """
    recipe = recipe or DemoRecipe()
    say = progress or (lambda line: logger.info("%s", line))
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        say(f"generating {recipe.train_size} + {recipe.validation_size} synthetic ECGs")
        train = generate(recipe.train_size, recipe.train_seed)
        validation = generate(recipe.validation_size, recipe.validation_seed)
        x_train = preprocess(train.signals, VESSEL_RECIPE)
        x_val = preprocess(validation.signals, VESSEL_RECIPE)
        say("training")
        module = train_demo_module(x_train, train.labels, recipe, progress=say)
        auc = evaluate_auc(module, x_val, validation.labels)
        say(f"validation AUC: {auc}")
    finally:
        torch.set_num_threads(threads)
    metadata = {
        "name": DEMO_NAME,
        "version": DEMO_VERSION,
        "architecture": module.config if hasattr(module, "config") else {},
        "outputs": list(VESSEL_OUTPUTS),
        "preprocessing": VESSEL_RECIPE.to_dict(),
        "thresholds": dict(DEFAULT_THRESHOLDS),
        "intended_use": "Demonstration and testing of the ecgcad pipeline only. Trained on synthetic ECGs; "
        "its outputs say nothing about a real patient.",
        "demonstration": True,
        "disclaimer": DISCLAIMER,
        "provenance": {
            "training_data": "ecgcad.model.synthetic.generate (synthetic ECGs)",
            "recipe": dataclasses.asdict(recipe),
            "reduced_architecture": "reduced-width Net1D (see architecture); not the full ECGFounder width",
            "validation_auc": auc,
            "torch": str(torch.__version__),
            "numpy": np.__version__,
        },
    }
    save_checkpoint(out, module, metadata)
    from ecgcad.model.checkpoint import load_checkpoint

    return load_checkpoint(out)


def demo_checkpoint_bytes() -> bytes:
    """Bytes of the shipped demonstration checkpoint (``ecgcad/model/assets/demo_model.pt``)."""
    return importlib.resources.files("ecgcad.model").joinpath("assets", ASSET).read_bytes()


def load_demo_model() -> LoadedModel:
    """The shipped demonstration model."""
    return load_checkpoint_bytes(demo_checkpoint_bytes(), f"<built-in {ASSET}>")
