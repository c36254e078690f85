"""The shipped demonstration model is labelled as such, small, separates every territory, and rebuilds exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ecgcad.model.demo import DemoRecipe, build_demo_model, demo_checkpoint_bytes, load_demo_model
from ecgcad.model.metrics import roc_auc
from ecgcad.model.synthetic import generate

HELD_OUT_SEED = 990001  # never used for training or validation


def test_shipped_demo_model_is_labelled_small_and_reduced() -> None:
    assert len(demo_checkpoint_bytes()) < 5 * 1024 * 1024
    loaded = load_demo_model()
    assert loaded.demonstration is True
    assert loaded.metadata["disclaimer"] == "DEMONSTRATION MODEL — NOT FOR CLINICAL USE"
    assert loaded.metadata["architecture"]["filter_list"] != [64, 160, 160, 400, 400, 1024, 1024]
    assert loaded.metadata["provenance"]["recipe"]["train_seed"] == DemoRecipe().train_seed


def test_shipped_demo_model_separates_each_territory_on_held_out_ecgs(demo_predictor) -> None:
    held_out = generate(300, seed=HELD_OUT_SEED)
    probs = demo_predictor.predict_proba(held_out.signals)
    for k, vessel in enumerate(("rca", "lm", "lad", "lcx")):
        assert roc_auc(held_out.labels[:, k], probs[:, k]) >= 0.9, vessel


def test_demo_build_is_reproducible_from_its_seeds(tmp_path: Path) -> None:
    tiny = DemoRecipe(train_size=48, validation_size=16, epochs=1, batch_size=16, threads=1)
    a = build_demo_model(tmp_path / "a.pt", tiny, progress=lambda line: None)
    b = build_demo_model(tmp_path / "b.pt", tiny, progress=lambda line: None)
    assert a.sha256 == b.sha256
    for key, value in a.module.state_dict().items():
        assert torch.equal(value, b.module.state_dict()[key])
    assert a.metadata["demonstration"] is True


def test_roc_auc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert abs(roc_auc(y, s) - pairwise) < 1e-12
