"""Training commands: ``ecgcad dataset build|synthetic``, ``train``, ``evaluate``, ``thresholds choose``,
``model compare|compare-shadow|promote|rollback``.

torch is imported inside the commands, never at module import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ecgcad.cli._common import ConfigOption, fail, settings_or_fail
from ecgcad.errors import EcgcadError

dataset_app = typer.Typer(help="Labelled data sets (manifest → cached array store).", no_args_is_help=True)
thresholds_app = typer.Typer(help="Per-vessel risk thresholds.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the training commands to the ``ecgcad`` app."""
    app.add_typer(dataset_app, name="dataset")
    app.add_typer(thresholds_app, name="thresholds")
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)


class _Bar:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _Bar:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=None)
        return self

    def update(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            typer.echo(line, err=True)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


@dataset_app.command("build")
def dataset_build(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest CSV: path, patient_id, rca, lm, lad, lcx [+ optional].")
    ],
    out: Annotated[Path, typer.Argument(help="Folder of the array store to write.")],
    positive_grade: Annotated[
        int, typer.Option(help="Grades at or above this are positive (4 = severe ≥ 70 %, 5 = occlusion).")
    ] = 4,
    numbers: Annotated[
        str, typer.Option(help="Bare numbers in label cells: auto, binary or cad-rads.")
    ] = "auto",
    config: ConfigOption = None,
) -> None:
    """Decode every manifest ECG through the service's readers and gate into a cached array store."""
    from ecgcad.training.dataset import LabelMapping, build_dataset

    settings = settings_or_fail(config)
    try:
        mapping = LabelMapping(positive_grade=positive_grade, numbers=numbers)
        with _Bar("decoding") as bar:
            store = build_dataset(manifest, out, settings, mapping, progress=bar.update)
    except (EcgcadError, OSError) as exc:
        fail(str(exc))
    for e in store.excluded:
        why = "; ".join(f"{r['code']}: {r['text']}" for r in e["reasons"]) or "not scorable"
        typer.echo(f"excluded line {e['row']} {e['path']}: {why}", err=True)
    typer.echo(f"wrote {out}: {store.count} scorable ECGs, {len(store.excluded)} excluded (see excluded.csv)")


@dataset_app.command("synthetic")
def dataset_synthetic(
    out: Annotated[Path, typer.Argument(help="Folder of the array store to write.")],
    n: Annotated[int, typer.Option("--n", help="Number of synthetic ECGs.")] = 2000,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 1,
) -> None:
    """Write a store of synthetic ECGs with territory-specific ischaemic changes (pipeline tests only)."""
    from ecgcad.training.dataset import build_synthetic_store

    store = build_synthetic_store(out, n, seed)
    typer.echo(f"wrote {out}: {store.count} synthetic ECGs (seed {seed})")


def _int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{option}: expected comma-separated integers, got {text!r}")


def _architecture(
    width: int | None,
    filters: str | None,
    blocks: str | None,
    groups_width: int | None,
    kernel_size: int | None,
) -> dict[str, Any] | None:
    """The Net1D architecture asked for by ``train``'s options; ``None`` (the full ECGFounder one) if none.

    Parameters
    ----------
    width:
        ``--width``: the reduced Net1D of :func:`~ecgcad.training.train.width_architecture`.
    filters, blocks:
        ``--filters`` and ``--blocks``: comma-separated ``filter_list`` and ``m_blocks_list``; they override
        ``--width``'s, and without it ``base_filters`` is the first filter count.
    groups_width, kernel_size:
        ``--groups-width`` and ``--kernel-size``: override the corresponding setting.

    Returns
    -------
    dict[str, Any] | None
        Keyword arguments of ``build_net1d``.
    """
    from ecgcad.training.train import width_architecture

    arch: dict[str, Any] | None = width_architecture(width) if width else None
    extra: dict[str, Any] = {
        "filter_list": _int_list(filters, "--filters"),
        "m_blocks_list": _int_list(blocks, "--blocks"),
        "groups_width": groups_width,
        "kernel_size": kernel_size,
    }
    extra = {k: v for k, v in extra.items() if v is not None}
    if extra:
        arch = {**(arch or {}), **extra}
        if "filter_list" in extra and not width:
            arch.setdefault("base_filters", extra["filter_list"][0])
    return arch


def train_command(
    dataset: Annotated[Path, typer.Argument(help="Array store from `ecgcad dataset build`.")],
    out: Annotated[
        Path, typer.Argument(help="Run folder (checkpoints, metrics.jsonl, predictions.csv, model.pt).")
    ],
    init: Annotated[
        Path | None,
        typer.Option(help="Start from this checkpoint (12_lead_ECGFounder.pth or ours); default scratch."),
    ] = None,
    linear_probe: Annotated[bool, typer.Option("--linear-probe", help="Train only the head.")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs per fold.")] = 100,
    batch_size: Annotated[int, typer.Option(help="ECGs per step (plus an augmented copy).")] = 64,
    augmented_copy: Annotated[bool, typer.Option(help="Add an augmented copy of every batch.")] = True,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (paper 3e-5 for fine-tuning).")] = 3e-5,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 5e-4,
    warmup: Annotated[float, typer.Option(help="Fraction of steps of linear warm-up.")] = 0.1,
    final_lr: Annotated[float, typer.Option(help="Cosine decays to this fraction of the peak rate.")] = 0.01,
    uncertainty_weighting: Annotated[
        bool, typer.Option(help="Learned per-vessel log-variance weights.")
    ] = True,
    pcgrad: Annotated[bool, typer.Option(help="PCGrad on the per-vessel gradients.")] = True,
    dropout: Annotated[bool, typer.Option(help="Dropout in the blocks (p 0.5).")] = True,
    aug_shift: Annotated[float, typer.Option(help="Largest circular shift, fraction of the record.")] = 0.1,
    aug_amplitude: Annotated[float, typer.Option(help="Amplitude factor U(1−a, 1+a).")] = 0.1,
    aug_noise: Annotated[float, typer.Option(help="Gaussian noise SD (z-score units).")] = 0.05,
    aug_zero_min: Annotated[float, typer.Option(help="Smallest zeroed window, fraction.")] = 0.02,
    aug_zero_max: Annotated[float, typer.Option(help="Largest zeroed window, fraction.")] = 0.10,
    aug_start: Annotated[float, typer.Option(help="Augmentation intensity at the first epoch.")] = 1.0,
    aug_end: Annotated[float, typer.Option(help="Augmentation intensity at the last epoch.")] = 0.5,
    split: Annotated[
        str, typer.Option(help="cv (grouped stratified folds) or fixed (60/20/20 or a split column).")
    ] = "cv",
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    only_folds: Annotated[str | None, typer.Option(help="Run only these folds, e.g. 0,1.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of folds, initialisation, shuffling and augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast on CUDA.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    width: Annotated[
        int | None, typer.Option(help="Reduced Net1D: filters w,2w,2w,4w,4w,8w,8w, 1 block each.")
    ] = None,
    filters: Annotated[
        str | None, typer.Option(help="Net1D filter_list, e.g. 16,32,32,64,64,128,128.")
    ] = None,
    blocks: Annotated[str | None, typer.Option(help="Net1D m_blocks_list, e.g. 1,1,1,1,1,1,1.")] = None,
    groups_width: Annotated[int | None, typer.Option(help="Channels per group.")] = None,
    kernel_size: Annotated[int | None, typer.Option(help="Convolution kernel size.")] = None,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size of validation passes.")] = 256,
    name: Annotated[str, typer.Option(help="Model name in the checkpoint.")] = "ecgcad-4vessel",
    version: Annotated[str, typer.Option(help="Model version in the checkpoint.")] = "0.1.0",
    threshold_rule: Annotated[
        str, typer.Option(help="paper, incidence, specificity or sensitivity.")
    ] = "paper",
    threshold_target: Annotated[
        float | None, typer.Option(help="Target of the specificity/sensitivity rule.")
    ] = None,
    screening_specificity: Annotated[float, typer.Option(help="Specificity of the screening cut.")] = 0.95,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in OUT from its last epoch.")
    ] = False,
) -> None:
    """Fine-tune Net1D with the paper's recipe (5-fold grouped CV by default); writes OUT/model.pt."""
    import torch

    from ecgcad.training.dataset import DatasetStore
    from ecgcad.training.recipe import AugmentationSettings
    from ecgcad.training.train import TrainConfig, train

    if threads:
        torch.set_num_threads(threads)
    arch = _architecture(width, filters, blocks, groups_width, kernel_size)
    try:
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            augmented_copy=augmented_copy,
            lr=lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup,
            final_lr_fraction=final_lr,
            uncertainty_weighting=uncertainty_weighting,
            pcgrad=pcgrad,
            augmentation=AugmentationSettings(
                aug_shift, aug_amplitude, aug_noise, aug_zero_min, aug_zero_max, aug_start, aug_end
            ),
            linear_probe=linear_probe,
            dropout=dropout,
            split=split,
            folds=folds,
            only_folds=_int_list(only_folds, "--only-folds"),
            seed=seed,
            device=device,
            bf16=bf16,
            init=str(init) if init else None,
            architecture=arch,
            eval_batch_size=eval_batch_size,
            name=name,
            version=version,
            threshold_rule=threshold_rule,
            threshold_target=threshold_target,
            screening_specificity=screening_specificity,
        )
        store = DatasetStore.open(dataset)
        with _Bar("training") as bar:
            summary = train(store, out, cfg, resume=resume, progress=bar.say, on_step=bar.update)
    except EcgcadError as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=1))


def evaluate_command(
    out: Annotated[Path, typer.Argument(help="Folder for report.html, report.pdf, evaluation.json.")],
    dataset: Annotated[
        Path | None, typer.Option(help="Array store (signals for scoring and median beats).")
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Score the store with this checkpoint.")] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Or evaluate a predictions CSV (e.g. out-of-fold).")
    ] = None,
    thresholds_from: Annotated[
        str, typer.Option(help="Thresholds: 'config' ([thresholds] settings) or 'checkpoint' (its metadata).")
    ] = "config",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC CI.")] = 1000,
    specificity: Annotated[float, typer.Option(help="Specificity of the screening cut.")] = 0.95,
    median_beats: Annotated[
        bool, typer.Option(help="High vs low-risk median beats (needs --dataset).")
    ] = True,
    device: Annotated[str, typer.Option(help="Device for scoring.")] = "auto",
    config: ConfigOption = None,
) -> None:
    """Per-vessel AUC (bootstrap CI), operating points, calibration, decision curves, subgroups; HTML+PDF+JSON."""
    from ecgcad.training.dataset import DatasetStore
    from ecgcad.training.evaluate import evaluate_predictions
    from ecgcad.training.evaluate_data import predict_store, read_predictions, write_predictions
    from ecgcad.training.evaluate_report import write_report

    settings = settings_or_fail(config)
    if (checkpoint is None) == (predictions is None):
        fail("give exactly one of --checkpoint (with --dataset) or --predictions")
    try:
        store = DatasetStore.open(dataset) if dataset else None
        model_info: dict[str, Any] = {}
        thresholds = settings.thresholds.as_dict()
        demonstration = False
        if checkpoint is not None:
            if store is None:
                fail("--checkpoint needs --dataset")
            from ecgcad.model.checkpoint import load_checkpoint
            from ecgcad.model.predictor import TorchPredictor

            loaded = load_checkpoint(checkpoint)
            predictor = TorchPredictor(loaded, device=device, warmup=False)
            preds = predict_store(predictor, store)
            model_info = {"model_version": predictor.model_version, "checkpoint_sha256": loaded.sha256}
            demonstration = loaded.demonstration
            if thresholds_from == "checkpoint":
                thresholds = dict(loaded.metadata.get("thresholds") or thresholds)
            out.mkdir(parents=True, exist_ok=True)
            write_predictions(out / "predictions.csv", preds)
        else:
            assert predictions is not None
            preds = read_predictions(predictions)
            model_info = {"predictions": str(predictions)}
        signals = store.signals if (store is not None and median_beats) else None
        results = evaluate_predictions(
            preds, thresholds, signals=signals, specificity=specificity, n_bootstrap=bootstrap
        )
        results["model"] = model_info
        paths = write_report(out, preds, results, demonstration=demonstration)
    except EcgcadError as exc:
        fail(str(exc))
    for v, e in results["vessels"].items():
        ci = e["auc_ci95"]
        typer.echo(
            f"{v.upper()}: AUC {e['auc']:.3f} (95 % CI {ci[0]:.3f}–{ci[1]:.3f})"
            if e["auc"] is not None
            else f"{v.upper()}: AUC undefined"
        )
    typer.echo(f"wrote {paths['html']}, {paths['pdf']}, {paths['json']}")


@thresholds_app.command("choose")
def thresholds_choose(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint whose metadata gets the thresholds.")],
    out: Annotated[
        Path, typer.Argument(help="Checkpoint file to write (a new file: the weights are unchanged).")
    ],
    rule: Annotated[str, typer.Option(help="paper, incidence, specificity or sensitivity.")] = "incidence",
    target: Annotated[float | None, typer.Option(help="Target specificity or sensitivity (0–1).")] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Labelled predictions CSV (e.g. out-of-fold).")
    ] = None,
    screening_specificity: Annotated[
        float | None, typer.Option(help="Also record a screening cut at this specificity.")
    ] = 0.95,
) -> None:
    """Choose per-vessel thresholds by rule and write them into a checkpoint's metadata."""
    from ecgcad.training.evaluate_data import read_predictions
    from ecgcad.training.thresholds import choose_thresholds, cut_for_specificity, write_thresholds

    try:
        preds = read_predictions(predictions) if predictions else None
        y = preds.labels if preds else None
        p = preds.probabilities if preds else None
        chosen = choose_thresholds(y, p, rule, target)
        screening = None
        if screening_specificity is not None and y is not None and p is not None:
            from ecgcad.model.risk import VESSELS

            screening = {
                v: cut_for_specificity(y[:, k], p[:, k], screening_specificity) for k, v in enumerate(VESSELS)
            }
        sha = write_thresholds(
            checkpoint,
            out,
            chosen,
            rule=rule,
            target=target,
            screening=screening,
            source=str(predictions or ""),
        )
    except EcgcadError as exc:
        fail(str(exc))
    typer.echo(
        json.dumps(
            {"thresholds": chosen, "screening": screening, "checkpoint": str(out), "sha256": sha}, indent=1
        )
    )
