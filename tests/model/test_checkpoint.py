"""Checkpoints load strictly in every supported layout and fail loudly, naming the keys."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgcad.errors import CheckpointError
from ecgcad.model import build_net1d, load_checkpoint
from ecgcad.model.checkpoint import import_ecgfounder, save_checkpoint
from ecgcad.model.preprocess import VESSEL_RECIPE

SMALL = {"filter_list": [16, 32], "m_blocks_list": [1, 1], "base_filters": 16}


@pytest.fixture(scope="module")
def founder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_net1d(n_classes=150, use_bn=False).state_dict()


@pytest.fixture(scope="module")
def founder_file(tmp_path_factory: pytest.TempPathFactory, founder_state: dict) -> Path:
    """Shaped like the public file: a dict holding ``state_dict`` (DataParallel prefix), epoch, numpy scalars."""
    path = tmp_path_factory.mktemp("ckpt") / "12_lead_ECGFounder.pth"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in founder_state.items()},
            "epoch": 12,
            "best_auc": np.float64(0.91),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        },
        path,
    )
    return path


def _small_metadata(module) -> dict:
    return {
        "name": "unit",
        "version": "1.2.3",
        "architecture": module.config,
        "outputs": ["rca", "lm", "lad", "lcx"],
        "preprocessing": VESSEL_RECIPE.to_dict(),
        "thresholds": {"rca": 0.2, "lm": 0.02, "lad": 0.2, "lcx": 0.2},
        "demonstration": False,
    }


def test_public_ecgfounder_layout_loads_strictly(founder_file: Path, founder_state: dict) -> None:
    loaded = load_checkpoint(founder_file)
    assert not loaded.module.training
    assert loaded.sha256 == hashlib.sha256(founder_file.read_bytes()).hexdigest()
    assert loaded.metadata["name"] == "ecgfounder"
    assert loaded.metadata["architecture"]["use_bn"] is False
    assert loaded.metadata["preprocessing"]["zscore"] == "global"
    assert len(loaded.metadata["outputs"]) == 150
    for key in ("first_conv.conv.weight", "stage_list.6.block_list.3.se_fc1.weight", "dense.bias"):
        assert torch.equal(loaded.module.state_dict()[key], founder_state[key])


def test_renamed_key_fails_naming_both_keys(tmp_path: Path, founder_state: dict) -> None:
    state = dict(founder_state)
    state["stage_list.2.block_list.1.conv2.conv.weightx"] = state.pop(
        "stage_list.2.block_list.1.conv2.conv.weight"
    )
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "missing keys: stage_list.2.block_list.1.conv2.conv.weight" in message
    assert "unexpected keys: stage_list.2.block_list.1.conv2.conv.weightx" in message


def test_fold_checkpoint_with_model_and_uw_loads_as_four_vessel(tmp_path: Path, founder_state: dict) -> None:
    torch.manual_seed(1)
    four = build_net1d(n_classes=4, use_bn=True).state_dict()
    path = tmp_path / "fold0.pth"
    torch.save({"model": four, "uw": torch.zeros(4)}, path)
    loaded = load_checkpoint(path)
    assert loaded.outputs == ("rca", "lm", "lad", "lcx")
    assert loaded.metadata["architecture"]["use_bn"] is True
    assert loaded.metadata["preprocessing"]["zscore"] == "lead"


def test_import_ecgfounder_keeps_backbone_and_replaces_head(
    tmp_path: Path, founder_file: Path, founder_state: dict
) -> None:
    loaded = import_ecgfounder(founder_file, tmp_path / "init.pt")
    state = loaded.module.state_dict()
    assert tuple(state["dense.weight"].shape) == (4, 1024)
    assert torch.equal(
        state["stage_list.4.block_list.2.conv3.conv.weight"],
        founder_state["stage_list.4.block_list.2.conv3.conv.weight"],
    )
    assert loaded.metadata["architecture"]["use_bn"] is True
    assert loaded.metadata["outputs"] == ["rca", "lm", "lad", "lcx"]
    assert (
        loaded.metadata["provenance"]["base_sha256"] == hashlib.sha256(founder_file.read_bytes()).hexdigest()
    )


def test_import_ecgfounder_refuses_an_incomplete_backbone(tmp_path: Path, founder_state: dict) -> None:
    state = {k: v for k, v in founder_state.items() if k != "stage_list.5.block_list.1.se_fc2.weight"}
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: stage_list\.5\.block_list\.1\.se_fc2\.weight$"):
        import_ecgfounder(path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_own_format_round_trips_metadata_and_weights(tmp_path: Path) -> None:
    module = build_net1d(n_classes=4, **SMALL).eval()
    path = tmp_path / "own.pt"
    sha = save_checkpoint(path, module, _small_metadata(module))
    loaded = load_checkpoint(path)
    assert loaded.sha256 == sha
    assert loaded.metadata["version"] == "1.2.3"
    assert loaded.recipe == VESSEL_RECIPE
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value)


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    module = build_net1d(n_classes=4, **SMALL)
    meta = _small_metadata(module)
    meta["architecture"] = {**module.config, "filter_list": [16, 48]}
    with pytest.raises(
        CheckpointError, match=r"shape mismatch: dense\.weight \(checkpoint \(4, 32\), model \(4, 48\)\)"
    ):
        save_checkpoint(tmp_path / "bad.pt", module, meta)


def test_incomplete_metadata_is_refused(tmp_path: Path) -> None:
    module = build_net1d(n_classes=4, **SMALL)
    meta = _small_metadata(module)
    del meta["preprocessing"]
    with pytest.raises(CheckpointError, match="preprocessing"):
        save_checkpoint(tmp_path / "bad.pt", module, meta)


def test_unreadable_and_unsafe_files_are_checkpoint_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(garbage)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "hook": pickle.loads(pickle.dumps(Path("x")))}, unsafe)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(unsafe)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_cli_import_ecgfounder_writes_a_starting_checkpoint(tmp_path: Path, founder_file: Path) -> None:
    from typer.testing import CliRunner

    from ecgcad.cli import app

    out = tmp_path / "init.pt"
    result = CliRunner().invoke(app, ["model", "import-ecgfounder", str(founder_file), str(out)])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out).outputs == ("rca", "lm", "lad", "lcx")
    bad = CliRunner().invoke(app, ["model", "import-ecgfounder", str(tmp_path / "absent.pth"), str(out)])
    assert bad.exit_code == 2 and "cannot read checkpoint" in bad.stderr
