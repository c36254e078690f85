"""Registers the pipeline's job handlers on a worker."""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger(__name__)


def register_handlers(ctx: Any, worker: Any) -> None:
    """Register ``score`` (micro-batched), ``decode``, ``hl7``, ``deliver`` and maintenance handlers."""
    from ecgcad.pipeline.scoring import make_decode_handler, make_score_handler

    model = ctx.settings.model
    worker.register(
        "score", make_score_handler(ctx), batch_size=model.max_batch, max_wait_ms=model.max_wait_ms
    )
    worker.register("decode", make_decode_handler(ctx))
    optional = (
        ("hl7", "ecgcad.pipeline.hl7_jobs", "make_hl7_handler"),
        ("deliver", "ecgcad.pipeline.delivery", "make_deliver_handler"),
        ("rescore", "ecgcad.pipeline.delivery", "make_rescore_handler"),
        ("retention", "ecgcad.pipeline.maintenance", "make_retention_handler"),
        ("maintenance", "ecgcad.pipeline.maintenance", "make_maintenance_handler"),
        ("pacs_catch_up", "ecgcad.pipeline.backfill", "make_pacs_catch_up_handler"),
    )
    for kind, module_name, factory in optional:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                logger.debug("no handler module for %s yet", kind)
                continue
            raise
        if hasattr(module, factory):
            worker.register(kind, getattr(module, factory)(ctx))
