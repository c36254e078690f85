"""The application context: settings plus the shared resources built from them once per process."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ecgcad.config import DestinationSettings, Settings
from ecgcad.db.objects import ObjectStore
from ecgcad.db.session import Database
from ecgcad.jobs.queue import BackoffPolicy, JobQueue, SqlJobQueue

if TYPE_CHECKING:
    from ecgcad.integration.transport.senders import Sender
    from ecgcad.model.predictor import Predictor
    from ecgcad.pipeline.delivery import SenderPool
    from ecgcad.pipeline.ingest import Ingestor

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AppContext:
    """Everything a component needs: settings, database, object store, queue, ingestor, predictor.

    Build it with :meth:`from_settings`. ``predictor`` is loaded lazily (``get_predictor``) so that
    listener-only processes never import torch.
    """

    settings: Settings
    db: Database
    store: ObjectStore
    queue: JobQueue
    ingestor: Ingestor
    #: The started components by name (``dicom``, ``hl7``, ``worker``, ``scheduler``, ``api``…), for readiness.
    components: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Callables that wake idle in-process workers (:meth:`wake`).
    wakers: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    #: The last model failure (load or predict) until a prediction succeeds again; shown by readiness.
    model_error: str | None = None
    #: Outbound senders kept between deliveries (made on first use by ``pipeline.delivery.sender_pool``).
    sender_pool: SenderPool | None = None
    #: Makes the sender of a destination for every attempt instead of the pool (tests, integrators' fakes).
    sender_factory: Callable[[DestinationSettings], Sender] | None = None
    _predictor: Predictor | None = None
    #: The shadow model; ``False`` once it failed to load (never retried).
    _shadow: Predictor | Literal[False] | None = None
    _predictor_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings, *, queue: JobQueue | None = None) -> AppContext:
        """Create the database engine, object store, queue and ingestor from ``settings``."""
        from ecgcad.pipeline.ingest import Ingestor

        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: it holds PHI
        db = Database.from_settings(settings)
        store = ObjectStore(
            settings.data_dir / "objects", min_free_bytes=settings.queue.min_free_disk_mb * 1024 * 1024
        )
        q = queue or make_queue(settings, db)
        ingestor = Ingestor(db, store, q, max_depth=settings.queue.max_depth)
        return cls(settings=settings, db=db, store=store, queue=q, ingestor=ingestor)

    def wake(self) -> None:
        """Tell idle in-process workers that new work was committed."""
        for wake in list(self.wakers):
            try:
                wake()
            except Exception:  # noqa: BLE001 - waking is best effort
                logger.debug("wake failed", exc_info=True)

    def get_predictor(self) -> Predictor:
        """The scoring model (loaded once, kept resident)."""
        with self._predictor_lock:
            if self._predictor is None:
                from ecgcad.model import default_predictor
                from ecgcad.pipeline.lifecycle import resolve_active_checkpoint

                settings = self.settings
                promoted = resolve_active_checkpoint(self.db)  # `ecgcad model promote` wins over [model]
                if promoted is not None:
                    model = settings.model.model_copy(update={"checkpoint": promoted})
                    settings = settings.model_copy(update={"model": model})
                self._predictor = default_predictor(settings)
            return self._predictor

    @property
    def shadow_predictor(self) -> Predictor | None:
        """The ``[model] shadow_checkpoint`` model (loaded once), or ``None``.

        Its results are stored and never sent (``pipeline.scoring``). A shadow checkpoint that cannot be
        loaded, or that is the active model itself, is logged and left out: it never affects live scoring.
        """
        path = self.settings.model.shadow_checkpoint
        if not path:
            return None
        with self._predictor_lock:
            if self._shadow is None:
                try:
                    from ecgcad.model.checkpoint import load_checkpoint
                    from ecgcad.model.predictor import TorchPredictor
                    from ecgcad.model.risk import RiskThresholds

                    self._shadow = TorchPredictor(
                        load_checkpoint(path),
                        thresholds=RiskThresholds.from_settings(self.settings.thresholds),
                        device=self.settings.model.device,
                        max_batch=self.settings.model.max_batch,
                    )
                except Exception:  # noqa: BLE001 - a broken shadow model must not stop the service
                    logger.exception("shadow model %s could not be loaded; running without it", path)
                    self._shadow = False
        active = self._predictor
        if self._shadow is False or (
            active is not None and self._shadow.checkpoint_sha256 == active.checkpoint_sha256
        ):
            return None
        return self._shadow

    def set_predictor(self, predictor: Predictor) -> None:
        """Use ``predictor`` instead of loading one (tests, shadow models)."""
        with self._predictor_lock:
            self._predictor = predictor

    @property
    def predictor_loaded(self) -> bool:
        """True once a predictor is resident."""
        return self._predictor is not None

    def close(self) -> None:
        """Stop queue heartbeats, close the destinations' kept-open connections, release pooled ones."""
        close = getattr(self.queue, "close", None)
        if callable(close):
            close()
        if self.sender_pool is not None:
            self.sender_pool.close()
        self.db.dispose()


def make_queue(settings: Settings, db: Database) -> JobQueue:
    """The queue engine for ``settings`` (the SQL engine; procrastinate on PostgreSQL when configured)."""
    q = settings.queue
    backoff = BackoffPolicy(base_s=q.backoff_base_s, maximum_s=q.backoff_max_s)
    use_procrastinate = q.engine == "procrastinate" or (q.engine == "auto" and db.dialect == "postgresql")
    if use_procrastinate:
        from ecgcad.jobs.procrastinate_queue import ProcrastinateJobQueue

        return ProcrastinateJobQueue(
            db,
            lease_s=q.lease_s,
            max_attempts=q.max_attempts,
            backoff=backoff,
        )
    return SqlJobQueue(
        db,
        lease_s=q.lease_s,
        max_attempts=q.max_attempts,
        backoff=backoff,
    )
