"""In-memory senders for tests and integrators: no network, scripted outcomes."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from pydicom.dataset import Dataset

from ecgcad.integration.transport.senders import SendOutcome


class FakeSender:
    """A :class:`~ecgcad.integration.transport.senders.Sender` that records payloads and replays scripted outcomes.

    Parameters
    ----------
    outcomes:
        Outcomes returned by successive :meth:`send` calls; once used up, ``default`` is returned.
    default:
        The outcome after the script (delivered by default).

    Attributes
    ----------
    sent:
        Every payload passed to :meth:`send`, in order (including failed attempts).
    delivered:
        The payloads whose attempt was reported delivered.
    """

    def __init__(self, outcomes: Iterable[SendOutcome] = (), default: SendOutcome | None = None) -> None:
        self._script = list(outcomes)
        self.default = default or SendOutcome.ok("fake: delivered", 0)
        self.sent: list[bytes | Dataset] = []
        self.delivered: list[bytes | Dataset] = []
        self._lock = threading.Lock()

    def send(self, payload: bytes | Dataset) -> SendOutcome:
        """Record ``payload`` and return the next scripted outcome."""
        with self._lock:
            outcome = self._script.pop(0) if self._script else self.default
            self.sent.append(payload)
            if outcome.delivered:
                self.delivered.append(payload)
            return outcome

    @property
    def attempts(self) -> int:
        """How many times :meth:`send` was called."""
        return len(self.sent)


class DeliveringSender(FakeSender):
    """Always delivers."""

    def __init__(self) -> None:
        super().__init__()


class RetryingSender(FakeSender):
    """Never delivers; every attempt is retryable (a destination that is down)."""

    def __init__(self, response: str = "fake: connection refused") -> None:
        super().__init__(default=SendOutcome.retry(response))


class RefusingSender(FakeSender):
    """Never delivers; every attempt is a permanent refusal (AR / C-STORE 0xC000)."""

    def __init__(self, response: str = "fake: refused") -> None:
        super().__init__(default=SendOutcome.permanent(response))
