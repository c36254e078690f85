"""Checkpoints: strict loading of ECGFounder files, bare state dicts, fold checkpoints and our own format.

Formats read by :func:`load_checkpoint`:

(a) ECGFounder files (``12_lead_ECGFounder.pth``): a dict holding ``state_dict`` (and ``epoch``,
    ``optimizer``, numpy scalars …);
(b) bare state dicts;
(c) fold checkpoints of the paper's training code: a dict holding ``model`` (and ``uw``);
(d) ours (:func:`save_checkpoint`): ``{"format": "ecgcad-checkpoint", "format_version": 1,
    "metadata": {...}, "state_dict": {...}}``.

A ``module.`` prefix (DataParallel) is stripped. Files are read with ``weights_only=True``; the numpy types
the public ECGFounder file needs are allow-listed rather than turning that off. Any missing or unexpected
key, or a shape mismatch, is a :class:`~ecgcad.errors.CheckpointError` naming the keys — the only
exception is a deliberately replaced ``dense.*`` head (:func:`import_ecgfounder`).

Metadata of our format (all JSON-serialisable): ``name``, ``version``, ``architecture`` (the ``Net1D``
arguments), ``outputs`` (``["rca", "lm", "lad", "lcx"]``), ``preprocessing`` (a
:class:`~ecgcad.model.preprocess.PreprocessingRecipe` dict), ``thresholds``, ``intended_use``,
``demonstration``, ``provenance``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ecgcad.errors import CheckpointError
from ecgcad.model.net1d import ECGFOUNDER_CONFIG, Net1D, net1d_from_config
from ecgcad.model.preprocess import ECGFOUNDER_RECIPE, VESSEL_RECIPE, PreprocessingRecipe
from ecgcad.vessels import VESSELS

logger = logging.getLogger(__name__)

FORMAT = "ecgcad-checkpoint"
FORMAT_VERSION = 1
#: Output names of the 4-vessel head, in order.
VESSEL_OUTPUTS: tuple[str, ...] = VESSELS
#: Paper default high-risk thresholds.
DEFAULT_THRESHOLDS: dict[str, float] = {"rca": 0.15, "lm": 0.01, "lad": 0.15, "lcx": 0.15}
REQUIRED_METADATA = ("name", "version", "architecture", "outputs", "preprocessing")


@dataclasses.dataclass(slots=True)
class LoadedModel:
    """A model read from a checkpoint file.

    Attributes
    ----------
    module:
        The ``Net1D`` in eval mode (on the CPU).
    metadata:
        Our metadata dict (synthesised for foreign formats; see :func:`load_checkpoint`).
    sha256:
        Hex SHA-256 of the checkpoint file's bytes.
    path:
        Where it was read from (``None`` for bytes).
    """

    module: Net1D
    metadata: dict[str, Any]
    sha256: str
    path: Path | None = None

    @property
    def recipe(self) -> PreprocessingRecipe:
        """The preprocessing recipe from the metadata."""
        return PreprocessingRecipe.from_dict(self.metadata["preprocessing"])

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output names in head order."""
        return tuple(self.metadata["outputs"])

    @property
    def demonstration(self) -> bool:
        """True for a demonstration model (reports carry the disclaimer)."""
        return bool(self.metadata.get("demonstration", False))


def _safe_globals() -> list[Any]:
    """Types the public ECGFounder file pickles besides tensors (numpy scalars from its training loop)."""
    out: list[Any] = [np.dtype, np.ndarray]
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out += [scalar, _reconstruct]
    for t in (np.float64, np.float32, np.int64, np.int32, np.bool_):
        out.append(type(np.dtype(t)))
    return out


def _read_raw(data: bytes, source: str) -> object:
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError … for bad files
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        # weights_only refusals bury the useful line ("Unsupported global: GLOBAL x.y") in advice.
        detail = next((ln for ln in lines if "Unsupported global" in ln), lines[0])
        raise CheckpointError(f"cannot read checkpoint {source}: {detail}") from exc


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is not a named tensor")
        out[key.removeprefix("module.")] = value
    return out


def read_state_dict(
    data: bytes, source: str = "<bytes>"
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The state dict (``module.`` stripped) and our metadata (``None`` for foreign formats).

    Raises
    ------
    CheckpointError
        Unreadable file, or no state dict found in it.
    """
    raw = _read_raw(data, source)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {source} holds a {type(raw).__name__}, not a dict")
    if raw.get("format") == FORMAT:
        if raw.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {source}: unknown format_version {raw.get('format_version')}")
        metadata = raw.get("metadata")
        if not isinstance(metadata, dict):
            raise CheckpointError(f"checkpoint {source}: metadata missing")
        return _strip_prefix(raw["state_dict"]), metadata
    for key in ("state_dict", "model"):
        if key in raw and isinstance(raw[key], Mapping):
            return _strip_prefix(raw[key]), None
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return _strip_prefix(raw), None
    raise CheckpointError(
        f"checkpoint {source}: no state dict found (top-level keys: {sorted(map(str, raw))[:10]})"
    )


def _infer_architecture(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The ``Net1D`` arguments of a foreign state dict (ECGFounder layout, width from the tensors)."""
    try:
        in_channels = int(state["first_conv.conv.weight"].shape[1])
        n_classes = int(state["dense.weight"].shape[0])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {source}: missing key {exc.args[0]!r}") from exc
    # The 150-class ECGFounder head was trained with batch-norm off; fine-tuned heads run with it on.
    return {
        **ECGFOUNDER_CONFIG,
        "in_channels": in_channels,
        "n_classes": n_classes,
        "use_bn": n_classes != 150,
    }


def _foreign_metadata(architecture: dict[str, Any], source: str) -> dict[str, Any]:
    n_classes = architecture["n_classes"]
    if n_classes == len(VESSEL_OUTPUTS):
        name, outputs, recipe = "net1d-4vessel", list(VESSEL_OUTPUTS), VESSEL_RECIPE
    else:
        name, outputs, recipe = "ecgfounder", [f"class_{k}" for k in range(n_classes)], ECGFOUNDER_RECIPE
    return {
        "name": name,
        "version": "0",
        "architecture": architecture,
        "outputs": outputs,
        "preprocessing": recipe.to_dict(),
        "thresholds": dict(DEFAULT_THRESHOLDS) if n_classes == len(VESSEL_OUTPUTS) else {},
        "intended_use": "",
        "demonstration": False,
        "provenance": {"source": "foreign checkpoint without ecgcad metadata", "file": Path(source).name},
    }


def load_state_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, replace_head: bool = False
) -> None:
    """Load ``state`` into ``module``; any missing/unexpected key or shape mismatch is an error.

    Parameters
    ----------
    replace_head:
        ``dense.*`` of ``state`` is dropped and ``module``'s own head kept (building a new head).

    Raises
    ------
    CheckpointError
        Naming the missing, unexpected and mis-shaped keys.
    """
    expected = module.state_dict()
    given = dict(state)
    if replace_head:
        given = {k: v for k, v in given.items() if not k.startswith("dense.")}
        given.update({k: v for k, v in expected.items() if k.startswith("dense.")})
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(problems))
    module.load_state_dict(given, strict=True)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def validate_metadata(metadata: Mapping[str, Any], source: str = "<metadata>") -> None:
    """Check our metadata is complete and consistent (what we write must never be half-valid).

    Raises
    ------
    CheckpointError
    """
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint {source}: metadata lacks {missing}")
    try:
        PreprocessingRecipe.from_dict(dict(metadata["preprocessing"]))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {source}: bad preprocessing recipe: {exc}") from exc
    n_classes = metadata["architecture"].get("n_classes")
    if len(metadata["outputs"]) != n_classes:
        raise CheckpointError(
            f"checkpoint {source}: {len(metadata['outputs'])} output names for {n_classes} outputs"
        )


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def load_checkpoint_bytes(data: bytes, source: str = "<bytes>") -> LoadedModel:
    """:func:`load_checkpoint` for bytes already in memory (the built-in demonstration model)."""
    state, metadata = read_state_dict(data, source)
    if metadata is None:
        metadata = _foreign_metadata(_infer_architecture(state, source), source)
    validate_metadata(metadata, source)
    try:
        module = net1d_from_config(dict(metadata["architecture"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {source}: bad architecture: {exc}") from exc
    load_state_strict(module, state, source=source)
    module.eval()
    return LoadedModel(module=module, metadata=dict(metadata), sha256=sha256_bytes(data))


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a checkpoint strictly (any of the formats in the module docstring).

    Parameters
    ----------
    path:
        The checkpoint file.

    Returns
    -------
    LoadedModel
        ``.module`` in eval mode on the CPU, ``.metadata`` (for foreign formats: ECGFounder architecture
        inferred from the tensors; 150 outputs → ``name="ecgfounder"``, batch-norm off, global z-score;
        4 outputs → vessels [rca, lm, lad, lcx], batch-norm on, per-lead z-score), ``.sha256``.

    Raises
    ------
    CheckpointError
        Unreadable file, unknown format, or any key/shape mismatch (named in the message).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from exc
    loaded = load_checkpoint_bytes(data, str(p))
    loaded.path = p
    return loaded


def save_checkpoint(path: str | os.PathLike[str], module: nn.Module, metadata: Mapping[str, Any]) -> str:
    """Write our format (state dict + metadata) and return the file's SHA-256.

    The metadata is validated first and the state dict must load back strictly into the architecture it
    names, so a written checkpoint is never half-valid. Tensors are saved contiguous on the CPU.

    Raises
    ------
    CheckpointError
        Invalid metadata, or a state dict that does not match its architecture.
    """
    meta = dict(metadata)
    validate_metadata(meta, str(path))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    load_state_strict(net1d_from_config(dict(meta["architecture"])), state, source=str(path))
    buffer = io.BytesIO()
    torch.save(
        {"format": FORMAT, "format_version": FORMAT_VERSION, "metadata": meta, "state_dict": state}, buffer
    )
    data = buffer.getvalue()
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    return sha256_bytes(data)


def import_ecgfounder(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    name: str = "ecgfounder-4vessel-init",
    version: str = "0.0.0",
    seed: int = 0,
) -> LoadedModel:
    """Turn the public ECGFounder file into a 4-vessel starting checkpoint (backbone kept, new head, BN on).

    Every backbone key must be present with ECGFounder's shape; only ``dense.*`` is replaced (seeded
    initialisation). The result is not a trained model: its metadata says so in ``intended_use``.

    Returns
    -------
    LoadedModel
        The written checkpoint, loaded back.

    Raises
    ------
    CheckpointError
        The file is not a full ECGFounder backbone.
    """
    src = Path(path)
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {src}: {exc.strerror or exc}") from exc
    state, _ = read_state_dict(data, str(src))
    arch = _infer_architecture(state, str(src))
    torch.manual_seed(seed)
    module = net1d_from_config({**arch, "n_classes": len(VESSEL_OUTPUTS), "use_bn": True})
    load_state_strict(module, state, source=str(src), replace_head=True)
    metadata = {
        "name": name,
        "version": version,
        "architecture": module.config,
        "outputs": list(VESSEL_OUTPUTS),
        "preprocessing": VESSEL_RECIPE.to_dict(),
        "thresholds": dict(DEFAULT_THRESHOLDS),
        "intended_use": "Starting point for fine-tuning (untrained 4-vessel head); not for scoring.",
        "demonstration": False,
        "provenance": {
            "base_model": "ECGFounder 12-lead (MIT licence)",
            "base_file": src.name,
            "base_sha256": sha256_bytes(data),
            "head": f"dense replaced by Linear(1024, 4), torch seed {seed}",
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    save_checkpoint(out, module, metadata)
    return load_checkpoint(out)
