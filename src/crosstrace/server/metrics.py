"""Server self-metrics, rendered in the Prometheus text exposition format.

A handful of counters, one gauge and one latency histogram do not justify a
client library; this module keeps them in plain ints under one lock (ingest and
the RabbitMQ consumer update them from different threads) and renders
``/metrics`` together with the store's own ``stats()``.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping

__all__ = ["LATENCY_BUCKETS", "Metrics"]

#: Upper bounds (seconds) of the store write latency histogram.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_PREFIX = "crosstrace_"


class Metrics:
    """Counters for one ``serve`` process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (signal, what) -> count; what in received / rejected / written
        self._records: dict[tuple[str, str], int] = {}
        # (transport, signal, status) -> count
        self._requests: dict[tuple[str, str, str], int] = {}
        self._in_flight = 0
        self._bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._retention_runs = 0
        self._retention_deleted = {"traces": 0, "logs": 0}

    def add_records(self, signal: str, what: str, n: int) -> None:
        """Count *n* spans or logs (*signal*) as received, rejected or written."""
        if n:
            with self._lock:
                key = (signal, what)
                self._records[key] = self._records.get(key, 0) + n

    def count_request(self, transport: str, signal: str, status: str) -> None:
        """Count one ingest request (HTTP status code, or an AMQP outcome)."""
        with self._lock:
            key = (transport, signal, status)
            self._requests[key] = self._requests.get(key, 0) + 1

    def write_started(self) -> None:
        """A batch was handed to the store and awaits its commit."""
        with self._lock:
            self._in_flight += 1

    def write_finished(self, seconds: float) -> None:
        """A batch handed to the store committed or failed after *seconds*."""
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self._in_flight -= 1
            self._bucket_counts[index] += 1
            self._latency_sum += seconds
            self._latency_count += 1

    def retention_pass(self, traces: int, logs: int) -> None:
        """One retention pass ran and deleted *traces* traces and *logs* log records."""
        with self._lock:
            self._retention_runs += 1
            self._retention_deleted["traces"] += traces
            self._retention_deleted["logs"] += logs

    def record_count(self, signal: str, what: str) -> int:
        """Current value of one record counter (for tests and logs)."""
        with self._lock:
            return self._records.get((signal, what), 0)

    def request_count(self, transport: str, signal: str, status: str) -> int:
        """Current value of one request counter."""
        with self._lock:
            return self._requests.get((transport, signal, status), 0)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def render(self, store_stats: Mapping[str, int] | None = None) -> str:
        """The Prometheus text format of every metric, plus *store_stats* as gauges."""
        with self._lock:
            records = dict(self._records)
            requests = dict(self._requests)
            in_flight = self._in_flight
            buckets = list(self._bucket_counts)
            lat_sum, lat_count = self._latency_sum, self._latency_count
            retention_runs = self._retention_runs
            deleted = dict(self._retention_deleted)
        lines: list[str] = []
        for what, help_text in (
            ("received", "Records received by ingest (before validation)."),
            ("rejected", "Records refused (invalid ids or values), reported as partial success."),
            ("written", "Records committed to the store."),
        ):
            name = f"{_PREFIX}records_{what}_total"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for signal in ("traces", "logs"):
                lines.append(f'{name}{{signal="{signal}"}} {records.get((signal, what), 0)}')
        name = f"{_PREFIX}ingest_requests_total"
        lines += [
            f"# HELP {name} Ingest requests by transport, signal and outcome.",
            f"# TYPE {name} counter",
        ]
        for (transport, signal, status), count in sorted(requests.items()):
            lines.append(
                f'{name}{{transport="{transport}",signal="{signal}",status="{status}"}} {count}'
            )
        name = f"{_PREFIX}write_queue_depth"
        lines += [
            f"# HELP {name} Batches handed to the store and not yet committed.",
            f"# TYPE {name} gauge",
            f"{name} {in_flight}",
        ]
        name = f"{_PREFIX}write_latency_seconds"
        lines += [
            f"# HELP {name} Time from handing a batch to the store until its commit.",
            f"# TYPE {name} histogram",
        ]
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, buckets, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        cumulative += buckets[-1]
        lines += [
            f'{name}_bucket{{le="+Inf"}} {cumulative}',
            f"{name}_sum {lat_sum:.6f}",
            f"{name}_count {lat_count}",
        ]
        name = f"{_PREFIX}retention_runs_total"
        lines += [
            f"# HELP {name} Retention passes run.",
            f"# TYPE {name} counter",
            f"{name} {retention_runs}",
        ]
        name = f"{_PREFIX}retention_deleted_total"
        lines += [
            f"# HELP {name} Records deleted by retention (traces, log records).",
            f"# TYPE {name} counter",
        ]
        for signal in ("traces", "logs"):
            lines.append(f'{name}{{signal="{signal}"}} {deleted[signal]}')
        for key, value in sorted((store_stats or {}).items()):
            safe = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
            name = f"{_PREFIX}store_{safe}"
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
