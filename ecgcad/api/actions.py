"""The seam between the API and the pipeline's actions (resend, rescore, report PDF).

The API calls these names, never :mod:`ecgcad.pipeline.actions` directly, so that tests can replace them
with stand-ins and the API still imports before the pipeline module exists. Each raises
:class:`ActionUnavailable` when the pipeline does not provide the action.
"""

from __future__ import annotations

import importlib
from typing import Any

from ecgcad.errors import EcgcadError


class ActionUnavailable(EcgcadError):
    """This action is not available in this installation."""


def _pipeline(name: str) -> Any:
    try:
        module = importlib.import_module("ecgcad.pipeline.actions")
    except ModuleNotFoundError as exc:
        if exc.name == "ecgcad.pipeline.actions":
            raise ActionUnavailable(f"{name} is not available: ecgcad.pipeline.actions is missing") from exc
        raise
    fn = getattr(module, name, None)
    if fn is None:
        raise ActionUnavailable(f"{name} is not available in ecgcad.pipeline.actions")
    return fn


def resend_delivery(
    ctx: Any, delivery_id: int, *, user: str, role: str, address: str | None
) -> dict[str, Any]:
    """Send a delivery again (see ``ecgcad.pipeline.actions.resend_delivery``)."""
    result: dict[str, Any] = _pipeline("resend_delivery")(
        ctx, delivery_id, user=user, role=role, address=address
    )
    return result


def rescore_ecg(ctx: Any, ecg_id: int, *, user: str, role: str, address: str | None) -> dict[str, Any]:
    """Queue an ECG for scoring again (see ``ecgcad.pipeline.actions.rescore_ecg``)."""
    result: dict[str, Any] = _pipeline("rescore_ecg")(ctx, ecg_id, user=user, role=role, address=address)
    return result


def report_pdf(ctx: Any, ecg_id: int) -> bytes:
    """The ECG's current report as PDF bytes (see ``ecgcad.pipeline.actions.report_pdf``)."""
    data: bytes = _pipeline("report_pdf")(ctx, ecg_id)
    return data
