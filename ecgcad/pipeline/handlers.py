"""Registers the pipeline's job handlers on a worker."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ecgcad.pipeline import backfill, dead_letter, delivery, hl7_jobs, maintenance, scoring

if TYPE_CHECKING:
    from ecgcad.context import AppContext
    from ecgcad.jobs.worker import Handler, Worker

logger = logging.getLogger(__name__)

#: Job kind → handler factory, for every kind but ``score`` (micro-batched, registered apart). A kind
#: enqueued anywhere must be here: a worker without its handler would leave such jobs unclaimed.
HANDLER_FACTORIES: dict[str, Callable[[AppContext], Handler]] = {
    "decode": scoring.make_decode_handler,
    "hl7": hl7_jobs.make_hl7_handler,
    "deliver": delivery.make_deliver_handler,
    "rescore": scoring.make_rescore_handler,
    "retention": maintenance.make_retention_handler,
    "maintenance": maintenance.make_maintenance_handler,
    "dead_letter_sweep": dead_letter.make_dead_letter_sweep_handler,
    "pacs_catch_up": backfill.make_pacs_catch_up_handler,
}


def register_handlers(
    ctx: AppContext, worker: Worker, *, only: set[str] | None = None, exclude: set[str] | None = None
) -> None:
    """Register ``score`` (micro-batched) and every kind of :data:`HANDLER_FACTORIES` on ``worker``.

    ``only`` / ``exclude`` pick job kinds, so that deliveries (network-bound) run on their own threads and a
    slow peer never delays scoring.
    """

    def wanted(kind: str) -> bool:
        return (only is None or kind in only) and (exclude is None or kind not in exclude)

    model = ctx.settings.model
    if wanted("score"):
        worker.register(
            "score",
            scoring.make_score_handler(ctx),
            batch_size=model.max_batch,
            max_wait_ms=model.max_wait_ms,
            on_dead_letter=scoring.make_score_dead_letter_handler(ctx),
        )
    for kind, factory in HANDLER_FACTORIES.items():
        if wanted(kind):
            worker.register(kind, factory(ctx))


def warm_up() -> None:
    """Import the heavy builders now, so that the first result is not delayed by imports (seconds)."""
    for name in (
        "scipy.signal",
        "scipy.ndimage",
        "ecgcad.integration.formats.readers",
        "ecgcad.integration.formats.gate",
        "ecgcad.model.preprocess",
        "highdicom",
        "ecgcad.integration.reports.sr",
        "ecgcad.integration.reports.oru",
        "ecgcad.integration.reports.pdf",
        "ecgcad.integration.transport.dicom",
        "ecgcad.integration.transport.mllp",
        "pynetdicom",
        "matplotlib.pyplot",
    ):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - warm-up is best effort
            logger.debug("warm-up import of %s failed", name, exc_info=True)


def preload_model(ctx: AppContext) -> threading.Thread:
    """Load (and warm up) the scoring model in the background, so that the first ECG does not wait for it.

    The listeners accept and store meanwhile; a model that cannot be loaded is logged here and reported by
    readiness once scoring tries it (``checks.model_error``).
    """

    def load() -> None:
        try:
            ctx.get_predictor()
            logger.info("model loaded and warmed up")
        except Exception as exc:  # noqa: BLE001 - scoring reports it; the service keeps accepting
            logger.warning("model could not be loaded at start: %s", type(exc).__name__)

    thread = threading.Thread(target=load, name="model-preload", daemon=True)
    thread.start()
    return thread
