"""Model commands: ``ecgcad score``, ``ecgcad model info | import-ecgfounder | demo``.

torch is imported inside the commands, never at module import, so ``ecgcad version`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ecgcad.cli._common import ConfigOption, acting_user, fail, open_database, settings_or_fail
from ecgcad.errors import EcgcadError

if TYPE_CHECKING:
    import numpy as np


model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)

#: Files in a folder are scored when their suffix is one of these (or they have none: DICOM often has none).
SCORABLE_SUFFIXES = {".dcm", ".dicom", ".xml", ".hl7", ".txt", ".er7", ""}


def register(app: typer.Typer) -> None:
    """Add the model commands to the ``ecgcad`` app."""
    app.add_typer(model_app, name="model")
    app.command("score")(score)
    model_app.command("compare")(model_compare)
    model_app.command("compare-shadow")(model_compare_shadow)
    model_app.command("promote")(model_promote)
    model_app.command("rollback")(model_rollback)


@model_app.command("info")
def model_info(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (any supported format).")],
) -> None:
    """Print a checkpoint's metadata, SHA-256 and parameter count as JSON."""
    from ecgcad.model.checkpoint import load_checkpoint

    try:
        loaded = load_checkpoint(checkpoint)
    except EcgcadError as exc:
        fail(str(exc))
    params = sum(p.numel() for p in loaded.module.parameters())
    out = {"file": str(checkpoint), "sha256": loaded.sha256, "parameters": params, **loaded.metadata}
    typer.echo(json.dumps(out, indent=2, default=str))


@model_app.command("import-ecgfounder")
def model_import_ecgfounder(
    path: Annotated[Path, typer.Argument(help="The public 12_lead_ECGFounder.pth.")],
    out: Annotated[Path, typer.Argument(help="Checkpoint to write (4-vessel starting point).")],
    seed: Annotated[int, typer.Option(help="Seed of the new head's initialisation.")] = 0,
) -> None:
    """Turn the public ECGFounder file into a 4-vessel starting checkpoint (backbone kept, new head, BN on)."""
    from ecgcad.model.checkpoint import import_ecgfounder

    try:
        loaded = import_ecgfounder(path, out, seed=seed)
    except EcgcadError as exc:
        fail(str(exc))
    typer.echo(f"wrote {out} (sha256 {loaded.sha256})")


@model_app.command("demo")
def model_demo(
    out: Annotated[Path, typer.Argument(help="Checkpoint file to write.")],
) -> None:
    """Rebuild the demonstration model from seeds (synthetic ECGs; a few minutes on a CPU)."""
    from ecgcad.model.demo import build_demo_model

    loaded = build_demo_model(out, progress=lambda line: typer.echo(line, err=True))
    auc = loaded.metadata["provenance"]["validation_auc"]
    typer.echo(f"wrote {out} (sha256 {loaded.sha256}); validation AUC {auc}")


def _collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(
                sorted(
                    f
                    for f in p.rglob("*")
                    if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in SCORABLE_SUFFIXES
                )
            )
        elif p.exists():
            files.append(p)
        else:
            fail(f"no such file or folder: {p}")
    return files


def _human_line(record: dict[str, Any]) -> str:
    if not record["scorable"]:
        why = "; ".join(r["text"] for r in record["reasons"]) or "not scorable"
        return f"{record['file']}: not scored — {why}"
    parts = []
    for vessel, p in record["probabilities"].items():
        mark = " FLAG" if record["flags"][vessel] else ""
        parts.append(f"{vessel.upper()} {p:.3f} ({record['bands'][vessel]}{mark})")
    verdict = "FLAGGED" if record["any_flagged"] else "not flagged"
    return f"{record['file']}: " + ", ".join(parts) + f" — {verdict}"


def score(
    paths: Annotated[list[Path], typer.Argument(help="ECG files or folders (DICOM, MUSE XML, aECG, HL7).")],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint (default: the model.checkpoint setting, else the demo model)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per ECG on stdout.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Add attributions and median beats.")] = False,
    config: ConfigOption = None,
) -> None:
    """Score ECG files with the same preprocessing and predictor as the service."""
    import numpy as np

    from ecgcad.integration.formats.prepare import prepare_file
    from ecgcad.model.predictor import default_predictor
    from ecgcad.model.risk import DISCLAIMER

    overrides = {"model": {"checkpoint": str(checkpoint)}} if checkpoint else {}
    settings = settings_or_fail(config, **overrides)
    files = _collect(paths)
    try:
        predictor = default_predictor(settings)
    except EcgcadError as exc:
        fail(str(exc))
    if predictor.demonstration:
        typer.echo(DISCLAIMER, err=as_json)

    progress = None
    if len(files) > 3 and sys.stderr.isatty():
        from rich.progress import Progress

        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task("scoring", total=len(files))

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record) if as_json else _human_line(record)
        if progress is not None:
            progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            progress.advance(task)
        else:
            typer.echo(line)

    try:
        pending: list[tuple[dict[str, Any], np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            try:
                preds = predictor.predict(np.stack([s for _, s in pending]))
            except EcgcadError as exc:
                fail(str(exc))
            for (record, sig), pred in zip(pending, preds, strict=True):
                record.update(pred.to_dict())
                if explain:
                    from ecgcad.model.explain import explain as explain_fn
                    from ecgcad.model.explain import median_beats

                    record["explanation"] = explain_fn(predictor, sig)
                    try:
                        record["median_beats"] = np.round(median_beats(sig), 4).tolist()
                    except EcgcadError as exc:
                        record["median_beats"] = None
                        record["reasons"].append({"code": "median-beats", "text": str(exc)})
                emit(record)
            pending.clear()

        for path in files:
            sig, reasons = prepare_file(path, settings.gate)
            record: dict[str, Any] = {
                "file": str(path),
                "scorable": sig is not None,
                "reasons": reasons,
                "probabilities": None,
                "bands": None,
                "flags": None,
                "any_flagged": None,
                "model_version": predictor.model_version,
                "demonstration": predictor.demonstration,
            }
            if predictor.demonstration:
                record["disclaimer"] = DISCLAIMER
            if sig is None:
                flush()  # keep output in input order
                emit(record)
                continue
            pending.append((record, np.asarray(sig, dtype=np.float32)))
            if len(pending) >= predictor.max_batch:
                flush()
        flush()
    finally:
        if progress is not None:
            progress.stop()


def model_compare(
    active: Annotated[Path, typer.Argument(help="The active checkpoint.")],
    candidate: Annotated[Path, typer.Argument(help="The candidate checkpoint.")],
    dataset: Annotated[Path, typer.Option(help="Array store of the ECGs both models score.")],
    out: Annotated[Path | None, typer.Option(help="Write the comparison JSON here too.")] = None,
    device: Annotated[str, typer.Option(help="Device for scoring.")] = "auto",
    config: ConfigOption = None,
) -> None:
    """Per-vessel agreement, flag flip rate and calibration of two models on the same ECGs."""
    from ecgcad.model.checkpoint import load_checkpoint
    from ecgcad.model.predictor import TorchPredictor
    from ecgcad.model.risk import RiskThresholds
    from ecgcad.training.compare import compare_probabilities
    from ecgcad.training.dataset import DatasetStore
    from ecgcad.training.evaluate_data import predict_store

    settings = settings_or_fail(config)
    thresholds = RiskThresholds.from_settings(settings.thresholds)
    try:
        store = DatasetStore.open(dataset)
        a = TorchPredictor(load_checkpoint(active), thresholds=thresholds, device=device, warmup=False)
        c = TorchPredictor(load_checkpoint(candidate), thresholds=thresholds, device=device, warmup=False)
        pa, pc = predict_store(a, store), predict_store(c, store)
        result = compare_probabilities(
            pa.probabilities, pc.probabilities, thresholds.high, thresholds.high, pa.labels
        )
    except EcgcadError as exc:
        fail(str(exc))
    result = {
        "active": a.model_version,
        "candidate": c.model_version,
        "thresholds": dict(thresholds.high),
        **result,
    }
    text = json.dumps(result, indent=1, default=float)
    if out:
        out.write_text(text)
    typer.echo(text)


def model_compare_shadow(config: ConfigOption = None) -> None:
    """Compare the active and the shadow model on the live ECGs both scored (stored results; no labels)."""
    from ecgcad.db.session import Database
    from ecgcad.training.compare import compare_probabilities, shadow_pairs

    settings = settings_or_fail(config)
    thresholds = settings.thresholds.as_dict()
    db = Database.from_settings(settings)
    try:
        with db.session() as session:
            va, vs, pa, ps = shadow_pairs(session)
        result = compare_probabilities(pa, ps, thresholds, thresholds)
    except EcgcadError as exc:
        fail(str(exc))
    finally:
        db.dispose()
    typer.echo(json.dumps({"active": va, "shadow": vs, **result}, indent=1, default=float))


def model_promote(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to make active.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")] = "",
    config: ConfigOption = None,
) -> None:
    """Make CHECKPOINT the active model (audited; the service uses it from its next start)."""
    from ecgcad.pipeline.lifecycle import promote

    db = open_database(config)
    try:
        with db.session() as session:
            entry = promote(session, checkpoint, user=acting_user(), reason=reason)
    except EcgcadError as exc:
        fail(str(exc))
    finally:
        db.dispose()
    typer.echo(f"promoted {entry['model_version']} ({entry['checkpoint']}); restart the service to use it")


def model_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")] = "",
    config: ConfigOption = None,
) -> None:
    """Make the previously active model active again (audited)."""
    from ecgcad.pipeline.lifecycle import rollback

    db = open_database(config)
    try:
        with db.session() as session:
            entry = rollback(session, user=acting_user(), reason=reason)
    except EcgcadError as exc:
        fail(str(exc))
    finally:
        db.dispose()
    typer.echo(
        f"rolled back to {entry['model_version']} ({entry['checkpoint']}); restart the service to use it"
    )
