"""Delivery workers in their own processes, so that building and sending results (highdicom SR, hl7apy
ORU, PDF rendering: CPU-bound Python) runs on another core than the listeners and scoring.

The parent wakes them through a shared event when it commits new deliveries. A child exits when its parent
dies (``PR_SET_PDEATHSIG`` on Linux, and a parent-pid check), so a killed service never leaves senders
behind; its unfinished jobs are claimed again after their lease, like a thread's.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from ecgcad.context import AppContext

logger = logging.getLogger(__name__)


def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _child_main(
    settings_data: dict[str, Any], index: int, parent_pid: int, wake: MpEvent, stop: MpEvent
) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    from ecgcad.config import load_settings
    from ecgcad.jobs.worker import Worker
    from ecgcad.logsetup import configure_logging
    from ecgcad.pipeline.handlers import register_handlers, warm_up

    settings = load_settings(None, **settings_data)
    configure_logging(settings.log_level)
    ctx = AppContext.from_settings(settings)
    warm_up()
    worker = Worker(
        ctx.queue, worker_id=f"{os.uname().nodename}:{os.getpid()}:deliver-p{index}", idle_sleep_s=0.5
    )
    register_handlers(ctx, worker, only={"deliver"})

    def relay() -> None:
        while not stop.is_set():
            if wake.wait(0.5):
                wake.clear()
                worker.wake()
            if os.getppid() != parent_pid:
                stop.set()
        worker.stop(30)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=relay, name="ecgcad-wake-relay", daemon=True).start()
    worker.start()
    while not stop.is_set():
        time.sleep(0.2)
    worker.stop(30)
    ctx.close()


class DeliveryProcess:
    """One spawned delivery worker process (a start/stop component of ``ecgcad serve``)."""

    def __init__(self, ctx: AppContext, index: int) -> None:
        self.ctx = ctx
        self.index = index
        self._mp = mp.get_context("spawn")
        self.wake_event = self._mp.Event()
        self.stop_event = self._mp.Event()
        self.process: Any = None

    def start(self) -> None:
        """Spawn the process."""
        self.process = self._mp.Process(
            target=_child_main,
            args=(
                self.ctx.settings.transport_dict(),
                self.index,
                os.getpid(),
                self.wake_event,
                self.stop_event,
            ),
            name=f"ecgcad-deliver-{self.index}",
            daemon=True,
        )
        self.process.start()

    def wake(self) -> None:
        """New deliveries were committed."""
        self.wake_event.set()

    def stop(self) -> None:
        """Let the in-flight delivery finish, then stop (killed after 40 s)."""
        self.stop_event.set()
        if self.process is not None:
            self.process.join(40)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.is_alive()
