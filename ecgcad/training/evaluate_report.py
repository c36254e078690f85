"""The evaluation report: matplotlib figures, written as one HTML page (figures inline) and one PDF.

:func:`write_report` writes ``report.html``, ``report.pdf`` and ``evaluation.json`` (every number) into a
folder. The figures: ROC curves, calibration (deciles + LOWESS), decision curves, probability by CCTA
grade, subgroup AUCs and, when the signals were given, high- versus low-risk median beats per vessel.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgcad.model.risk import DISCLAIMER, VESSELS
from ecgcad.training.evaluate_data import Predictions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = {"rca": "#1f77b4", "lm": "#d62728", "lad": "#2ca02c", "lcx": "#9467bd"}


def _roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.concatenate([[0], np.cumsum(y[order])])
    fp = np.concatenate([[0], np.cumsum(~y[order])])
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


def _figures(preds: Predictions, results: dict[str, Any]) -> list[tuple[str, Figure]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figs: list[tuple[str, Figure]] = []
    vessels = results["vessels"]

    fig = Figure(figsize=(6.5, 6))
    ax = fig.add_subplot()
    for k, v in enumerate(VESSELS):
        fpr, tpr = _roc_points(preds.labels[:, k], preds.probabilities[:, k])
        auc = vessels[v]["auc"]
        ci = vessels[v]["auc_ci95"]
        label = (
            f"{v.upper()} AUC {auc:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"
            if auc is not None and ci[0] is not None
            else v.upper()
        )
        ax.plot(fpr, tpr, color=COLOURS[v], lw=2, label=label)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title="ROC curves (95 % bootstrap CI)")
    ax.legend(loc="lower right", fontsize=8)
    figs.append(("ROC curves", fig))

    fig = Figure(figsize=(9, 8))
    for k, v in enumerate(VESSELS):
        ax = fig.add_subplot(2, 2, k + 1)
        cal = vessels[v]["calibration"]
        gx = [g["predicted"] for g in cal["groups"]]
        gy = [g["observed"] for g in cal["groups"]]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.plot(cal["lowess"]["x"], cal["lowess"]["y"], color=COLOURS[v], lw=2, label="LOWESS")
        ax.scatter(gx, gy, color="black", s=18, zorder=3, label="deciles")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="predicted",
            ylabel="observed",
            title=f"{v.upper()} — Brier {cal['brier']:.3f}",
        )
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    figs.append(("Calibration", fig))

    fig = Figure(figsize=(9, 8))
    for k, v in enumerate(VESSELS):
        ax = fig.add_subplot(2, 2, k + 1)
        dca = vessels[v]["decision_curve"]
        ax.plot(dca["threshold"], dca["model"], color=COLOURS[v], lw=2, label="model")
        ax.plot(dca["threshold"], dca["treat_all"], color="grey", lw=1, label="treat all")
        ax.plot(dca["threshold"], dca["treat_none"], color="black", lw=1, ls=":", label="treat none")
        prev = vessels[v]["prevalence"] or 0.0
        ax.set(
            ylim=(-0.05, max(0.05, prev * 1.1)),
            xlabel="threshold probability",
            ylabel="net benefit",
            title=v.upper(),
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    figs.append(("Decision curves", fig))

    if any(preds.grades[:, k][~np.isnan(preds.grades[:, k])].size for k in range(len(VESSELS))):
        fig = Figure(figsize=(9, 8))
        for k, v in enumerate(VESSELS):
            ax = fig.add_subplot(2, 2, k + 1)
            g = preds.grades[:, k]
            known = np.unique(g[~np.isnan(g)])
            data = [preds.probabilities[g == x, k] for x in known]
            if data:
                ax.boxplot(data, tick_labels=[str(int(x)) for x in known])
            trend = results["grade_trend"].get(v)
            rho = f" — Spearman ρ {trend['rho']:.2f}" if trend and trend.get("rho") is not None else ""
            ax.set(
                xlabel="CCTA grade (0 none … 5 occlusion)", ylabel="probability", title=f"{v.upper()}{rho}"
            )
        fig.tight_layout()
        figs.append(("Probability by CCTA grade", fig))

    if results["subgroups"]:
        names = [(s, g) for s, groups in results["subgroups"].items() for g in groups]
        fig = Figure(figsize=(9, 0.9 + 0.35 * len(names)))
        ax = fig.add_subplot()
        y = np.arange(len(names))
        for k, v in enumerate(VESSELS):
            vals = [results["subgroups"][s][g]["auc"][v] for s, g in names]
            ax.scatter(
                [np.nan if x is None else x for x in vals],
                y + (k - 1.5) * 0.15,
                color=COLOURS[v],
                label=v.upper(),
                s=16,
            )
        ax.set_yticks(y, [f"{s}: {g} (n={results['subgroups'][s][g]['n']})" for s, g in names], fontsize=7)
        ax.set(xlabel="AUC", xlim=(0.4, 1.0), title="Subgroup AUCs")
        ax.axvline(0.5, color="grey", lw=0.5)
        ax.legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        figs.append(("Subgroup AUCs", fig))

    beats = results.get("median_beats")
    if beats:
        t = (
            (
                np.arange(len(next(iter(beats["vessels"].values())).get("high_beat", [[0]])[0]))
                - beats["r_index"]
            )
            / beats["sampling_rate"]
            * 1000
        )
        for v, entry in beats["vessels"].items():
            if "high_beat" not in entry:
                continue
            fig = Figure(figsize=(9, 7))
            hb, lb = np.array(entry["high_beat"]), np.array(entry["low_beat"])
            for lead in range(12):
                ax = fig.add_subplot(3, 4, lead + 1)
                ax.plot(t, lb[lead], color="grey", lw=1, label=f"low risk (n={entry['n_low']})")
                ax.plot(t, hb[lead], color=COLOURS[v], lw=1.5, label=f"high risk (n={entry['n_high']})")
                ax.set_title(beats["leads"][lead], fontsize=8)
                ax.tick_params(labelsize=6)
                if lead == 0:
                    ax.legend(fontsize=5)
            fig.suptitle(f"{v.upper()}: mean median beat, high vs low risk (mV, ms from R)", fontsize=9)
            fig.tight_layout()
            figs.append((f"Median beats — {v.upper()}", fig))
    return figs


def _table(results: dict[str, Any]) -> list[list[str]]:
    def f(x: float | None, pct: bool = False) -> str:
        if x is None:
            return "–"
        return f"{100 * x:.1f} %" if pct else f"{x:.3f}"

    rows = [
        [
            "vessel",
            "n (pos)",
            "AUC (95 % CI)",
            "thr",
            "sens",
            "spec",
            "PPV",
            "NPV",
            "spec-95 cut",
            "sens @95 % spec",
            "Brier",
        ]
    ]
    for v in VESSELS:
        e = results["vessels"][v]
        at, sp = e["at_threshold"], e.get("at_specificity", {})
        ci = e["auc_ci95"]
        rows.append([
            v.upper(), f"{e['n']} ({e['positives']})", f"{f(e['auc'])} ({f(ci[0])}–{f(ci[1])})", f"{at['threshold']:.3g}",
            f(at["sensitivity"], True), f(at["specificity"], True), f(at["ppv"], True), f(at["npv"], True),
            f(sp.get("threshold")), f(sp.get("sensitivity"), True), f(e["calibration"]["brier"]),
        ])  # fmt: skip
    return rows


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def write_report(
    out: str | os.PathLike[str],
    preds: Predictions,
    results: dict[str, Any],
    *,
    title: str = "ecgcad evaluation",
    demonstration: bool = False,
) -> dict[str, Path]:
    """Write ``evaluation.json``, ``report.html`` and ``report.pdf`` into ``out``; returns their paths."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    paths = {"json": root / "evaluation.json", "html": root / "report.html", "pdf": root / "report.pdf"}
    paths["json"].write_text(json.dumps(results, indent=1))
    figs = _figures(preds, results)
    table = _table(results)
    banner = DISCLAIMER if demonstration else ""
    meta = results.get("model", {})

    with PdfPages(paths["pdf"]) as pdf:
        page = Figure(figsize=(11.7, 8.3))
        page.text(0.05, 0.94, title, fontsize=16, weight="bold")
        if banner:
            page.text(0.05, 0.90, banner, fontsize=12, color="red", weight="bold")
        page.text(
            0.05,
            0.86,
            f"{results['n_ecgs']} ECGs, {results['n_patients']} patients · model {meta.get('model_version', '–')}",
            fontsize=9,
        )
        ax = page.add_axes((0.03, 0.35, 0.94, 0.45))
        ax.axis("off")
        tab = ax.table(cellText=table[1:], colLabels=table[0], loc="upper center", cellLoc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        tab.scale(1, 1.5)
        page.text(
            0.05,
            0.25,
            "Thresholds: the configured high-risk cuts; the spec-95 cut is chosen on this set (optimistic).",
            fontsize=8,
        )
        pdf.savefig(page)
        for _, fig in figs:
            pdf.savefig(fig)

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}.banner{color:#b00;font-weight:bold}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    if banner:
        parts.append(f"<p class='banner'>{html.escape(banner)}</p>")
    parts.append(
        f"<p>{results['n_ecgs']} ECGs, {results['n_patients']} patients · model {html.escape(str(meta.get('model_version', '–')))}</p>"
    )
    parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr>")
    for row in table[1:]:
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    for name, fig in figs:
        data = base64.b64encode(_png(fig)).decode()
        parts.append(
            f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("<h2>All numbers</h2><p>See <code>evaluation.json</code>.</p></body></html>")
    paths["html"].write_text("\n".join(parts), encoding="utf-8")
    return paths
