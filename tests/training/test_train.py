"""``train`` writes provenance-rich checkpoints, out-of-fold predictions and a metrics log, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgcad.errors import ModelError
from ecgcad.model.checkpoint import load_checkpoint, save_checkpoint
from ecgcad.model.net1d import build_net1d
from ecgcad.model.preprocess import VESSEL_RECIPE
from ecgcad.training.dataset import DatasetStore
from ecgcad.training.evaluate_data import read_predictions
from ecgcad.training.train import TrainConfig, make_module, train, width_architecture
from tests.training.conftest import TINY_WIDTH


def _config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "folds": 2,
        "seed": 5,
        "device": "cpu",
        "architecture": width_architecture(TINY_WIDTH),
    }
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def test_cross_validation_run_writes_oof_predictions_folds_metrics_and_provenance(
    tiny_store: DatasetStore, tmp_path: Path
) -> None:
    summary = train(tiny_store, tmp_path / "run", _config(), progress=lambda line: None)
    run = tmp_path / "run"
    preds = read_predictions(run / "predictions.csv")
    assert sorted(preds.index.tolist()) == list(range(tiny_store.count))  # every ECG once, out of fold
    assert set(preds.fold.tolist()) == {0, 1}
    for f in (0, 1):  # each fold's predictions come from the model that never saw them
        assert not set(preds.patient_ids[preds.fold == f]) & set(preds.patient_ids[preds.fold != f])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["fold"], r["epoch"]) for r in lines] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {
        "val_macro_auc",
        "uncertainty_weights",
        "pcgrad_conflicts",
        "lr",
        "augmentation_intensity",
    } <= set(lines[0])
    model = load_checkpoint(run / "model.pt")
    prov = model.metadata["provenance"]
    assert prov["data_manifest_sha256"] == tiny_store.manifest_sha256
    assert prov["hyper_parameters"]["lr"] == 1e-3 and prov["hyper_parameters"]["pcgrad"] is True
    assert prov["fold"] == summary["selected_fold"] and "code_version" in prov
    assert model.metadata["thresholds"] == {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}
    assert set(model.metadata["screening_thresholds"]) == {"rca", "lm", "lad", "lcx"}
    assert model.metadata["demonstration"] is True  # trained on synthetic data
    assert model.module.use_bn
    for f in (0, 1):
        assert load_checkpoint(run / "folds" / f"fold-{f}.pt").metadata["provenance"]["fold"] == f
    with pytest.raises(ModelError, match="not empty"):
        train(tiny_store, run, _config(), progress=lambda line: None)


def test_interrupted_run_resumes_to_the_same_model(tiny_store: DatasetStore, tmp_path: Path) -> None:
    cfg = _config(folds=2, only_folds=[0], epochs=3, dropout=False)
    train(tiny_store, tmp_path / "whole", cfg, progress=lambda line: None)

    class Stop(Exception):
        pass

    def stop_in_epoch_two(step: int, total: int) -> None:
        if step > total // 3 + 1:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_store, tmp_path / "cut", cfg, progress=lambda line: None, on_step=stop_in_epoch_two)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(ModelError, match="other hyper-parameters"):
        train(tiny_store, tmp_path / "cut", _config(epochs=4), resume=True, progress=lambda line: None)
    train(tiny_store, tmp_path / "cut", cfg, resume=True, progress=lambda line: None)
    a = load_checkpoint(tmp_path / "whole" / "model.pt").module.state_dict()
    b = load_checkpoint(tmp_path / "cut" / "model.pt").module.state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
    assert (tmp_path / "whole" / "predictions.csv").read_text() == (
        tmp_path / "cut" / "predictions.csv"
    ).read_text()


def test_fixed_split_predicts_the_test_set(tiny_store: DatasetStore, tmp_path: Path) -> None:
    summary = train(
        tiny_store, tmp_path / "run", _config(split="fixed", folds=5, epochs=1), progress=lambda line: None
    )
    preds = read_predictions(tmp_path / "run" / "predictions.csv")
    assert summary["predictions_kind"] == "test"
    assert 0 < len(preds) < tiny_store.count


def test_init_from_an_ecgfounder_style_checkpoint_keeps_the_backbone_and_replaces_the_head(
    tmp_path: Path,
) -> None:
    founder = build_net1d(150, use_bn=False)  # the public file: full ECGFounder width
    torch.save({"state_dict": founder.state_dict(), "epoch": 3}, tmp_path / "founder.pth")
    module, info = make_module(_config(init=str(tmp_path / "founder.pth")), seed=0)
    assert info["head_replaced"] is True and module.dense.out_features == 4 and module.use_bn
    for key, value in founder.state_dict().items():
        if not key.startswith("dense."):
            assert torch.equal(module.state_dict()[key], value), key


def test_linear_probe_trains_only_the_head(tiny_store: DatasetStore, tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = build_net1d(4, use_bn=True, **width_architecture(TINY_WIDTH))
    meta = {
        "name": "start",
        "version": "0",
        "architecture": start.config,
        "outputs": ["rca", "lm", "lad", "lcx"],
        "preprocessing": VESSEL_RECIPE.to_dict(),
    }
    save_checkpoint(tmp_path / "start.pt", start, meta)
    cfg = _config(init=str(tmp_path / "start.pt"), linear_probe=True, epochs=1, only_folds=[0])
    train(tiny_store, tmp_path / "run", cfg, progress=lambda line: None)
    after = load_checkpoint(tmp_path / "run" / "model.pt").module.state_dict()
    for key, value in start.state_dict().items():
        if key.startswith("dense."):
            assert not torch.equal(after[key], value), key
        else:
            assert torch.equal(after[key], value), key  # weights and batch-norm statistics untouched


def test_linear_probe_without_init_is_refused() -> None:
    with pytest.raises(ModelError):
        TrainConfig(linear_probe=True)


def test_probabilities_of_the_oof_file_are_probabilities(tiny_store: DatasetStore, tmp_path: Path) -> None:
    train(
        tiny_store,
        tmp_path / "run",
        _config(epochs=1, pcgrad=False, uncertainty_weighting=False),
        progress=lambda line: None,
    )
    p = read_predictions(tmp_path / "run" / "predictions.csv").probabilities
    assert ((p >= 0) & (p <= 1)).all() and np.isfinite(p).all()
