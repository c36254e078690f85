"""``ecgcad selftest``: is each destination reachable and answering?"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ecgcad.config import Settings


def _echo(settings: Settings, host: str, port: int, called_ae: str, timeout: float) -> tuple[bool, str]:
    from pynetdicom import AE

    ae = AE(ae_title=settings.dicom.ae_title)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return False, "association rejected or peer unreachable"
    try:
        status = assoc.send_c_echo()
        code = int(status.Status) if status and "Status" in status else None
        return code == 0, f"C-ECHO status 0x{code:04X}" if code is not None else "no C-ECHO response"
    finally:
        assoc.release()


def _mllp_probe(settings: Settings, host: str, port: int, timeout: float) -> tuple[bool, str]:
    from ecgcad.integration.transport.mllp import MllpSender

    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    control = "SELFTEST" + now[-8:]
    msg = f"MSH|^~\\&|{settings.hl7.application}|{settings.hl7.facility}|||{now}||QRY^A19^QRY_A19|{control}|T|2.5.1\r".encode()
    outcome = MllpSender(host, port, timeout=timeout).send(msg)
    # Any acknowledgement (even AR for a test message) proves the destination answers MLLP.
    answered = outcome.status in ("AA", "CA", "AE", "AR", "CE", "CR")
    return answered, outcome.response


def check_destinations(settings: Settings) -> list[dict[str, Any]]:
    """One row per destination: name, kind, address, ok, response."""
    rows = []
    for dest in settings.destinations:
        try:
            if dest.kind == "dicom":
                ok, response = _echo(settings, dest.host, dest.port, dest.ae_title, min(dest.timeout_s, 10.0))
            else:
                ok, response = _mllp_probe(settings, dest.host, dest.port, min(dest.timeout_s, 10.0))
        except Exception as exc:  # noqa: BLE001 - a probe reports, never crashes
            ok, response = False, f"{type(exc).__name__}: {exc}"
        rows.append(
            {
                "name": dest.name,
                "kind": dest.kind,
                "address": f"{dest.host}:{dest.port}",
                "ok": ok,
                "response": response,
            }
        )
    return rows
