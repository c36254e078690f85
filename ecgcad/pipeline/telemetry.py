"""In-process counters and histograms for ``/metrics`` (inference latency, batch size, results, ACK latency)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecgcad.db.models import Result

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Histogram:
    def __init__(self, name: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def render(self, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f"# TYPE {self.name} histogram"]
        for b, n in zip(self.buckets, self.counts, strict=True):
            out.append(f'{self.name}_bucket{{{labels}{sep}le="{b}"}} {n}')
        out.append(f'{self.name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        out.append(f"{self.name}_sum{{{labels}}} {self.sum}" if labels else f"{self.name}_sum {self.sum}")
        out.append(
            f"{self.name}_count{{{labels}}} {self.total}" if labels else f"{self.name}_count {self.total}"
        )
        return out


class Telemetry:
    """Process-wide counters (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.inference_latency = _Histogram("ecgcad_inference_seconds", _LATENCY_BUCKETS)
        self.batch_size = _Histogram("ecgcad_inference_batch_size", _BATCH_BUCKETS)
        self.ack_latency: dict[str, _Histogram] = {}
        self.delivery_outcomes: dict[tuple[str, str], int] = {}

    def observe_inference(self, seconds: float, batch: int) -> None:
        """One forward pass of ``batch`` ECGs took ``seconds``."""
        with self._lock:
            self.inference_latency.observe(seconds)
            self.batch_size.observe(batch)

    def observe_ack(self, listener: str, seconds: float) -> None:
        """A listener acknowledged after ``seconds`` (receive → commit → ACK)."""
        with self._lock:
            self.ack_latency.setdefault(listener, _Histogram("ecgcad_ack_seconds", _LATENCY_BUCKETS)).observe(
                seconds
            )

    def count_delivery(self, destination: str, outcome: str) -> None:
        """A delivery attempt ended with ``outcome`` (sent / retry / failed / content_error)."""
        with self._lock:
            key = (destination, outcome)
            self.delivery_outcomes[key] = self.delivery_outcomes.get(key, 0) + 1

    def count_result(self, result: Result | None) -> None:
        """Hook for per-result counters (results are counted from the database)."""

    def render(self) -> list[str]:
        """Prometheus lines."""
        with self._lock:
            out = self.inference_latency.render() + self.batch_size.render()
            for i, (name, hist) in enumerate(self.ack_latency.items()):
                lines = hist.render(f'listener="{name}"')
                out += lines if i == 0 else lines[1:]  # one TYPE line for all listeners
            out.append("# TYPE ecgcad_delivery_attempts_total counter")
            for (dest, outcome), n in sorted(self.delivery_outcomes.items()):
                out.append(f'ecgcad_delivery_attempts_total{{destination="{dest}",outcome="{outcome}"}} {n}')
            return out


TELEMETRY = Telemetry()
