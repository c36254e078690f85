"""Runs the FastAPI app with uvicorn in a background thread (``ecgcad serve`` role ``api``)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)


class ApiServer:
    """The API as a start/stop component bound to ``[api] host``/``port`` (0 = ephemeral)."""

    def __init__(self, ctx: AppContext) -> None:
        from ecgcad.api.app import create_app

        self.ctx = ctx
        self.app = create_app(ctx)
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Bound (host, port)."""
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve in a thread; returns once the server accepts."""
        api = self.ctx.settings.api
        self._sock = socket.create_server((api.host, api.port), reuse_port=False)
        # proxy_headers off: uvicorn would believe X-Forwarded-For from any local peer. The app trusts only
        # [api] trusted_proxies (ecgcad.api.app).
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="ecgcad-api", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()

    @property
    def alive(self) -> bool:
        """True while serving."""
        return self._thread is not None and self._thread.is_alive()
