"""The HL7 v2 MLLP server: persistent connections, acknowledging only what is durably stored.

An asyncio server runs in its own thread. Each connection is read through our
:class:`~ecgcad.integration.transport.mllp.MllpDecoder`; every complete message gets a fast header check
(:func:`~ecgcad.integration.transport.hl7_ack.parse_header`) and is handed to
:meth:`~ecgcad.pipeline.ingest.Ingestor.ingest_hl7_many` in a worker thread, which commits the raw message
with its ``hl7`` job in one transaction (frames that arrived together share it); while only one connection
is open, the loop's thread does that itself. Only after that returns is the ACK sent. Messages on one
connection are answered in order; the full parse and waveform decoding happen later in the worker.

Answers (original mode / enhanced mode, see :mod:`ecgcad.integration.transport.hl7_ack`):

=============================================================  ==========  ==================================
message                                                        MSA-1       then
=============================================================  ==========  ==================================
stored, or a retransmission of a stored message                AA / CA
storage failure, back-pressure, unexpected error               AE / CE     the sender retries
not HL7 / no MSH / MSH-9 or MSH-10 empty / control characters  AR / CR
as MSH-1 or MSH-2 / MLLP block characters in MSH
message type we do not use (unless ``accept_other_types``)     AR / CR
frame cut short by a start block (its end block missing)       AR / CR     the next frame is read on its own
frame over ``max_message_bytes``                               AR / CR     the connection is closed
the ``max_consecutive_rejections``-th AR in a row              AR / CR     the connection is closed
=============================================================  ==========  ==================================

A connection is closed when no message was *accepted* (stored) for ``idle_timeout_s``: rejected messages and
keep-alive frames do not keep it open, so a peer cannot hold a slot with answers it provokes. At most
``max_connections`` connections are open, ``max_connections_per_address`` of them from one address.

Log lines carry the peer address, hashes (MSH-10) and structure (sizes, counts, well-formed message types);
never a field as the sender wrote it (:func:`~ecgcad.integration.transport.hl7_ack.loggable_message_type`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ecgcad.db import audit
from ecgcad.errors import BackPressureError, StorageError
from ecgcad.integration.transport import hl7_ack
from ecgcad.integration.transport.hl7_ack import Hl7HeaderError, MessageHeader
from ecgcad.integration.transport.mllp import MllpDecoder, MllpFrameTooLarge, UnterminatedFrame, frame
from ecgcad.listeners.allowlist import AddressAllowList
from ecgcad.listeners.tls import server_ssl_context
from ecgcad.logsetup import uid_hash
from ecgcad.pipeline.ingest import Hl7Message, IngestResult

if TYPE_CHECKING:
    from ecgcad.context import AppContext

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Message types stored for the worker (MSH-9.1, or MSH-9.1^MSH-9.2).
SUPPORTED_TYPES: frozenset[str] = frozenset({"ORU^R01", "ORM^O01", "OMG^O19", "ADT"})

READ_CHUNK = 64 * 1024


def is_supported(header: MessageHeader) -> bool:
    """True for ORU^R01, ORM^O01, OMG^O19 and every ADT event."""
    return header.type_code in SUPPORTED_TYPES or header.message_code in SUPPORTED_TYPES


class Hl7Server:
    """The MLLP server of one :class:`~ecgcad.context.AppContext`.

    Parameters
    ----------
    ctx:
        Settings (``ctx.settings.hl7``), database (audit) and the ingestor.
    ingest_threads:
        Threads that run :meth:`Ingestor.ingest_hl7` (connections beyond this wait their turn).
    """

    def __init__(self, ctx: AppContext, *, ingest_threads: int = 8) -> None:
        self.ctx = ctx
        self.settings = ctx.settings.hl7
        self.address_allow_list = AddressAllowList(self.settings.allowed_addresses)
        self._ingest_threads = ingest_threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._address: tuple[str, int] | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        #: Open connections per peer address (only the loop's thread touches it).
        self._per_address: dict[str, int] = {}
        self._stopping = False
        self.acknowledged = 0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve in a background thread; returns once listening (port 0 picks a free port).

        Raises
        ------
        ConfigurationError
            TLS files or allow-list entries are invalid.
        OSError
            The address cannot be bound.
        """
        if self._thread is not None:
            return
        ssl_context = server_ssl_context(self.settings.tls)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self._ingest_threads, thread_name_prefix="hl7-ingest"
        )
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._on_connection,
                        self.settings.host,
                        self.settings.port,
                        ssl=ssl_context,
                        limit=READ_CHUNK,
                        reuse_address=True,
                    )
                )
                sock = self._server.sockets[0].getsockname()
                self._address = (str(sock[0]), int(sock[1]))
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._stopping = False
        self._thread = threading.Thread(target=run, name="hl7-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError("HL7 server did not start")
        if failure:
            self._thread.join(timeout_s)
            self._thread = None
            self._executor.shutdown(wait=False)
            raise failure[0]
        logger.info("HL7 MLLP server listening on %s:%s%s", *self.address, " (TLS)" if ssl_context else "")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close open connections and wait for the server thread (bounded)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=timeout_s)
            loop.stop()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout_s)
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._thread = None
        self._loop = None
        logger.info("HL7 MLLP server stopped")

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        if self._address is None:
            raise RuntimeError("HL7 server is not running")
        return self._address

    @property
    def alive(self) -> bool:
        """True while the server thread runs its event loop."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def connection_count(self) -> int:
        """Open connections."""
        return len(self._connections)

    # -- audit -------------------------------------------------------------------------------------------
    def _audit(
        self,
        event_type: str,
        *,
        outcome: int = 0,
        address: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        try:
            with self.ctx.db.session() as session:
                audit.record(session, event_type, outcome=outcome, address=address, detail=detail)
        except Exception:  # noqa: BLE001 - an audit failure must not break the connection
            logger.exception("could not audit %s", event_type)

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # -- connections -------------------------------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) else str(peername)
        counted = False
        try:
            if not self.address_allow_list.allows(peer):
                logger.warning("refused MLLP connection from %s: address not allowed", peer)
                await self._run(
                    self._audit,
                    "hl7.rejected",
                    outcome=4,
                    address=peer,
                    detail={"reason": "address not allowed"},
                )
                return
            if len(self._connections) >= self.settings.max_connections:
                logger.warning(
                    "refused MLLP connection from %s: %d connections open", peer, len(self._connections)
                )
                await self._run(
                    self._audit,
                    "hl7.rejected",
                    outcome=4,
                    address=peer,
                    detail={"reason": "connection limit reached"},
                )
                return
            open_here = self._per_address.get(peer, 0)
            if open_here >= self.settings.max_connections_per_address:
                logger.warning(
                    "refused MLLP connection from %s: %d connections from this address open", peer, open_here
                )
                await self._run(
                    self._audit,
                    "hl7.rejected",
                    outcome=4,
                    address=peer,
                    detail={"reason": "connection limit per address reached"},
                )
                return
            # No await between the checks and here: the counts cannot change in between.
            self._connections.add(task)
            self._per_address[peer] = open_here + 1
            counted = True
            await self._run(self._audit, "hl7.connection", address=peer, detail={"event": "opened"})
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            logger.info("MLLP connection from %s ended: %s", peer, type(exc).__name__)
        except Exception:  # noqa: BLE001 - never let a connection take the server down
            logger.exception("unexpected error on MLLP connection from %s", peer)
        finally:
            self._connections.discard(task)
            if counted:
                left = self._per_address[peer] - 1
                if left:
                    self._per_address[peer] = left
                else:
                    del self._per_address[peer]
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        s = self.settings
        decoder = MllpDecoder(s.max_message_bytes)
        loop = asyncio.get_running_loop()
        # The deadline moves only when a message is accepted (stored): a peer dripping bytes (slowloris) or
        # sending frames we reject (keep-alives answered AR) is as idle as a silent one and cannot hold a
        # connection slot for ever.
        deadline = loop.time() + s.idle_timeout_s
        rejections = 0  # messages rejected (AR) in a row
        while True:
            try:
                # ``asyncio.timeout`` rather than ``wait_for``, which wraps each read in a task (~20 µs).
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                logger.info(
                    "closing MLLP connection from %s: no accepted message for %.0f s", peer, s.idle_timeout_s
                )
                return
            if not data:
                if decoder.in_frame:
                    logger.info(
                        "MLLP peer %s closed inside a frame (%d bytes dropped)", peer, decoder.pending_bytes
                    )
                return
            try:
                messages = decoder.feed(data)
                oversize: MllpFrameTooLarge | None = None
            except MllpFrameTooLarge as exc:
                messages, oversize = exc.frames, exc
            # Frames that arrived together are stored together (one group commit, shared with concurrent
            # connections); their ACKs go out in order, after the commit.
            acks: list[bytes | None] = []
            if messages:
                acks, accepted, rejections = await self._handle_messages(messages, peer, rejections)
                if accepted:
                    deadline = loop.time() + s.idle_timeout_s
            for ack in acks:
                if ack is not None:
                    writer.write(frame(ack))
            if acks:
                await writer.drain()
            if rejections >= s.max_consecutive_rejections:
                logger.warning(
                    "closing MLLP connection from %s: %d messages in a row rejected", peer, rejections
                )
                await self._run(
                    self._audit,
                    "hl7.rejected",
                    outcome=4,
                    address=peer,
                    detail={"reason": "too many rejected messages in a row", "limit": rejections},
                )
                return
            if oversize is not None:
                logger.warning("MLLP frame from %s over %d bytes: AR and close", peer, oversize.limit)
                await self._run(
                    self._audit,
                    "hl7.rejected",
                    outcome=4,
                    address=peer,
                    detail={"reason": "message too large", "limit": oversize.limit},
                )
                ack = hl7_ack.build_ack(
                    None,
                    "AR",
                    text=f"message exceeds {oversize.limit} bytes",
                    error_code=hl7_ack.ERR_APPLICATION_INTERNAL_ERROR,
                    application=s.application,
                    facility=s.facility,
                )
                writer.write(frame(ack))
                with contextlib.suppress(ConnectionError, OSError):
                    await asyncio.wait_for(writer.drain(), 5.0)
                return

    # -- messages ------------------------------------------------------------------------------------------
    async def _handle_messages(
        self, messages: list[bytes], peer: str, rejections: int
    ) -> tuple[list[bytes | None], int, int]:
        """Answer ``messages`` (in order), storing the acceptable ones in one group commit.

        ``rejections`` is the count of messages rejected in a row before these. Returns the answers, how many
        messages were accepted (stored, or retransmissions of stored ones) and the new count of rejections in
        a row. Once that count reaches ``max_consecutive_rejections`` the messages after it are neither
        stored nor answered: the connection is about to be closed.
        """
        limit = self.settings.max_consecutive_rejections
        answers: list[bytes | None] = []
        to_store: list[tuple[int, MessageHeader, bytes]] = []
        for message in messages:
            header, answer, reason = self._check(message, peer)
            if header is None:
                answers.append(answer)
                await self._run(self._audit, "hl7.rejected", outcome=4, address=peer, detail=reason)
                rejections += 1
                if rejections >= limit:
                    break
            else:
                rejections = 0
                to_store.append((len(answers), header, message))
                answers.append(None)
        if not to_store:
            return answers, 0, rejections
        batch = [
            Hl7Message(message, header.message_control_id, header.type_code)
            for _, header, message in to_store
        ]
        try:
            if len(self._connections) <= 1:
                # The only connection: nothing else for this loop to do while the message is committed, so
                # it is stored on the loop's own thread (a hand-off to the ingest threads and back cost
                # ~0.1 ms per message, a fifth of the stop-and-wait round trip). With several connections
                # the ingest threads store them, so that concurrent senders share group commits.
                outcomes: list[Any] = self.ctx.ingestor.ingest_hl7_many(batch, peer_address=peer)
            else:
                outcomes = await self._run(self.ctx.ingestor.ingest_hl7_many, batch, peer_address=peer)
        except Exception as exc:  # noqa: BLE001 - the boundary: every exception becomes an ACK
            logger.exception("unexpected error storing %d messages from %s", len(batch), peer)
            outcomes = [exc] * len(batch)
        accepted = 0
        for (n, header, _), outcome in zip(to_store, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                accepted += 1
            answers[n] = self._answer(header, outcome)
        return answers, accepted, rejections

    def _check(
        self, message: bytes, peer: str
    ) -> tuple[MessageHeader | None, bytes | None, dict[str, Any] | None]:
        """``(header, None, None)`` for a message to store, or ``(None, the AR answer, the audited reason)``
        for one to reject."""
        s = self.settings
        if type(message) is UnterminatedFrame:
            return self._check_unterminated(message, peer)
        try:
            header = hl7_ack.parse_header(message)
        except Hl7HeaderError as exc:
            # the messages of Hl7HeaderError are fixed texts, never a field of the message
            logger.warning("rejected message from %s: %s (%d bytes)", peer, exc, len(message))
            return None, self._ack(None, "reject", str(exc), exc.code, exc.location), {"reason": str(exc)}
        if not is_supported(header) and not s.accept_other_types:
            reason = f"message type {header.type_code} is not accepted"
            control = uid_hash(header.message_control_id)
            # MSH-9 is the sender's text (a misaligned message can carry a name there): logged only when it
            # is a well-formed message type, else hashed.
            logged_type = hl7_ack.loggable_message_type(header.type_code)
            logger.info("rejected %s msh10#%s from %s", logged_type, control, peer)
            return (
                None,
                self._ack(header, "reject", reason, hl7_ack.ERR_UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9"),
                {"reason": reason, "control_id_hash": control},
            )
        return header, None, None

    def _check_unterminated(self, message: bytes, peer: str) -> tuple[None, bytes | None, dict[str, Any]]:
        """The AR for a frame that a start block cut short: it is never stored (what followed its start
        block may belong to another message, another patient). Its MSH-10 is echoed when it has a header."""
        try:
            header: MessageHeader | None = hl7_ack.parse_header(message)
        except Hl7HeaderError:
            header = None
        control = uid_hash(header.message_control_id) if header is not None else "-"
        reason = "MLLP frame without its end block (a start block followed)"
        logger.warning(
            "rejected MLLP frame from %s cut short by a start block (%d bytes, msh10#%s)",
            peer,
            len(message),
            control,
        )
        answer = self._ack(header, "reject", reason, hl7_ack.ERR_SEGMENT_SEQUENCE, "MSH")
        return None, answer, {"reason": reason, "control_id_hash": control, "bytes": len(message)}

    def _answer(self, header: MessageHeader, outcome: IngestResult | BaseException) -> bytes | None:
        """The ACK for a message the ingestor stored (an :class:`IngestResult`) or refused (an exception)."""
        if not isinstance(outcome, BaseException):
            self.acknowledged += 1
            return self._ack(header, "accept")
        control = uid_hash(header.message_control_id)
        if isinstance(outcome, BackPressureError):
            logger.warning("back-pressure, AE for msh10#%s: %s", control, outcome)
            return self._ack(header, "error", "busy, retry later", hl7_ack.ERR_APPLICATION_RECORD_LOCKED)
        if isinstance(outcome, StorageError):
            logger.error("storage failed for msh10#%s: %s", control, outcome)
            return self._ack(
                header, "error", "storage unavailable, retry later", hl7_ack.ERR_APPLICATION_INTERNAL_ERROR
            )
        logger.error("unexpected error storing msh10#%s: %s", control, type(outcome).__name__)
        return self._ack(header, "error", "internal error", hl7_ack.ERR_APPLICATION_INTERNAL_ERROR)

    def _ack(
        self,
        header: MessageHeader | None,
        outcome: hl7_ack.Outcome,
        text: str | None = None,
        error_code: str | None = None,
        location: str | None = None,
    ) -> bytes | None:
        code = hl7_ack.ack_code(header, outcome)
        if code is None:
            return None
        return hl7_ack.build_ack(
            header,
            code,
            text=text,
            error_code=error_code,
            error_location=location,
            application=self.settings.application,
            facility=self.settings.facility,
        )


__all__ = ["SUPPORTED_TYPES", "Hl7Server", "is_supported"]
