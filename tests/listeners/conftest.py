"""Fixtures for the listener tests: a migrated embedded service context and running listeners on loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
from pydicom.data import get_testdata_file

from ecgcad.config import Settings, load_settings
from ecgcad.context import AppContext
from ecgcad.listeners.dicom_scp import DicomScp
from ecgcad.listeners.hl7_server import Hl7Server
from tests import helpers


class _Listener(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


L = TypeVar("L", bound=_Listener)

ECG_FILE = str(get_testdata_file("waveform_ecg.dcm"))

#: dcmtk tools stall ~40 ms per exchange without it (Nagle + delayed ACK on their side).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test service under ``data_dir``: ephemeral ports, no disk reserve."""
    base: dict[str, Any] = {
        "data_dir": str(data_dir),
        "dicom": {"port": 0, "network_timeout_s": 10},
        "hl7": {"port": 0},
        "queue": {"min_free_disk_mb": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return load_settings(None, **base)


@pytest.fixture
def make_ctx(tmp_path: Path) -> Iterator[Callable[..., AppContext]]:
    """Build a migrated embedded :class:`AppContext` (settings overrides as keyword dicts)."""
    made: list[AppContext] = []

    def factory(**overrides: Any) -> AppContext:
        ctx = helpers.make_ctx(settings=make_settings(tmp_path / f"svc{len(made)}", **overrides))
        made.append(ctx)
        return ctx

    yield factory
    for ctx in made:
        ctx.close()


@pytest.fixture
def ctx(make_ctx: Callable[..., AppContext]) -> AppContext:
    """A default test context."""
    return make_ctx()


def require_tool(name: str) -> str:
    """The path of an external peer, or a visible skip."""
    path = shutil.which(name) or (name if os.path.exists(name) else None)
    if not path:
        pytest.skip(f"{name} is not installed")
    return path


def _starter(
    make_ctx: Callable[..., AppContext], component: Callable[[AppContext], L]
) -> Iterator[Callable[..., tuple[L, AppContext]]]:
    """Start ``component(ctx)`` on a new context per call (settings overrides as keyword dicts); stop them all."""
    running: list[L] = []

    def start(**overrides: Any) -> tuple[L, AppContext]:
        ctx = make_ctx(**overrides)
        listener = component(ctx)
        listener.start()
        running.append(listener)
        return listener, ctx

    yield start
    for listener in running:
        listener.stop()


@pytest.fixture
def start_server(
    make_ctx: Callable[..., AppContext],
) -> Iterator[Callable[..., tuple[Hl7Server, AppContext]]]:
    """Start an :class:`Hl7Server` on an ephemeral loopback port (settings overrides as keyword dicts)."""
    yield from _starter(make_ctx, Hl7Server)


@pytest.fixture
def start_scp(make_ctx: Callable[..., AppContext]) -> Iterator[Callable[..., tuple[DicomScp, AppContext]]]:
    """Start a :class:`DicomScp` on an ephemeral loopback port (settings overrides as keyword dicts)."""
    yield from _starter(make_ctx, DicomScp)
