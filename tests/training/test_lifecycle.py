"""Promote and roll back switch the active checkpoint (audited); compare reports agreement; shadow is wired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from ecgcad.db.migrate import upgrade
from ecgcad.db.models import AuditEvent, ModelVersion
from ecgcad.db.session import Database
from ecgcad.errors import ModelError
from ecgcad.model.checkpoint import save_checkpoint
from ecgcad.model.net1d import build_net1d
from ecgcad.model.preprocess import VESSEL_RECIPE
from ecgcad.pipeline.lifecycle import active_checkpoint, promote, rollback
from ecgcad.training.compare import compare_probabilities
from ecgcad.training.train import width_architecture
from tests.training.conftest import TINY_WIDTH


def _checkpoint(path: Path, seed: int, version: str) -> Path:
    torch.manual_seed(seed)
    module = build_net1d(4, use_bn=True, **width_architecture(TINY_WIDTH)).eval()
    meta = {
        "name": "tiny",
        "version": version,
        "architecture": module.config,
        "outputs": ["rca", "lm", "lad", "lcx"],
        "preprocessing": VESSEL_RECIPE.to_dict(),
    }
    save_checkpoint(path, module, meta)
    return path


def test_compare_counts_agreement_and_flag_flips() -> None:
    t = {"rca": 0.5, "lm": 0.5, "lad": 0.5, "lcx": 0.5}
    a = np.array([[0.9, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.6, 0.1, 0.1, 0.1], [0.2, 0.1, 0.1, 0.1]])
    c = a.copy()
    c[2, 0] = 0.4  # the candidate drops one flag
    c[3, 2] = 0.8  # and raises one elsewhere
    out = compare_probabilities(
        a, c, t, t, labels=np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]])
    )
    rca, lad = out["vessels"]["rca"], out["vessels"]["lad"]
    assert rca["flag_agreement"] == 0.75 and rca["flags_lost"] == 1 and rca["flags_gained"] == 0
    assert lad["flags_gained"] == 1
    assert out["any_flag_flip_rate"] == 0.5  # ECG 2 loses its only flag, ECG 3 gains one
    assert set(rca["calibration"]) == {"active", "candidate"} and "brier" in rca["calibration"]["active"]
    assert compare_probabilities(a, a, t, t)["vessels"]["rca"]["kappa"] == pytest.approx(1.0)


def test_promote_and_rollback_switch_the_active_checkpoint_with_roles_and_audit(
    sqlite_db: Database, tmp_path: Path
) -> None:
    first = _checkpoint(tmp_path / "a.pt", 1, "1")
    second = _checkpoint(tmp_path / "b.pt", 2, "2")
    with sqlite_db.session() as s:
        promote(s, first, user="alice", reason="go-live")
    with sqlite_db.session() as s:
        entry = promote(s, second, user="bob", reason="better AUC")
        assert entry["model_version"].startswith("tiny-2+")
    with sqlite_db.session() as s:
        active = active_checkpoint(s)
        assert active is not None and active["checkpoint"] == str(second.resolve())
        roles = {m.version.split("+")[0]: m.role for m in s.execute(select(ModelVersion)).scalars()}
        assert roles == {"tiny-1": "retired", "tiny-2": "active"}
        with pytest.raises(ModelError, match="already the active"):
            promote(s, second)
    with sqlite_db.session() as s:
        back = rollback(s, user="carol", reason="flag rate too high")
        assert back["checkpoint"] == str(first.resolve())
    with sqlite_db.session() as s:
        roles = {m.version.split("+")[0]: m.role for m in s.execute(select(ModelVersion)).scalars()}
        assert roles == {"tiny-1": "active", "tiny-2": "retired"}
        events = [
            (e.event_type, e.user) for e in s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
        ]
        assert events[-3:] == [
            ("model.promoted", "alice"),
            ("model.promoted", "bob"),
            ("model.rollback", "carol"),
        ]
        with pytest.raises(ModelError, match="no previously active"):
            rollback(s)


def test_service_loads_the_promoted_checkpoint_and_the_shadow_model(tmp_path: Path) -> None:
    from ecgcad.config import load_settings
    from ecgcad.context import AppContext

    promoted = _checkpoint(tmp_path / "promoted.pt", 3, "3")
    shadow = _checkpoint(tmp_path / "shadow.pt", 4, "4")
    settings = load_settings(
        None, data_dir=str(tmp_path / "var"), model={"device": "cpu", "shadow_checkpoint": str(shadow)}
    )
    upgrade(settings.effective_database_url)
    ctx = AppContext.from_settings(settings)
    try:
        with ctx.db.session() as s:
            promote(s, promoted)
        predictor = ctx.get_predictor()
        assert predictor.model_version.startswith("tiny-3+")  # not the configured demo model
        assert ctx.shadow_predictor is not None and ctx.shadow_predictor.model_version.startswith("tiny-4+")
    finally:
        ctx.close()


def test_a_changed_promoted_file_is_refused_at_start(tmp_path: Path) -> None:
    from ecgcad.config import load_settings
    from ecgcad.context import AppContext
    from ecgcad.errors import CheckpointError

    path = _checkpoint(tmp_path / "p.pt", 5, "5")
    settings = load_settings(None, data_dir=str(tmp_path / "var"), model={"device": "cpu"})
    upgrade(settings.effective_database_url)
    ctx = AppContext.from_settings(settings)
    try:
        with ctx.db.session() as s:
            promote(s, path)
        _checkpoint(path, 6, "5")  # swapped weights under the same name
        with pytest.raises(CheckpointError, match="changed since promotion"):
            ctx.get_predictor()
    finally:
        ctx.close()
