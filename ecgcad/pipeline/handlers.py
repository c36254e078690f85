"""Registers the pipeline's job handlers on a worker."""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

OPTIONAL_HANDLERS = (
    ("hl7", "ecgcad.pipeline.hl7_jobs", "make_hl7_handler"),
    ("deliver", "ecgcad.pipeline.delivery", "make_deliver_handler"),
    ("rescore", "ecgcad.pipeline.delivery", "make_rescore_handler"),
    ("retention", "ecgcad.pipeline.maintenance", "make_retention_handler"),
    ("maintenance", "ecgcad.pipeline.maintenance", "make_maintenance_handler"),
    ("dead_letter_sweep", "ecgcad.pipeline.dead_letter", "make_dead_letter_sweep_handler"),
    ("pacs_catch_up", "ecgcad.pipeline.backfill", "make_pacs_catch_up_handler"),
)


def register_handlers(
    ctx: Any, worker: Any, *, only: set[str] | None = None, exclude: set[str] | None = None
) -> None:
    """Register ``score`` (micro-batched), ``decode``, ``hl7``, ``deliver`` and maintenance handlers.

    ``only`` / ``exclude`` pick job kinds, so that deliveries (network-bound) run on their own threads and a
    slow peer never delays scoring.
    """
    from ecgcad.pipeline.scoring import (
        make_decode_handler,
        make_score_dead_letter_handler,
        make_score_handler,
    )

    def wanted(kind: str) -> bool:
        return (only is None or kind in only) and (exclude is None or kind not in exclude)

    model = ctx.settings.model
    if wanted("score"):
        worker.register(
            "score",
            make_score_handler(ctx),
            batch_size=model.max_batch,
            max_wait_ms=model.max_wait_ms,
            on_dead_letter=make_score_dead_letter_handler(ctx),
        )
    if wanted("decode"):
        worker.register("decode", make_decode_handler(ctx))
    for kind, module_name, factory in OPTIONAL_HANDLERS:
        if not wanted(kind):
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                logger.debug("no handler module for %s yet", kind)
                continue
            raise
        if hasattr(module, factory):
            worker.register(kind, getattr(module, factory)(ctx))


def warm_up() -> None:
    """Import the heavy builders now, so that the first result is not delayed by imports (seconds)."""
    for name in (
        "scipy.signal",
        "scipy.ndimage",
        "ecgcad.integration.readers",
        "ecgcad.integration.gate",
        "ecgcad.model.preprocess",
        "highdicom",
        "ecgcad.integration.sr",
        "ecgcad.integration.oru",
        "ecgcad.integration.pdf",
        "ecgcad.integration.senders",
        "pynetdicom",
        "matplotlib.pyplot",
    ):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - warm-up is best effort
            logger.debug("warm-up import of %s failed", name, exc_info=True)


def preload_model(ctx: Any) -> threading.Thread:
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
