"""The ECG tracing as a PNG (12 leads on a millimetre-style grid) for the dashboard's detail page."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ecgcad.db.models import EcgRecord, SourceObject
from ecgcad.db.objects import source_bytes
from ecgcad.errors import DecodeError, StorageError

if TYPE_CHECKING:
    from ecgcad.context import AppContext


def tracing_png(ctx: AppContext, ecg: EcgRecord, source: SourceObject) -> bytes:
    """Decode the ECG's stored source object and plot its 12 leads.

    Raises
    ------
    DecodeError
        The stored object cannot be decoded (or no reader is installed).
    StorageError
        The stored object is missing.
    """
    try:
        from ecgcad.integration.formats.readers import decode
    except ModuleNotFoundError as exc:
        raise DecodeError("no ECG readers installed") from exc
    try:
        data = source_bytes(ctx.store, source)
    except (OSError, KeyError) as exc:
        raise StorageError(f"source object of ECG {ecg.id} is missing") from exc
    decoded = decode(data)

    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.figure import Figure

    signal = np.asarray(decoded.signal, dtype=np.float32)
    rate = float(decoded.sampling_rate)
    n = min(signal.shape[1], int(rate * 10))
    t = np.arange(n) / rate
    leads = list(decoded.lead_names)
    fig = Figure(figsize=(11, 0.85 * len(leads) + 0.6), dpi=80)
    axes = fig.subplots(len(leads), 1, sharex=True)
    for ax, name, row in zip(np.atleast_1d(axes), leads, signal, strict=False):
        ax.plot(t, np.nan_to_num(row[:n]), linewidth=0.7, color="black")
        ax.set_ylabel(name, rotation=0, labelpad=18, fontsize=8)
        ax.grid(True, color="#f4a6a6", linewidth=0.4)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].set_xlabel("s")
    fig.subplots_adjust(left=0.06, right=0.99, top=0.99, bottom=0.05, hspace=0.05)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
