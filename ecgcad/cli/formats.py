"""``ecgcad inspect``: decode any supported ECG file and show what ecgcad sees.

Contract (used by tests outside the repository)::

    ecgcad inspect FILE [--json] [--npy OUT.npy] [--config FILE]

Prints format, SOP class, source sampling rate and duration, leads found and derived, units, the gate
verdict with reasons and the identifiers (patient ID, accession, study UID). ``--json`` prints one JSON
object instead (keys ``format``, ``sampling_rate``, ``duration_s``, ``leads``, ``derived_leads``,
``scorable``, ``reasons``, ``patient_id``, ``accession_number``, ``study_instance_uid`` and more).
``--npy`` writes the canonical float32 (12, 5000) mV, 500 Hz window (before filtering / normalisation).
Unsupported or broken input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ecgcad.cli._common import ConfigOption, fail, settings_or_fail


def register(app: typer.Typer) -> None:
    """Add the ``inspect`` command to the ``ecgcad`` app."""
    app.command("inspect")(inspect)


def inspect(
    file: Annotated[Path, typer.Argument(help="DICOM, MUSE XML, aECG XML or HL7 v2 file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    npy: Annotated[
        Path | None, typer.Option("--npy", help="Write the canonical (12, 5000) float32 mV window here.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Decode an ECG file and print its format, leads, gate verdict and identifiers."""
    from ecgcad.errors import EcgcadError
    from ecgcad.integration.formats.gate import check
    from ecgcad.integration.formats.prepare import prepare_window
    from ecgcad.integration.formats.readers import decode

    settings = settings_or_fail(config)
    try:
        data = file.read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    try:
        ecg = decode(data, filename=file.name)
        verdict = check(ecg, settings.gate)
    except EcgcadError as exc:
        fail(f"{file.name}: {_one_line(str(exc))}")

    prepared = prepare_window(
        ecg, settings.gate, gate=False
    )  # the window is shown even when the gate refuses
    window, window_error = prepared.window, prepared.failure_text or None

    ids = ecg.identifiers
    report: dict[str, Any] = {
        "file": str(file),
        "format": ecg.format,
        "sop_class_uid": ids.sop_class_uid,
        "sampling_rate": ecg.sampling_rate,
        "duration_s": round(ecg.duration_s, 4),
        "n_samples": int(ecg.signal.shape[1]),
        "leads": list(ecg.source_leads),
        "derived_leads": list(ecg.derived_leads),
        "units": ecg.source_units,
        "scorable": verdict.scorable,
        "reasons": [r.to_dict() for r in verdict.reasons],
        "gate_notes": list(verdict.notes),
        "age_years": verdict.age_years,
        "notes": list(ecg.notes),
        "patient_id": ids.patient_id,
        "issuer_of_patient_id": ids.issuer_of_patient_id,
        "accession_number": ids.accession_number,
        "study_instance_uid": ids.study_instance_uid,
        "sop_instance_uid": ids.sop_instance_uid,
        "placer_order_number": ids.placer_order_number,
        "filler_order_number": ids.filler_order_number,
        "window": window.to_dict() if window is not None else None,
    }

    if npy is not None:
        if window is None:
            fail(f"cannot write {npy}: {window_error}")
        import numpy as np

        try:
            np.save(npy, window.signal.astype(np.float32, copy=False))
        except OSError as exc:
            fail(f"cannot write {npy}: {exc.strerror or exc}")
        report["npy"] = str(npy)

    if as_json:
        typer.echo(json.dumps(report, default=str))
        return
    typer.echo(_text(report))


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _text(r: dict[str, Any]) -> str:
    def v(x: object) -> str:
        return "-" if x in (None, "", []) else str(x)

    lines = [
        f"format:             {r['format']}",
        f"SOP class:          {v(r['sop_class_uid'])}",
        f"sampling rate:      {r['sampling_rate']:g} Hz",
        f"duration:           {r['duration_s']:.2f} s ({r['n_samples']} samples)",
        f"leads found:        {v(', '.join(r['leads']))}",
        f"derived leads:      {v(', '.join(r['derived_leads']))}",
        f"units:              {v(r['units'])}",
        f"scorable:           {'yes' if r['scorable'] else 'no (not evaluated)'}",
    ]
    for reason in r["reasons"]:
        lines.append(f"  reason:           {reason['code']}: {reason['text']}")
    for note in r["gate_notes"]:
        lines.append(f"  gate note:        {note}")
    if r["window"]:
        w = r["window"]
        lines.append(
            f"window:             {w['policy']}, start {w['start_s']:g} s, "
            f"{'resampled ' + format(w['source_rate'], 'g') + ' → 500 Hz' if w['resampled'] else '500 Hz as recorded'}"
        )
    lines += [
        f"patient ID:         {v(r['patient_id'])}"
        + (f" (issuer {r['issuer_of_patient_id']})" if r["issuer_of_patient_id"] else ""),
        f"accession number:   {v(r['accession_number'])}",
        f"study instance UID: {v(r['study_instance_uid'])}",
    ]
    for note in r["notes"]:
        lines.append(f"note:               {note}")
    if r.get("npy"):
        lines.append(f"canonical signal:   {r['npy']}")
    return "\n".join(lines)
