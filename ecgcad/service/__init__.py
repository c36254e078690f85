"""``ecgcad serve``: runs the components of one process and stops them cleanly.

Roles: ``listeners`` (DICOM SCP + HL7 MLLP server), ``api`` (FastAPI admin API, dashboard, health, metrics),
``worker`` (the in-process queue worker), ``scheduler`` (APScheduler: each scheduled job only enqueues).
``all`` (the embedded default) runs every role. On SIGTERM/SIGINT the listeners stop accepting first, then
the worker finishes its in-flight batch (unfinished claims stay claimable), then the rest stops.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Protocol

from ecgcad import __version__
from ecgcad.config import Settings
from ecgcad.context import AppContext
from ecgcad.db.migrate import ensure_schema
from ecgcad.errors import ConfigurationError

logger = logging.getLogger(__name__)

ALL_ROLES = ("listeners", "api", "worker", "scheduler")


class Component(Protocol):
    """A part of one ``ecgcad serve`` process that starts and stops: a listener, the worker, the scheduler,
    the API server, a delivery process, the audit checkpointer."""

    def start(self) -> object:
        """Start serving (returns once it runs)."""
        ...

    def stop(self) -> object:
        """Stop and release what it holds."""
        ...


class Service:
    """The components of one ``ecgcad serve`` process.

    Parameters
    ----------
    settings:
        Effective settings.
    roles:
        Subset of :data:`ALL_ROLES` (``{"all"}`` = every role).
    ctx:
        A prepared context (tests); built from ``settings`` when omitted.
    """

    def __init__(
        self, settings: Settings, roles: set[str] | None = None, ctx: AppContext | None = None
    ) -> None:
        roles = set(roles or {"all"})
        if "all" in roles:
            roles = set(ALL_ROLES)
        unknown = roles - set(ALL_ROLES)
        if unknown:
            raise ConfigurationError(f"unknown role(s): {', '.join(sorted(unknown))}")
        self.settings = settings
        self.roles = roles
        self.ctx = ctx
        self._started: list[tuple[str, Component]] = []
        self._stop_requested = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> AppContext:
        """Start every component of the configured roles; return the context."""
        ensure_schema(self.settings)
        if self.ctx is None:
            self.ctx = AppContext.from_settings(self.settings)
        ctx = self.ctx
        if not self.settings.dicom.allowed_calling_aets and "listeners" in self.roles:
            logger.warning("dicom.allowed_calling_aets is empty: any calling AE may store to this service")
        if "worker" in self.roles:
            from ecgcad.jobs.worker import Worker
            from ecgcad.pipeline.handlers import preload_model, register_handlers, warm_up

            warm_up()
            preload_model(ctx)
            worker = Worker(ctx.queue)
            register_handlers(ctx, worker, exclude={"deliver"})
            wakers = [worker.wake]
            self._start("worker", worker, f"kinds={','.join(worker.kinds)}")
            if self.settings.queue.delivery_processes > 0:
                from ecgcad.service.delivery_process import DeliveryProcess

                for i in range(self.settings.queue.delivery_processes):
                    proc = DeliveryProcess(ctx, i)
                    wakers.append(proc.wake)
                    self._start(f"delivery-process-{i}", proc, "kinds=deliver (own process)")
            for i in range(
                0 if self.settings.queue.delivery_processes > 0 else self.settings.queue.delivery_workers
            ):
                sender = Worker(ctx.queue, worker_id=f"{worker.worker_id}:deliver{i}", idle_sleep_s=0.25)
                register_handlers(ctx, sender, only={"deliver"})
                wakers.append(sender.wake)
                self._start(f"delivery-worker-{i}", sender, "kinds=deliver")
            ctx.wakers = wakers
            ctx.ingestor.on_enqueue = ctx.wake
        if "scheduler" in self.roles:
            from ecgcad.jobs.schedule import build_scheduler

            self._start("scheduler", build_scheduler(ctx), "APScheduler")
        if "scheduler" in self.roles and self.settings.audit_syslog.enabled:
            from ecgcad.db.audit_syslog import AuditSyslogForwarder

            self._start("audit-syslog", AuditSyslogForwarder(ctx))
        if "scheduler" in self.roles:
            from ecgcad.db.audit_checkpoint import AuditCheckpointer

            self._start("audit-checkpoint", AuditCheckpointer(ctx), str(self.settings.audit_checkpoint_file))
        if "listeners" in self.roles:
            from ecgcad.listeners.dicom_scp import DicomScp
            from ecgcad.listeners.hl7_server import Hl7Server

            self._start("dicom", DicomScp(ctx))
            self._start("hl7", Hl7Server(ctx))
        if "api" in self.roles and self.settings.api.enabled:
            from ecgcad.api.server import ApiServer

            self._start("api", ApiServer(ctx))
        from ecgcad.db import audit

        with ctx.db.session() as s:
            audit.record(s, "application.start", detail={"version": __version__, "roles": sorted(self.roles)})
        logger.info("ecgcad %s ready (roles: %s)", __version__, ",".join(sorted(self.roles)))
        return ctx

    def _start(self, name: str, component: Component, info: str | None = None) -> None:
        assert self.ctx is not None
        component.start()
        self.ctx.components[name] = component
        self._started.append((name, component))
        address = getattr(component, "address", None)
        where = f"{address[0]}:{address[1]}" if address else (info or "")
        logger.info("started %s %s", name, where)

    def stop(self) -> None:
        """Stop components: listeners first, then worker, scheduler and API."""
        order = {"dicom": 0, "hl7": 0, "worker": 1, "scheduler": 2, "api": 3}
        for name, component in sorted(self._started, key=lambda nc: order.get(nc[0].split("-")[0], 1)):
            try:
                component.stop()
                logger.info("stopped %s", name)
            except Exception:  # noqa: BLE001 - keep stopping the rest
                logger.exception("error stopping %s", name)
        checkpointer = None if self.ctx is None else self.ctx.components.get("audit-checkpoint")
        self._started.clear()
        if self.ctx is not None:
            try:
                from ecgcad.db import audit

                with self.ctx.db.session() as s:
                    audit.record(s, "application.stop", detail={"version": __version__})
            except Exception:  # noqa: BLE001
                logger.warning("could not audit application stop")
            if checkpointer is not None:
                # The last checkpoint covers the stop event itself (the forwarder has stopped: file only).
                try:
                    checkpointer.checkpoint_once()
                except Exception:  # noqa: BLE001 - keep stopping
                    logger.exception("could not write the final audit checkpoint")
            self.ctx.close()

    def request_stop(self, *_: object) -> None:
        """Signal handler: ask :meth:`run_forever` to stop."""
        self._stop_requested.set()

    def run_forever(self) -> None:
        """Start, wait for SIGTERM/SIGINT, stop."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.start()
        try:
            while not self._stop_requested.wait(1.0):
                pass
        finally:
            logger.info("stopping")
            self.stop()
