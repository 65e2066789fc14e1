"""The batching exporter: bounded lock-free queues and one background thread.

:class:`BatchExporter` takes kept spans (and log records, the second signal)
from request threads without a lock and without I/O. Each queue is a plain
:class:`collections.deque` whose length is checked before appending: a full
queue drops and counts, it never blocks and never evicts. The check and the
append are two steps, so threads that pass the check together can overshoot
the bound by at most one segment (or log record) each; the overshoot is
bounded by the number of request threads, and in exchange every span is
accounted for exactly once: exported, failed (given up after retries) or
dropped.

A request thread may also hand over the building of a span
(:meth:`BatchExporter.export_later`: the root span of a request that ran
untraced and failed or was slow), so that its cost is paid on the export
thread, in a batch with the others, not in the middle of the service's work.

One daemon thread, woken by a :class:`threading.Event` when a batch is ready or
every ``max_delay_s``, builds what was handed over, encodes batches and hands
them to a transport, retrying with exponential back-off and jitter on
retryable errors (honouring ``Retry-After``) up to ``max_retries``, then
counting the batch as failed.
Nothing here raises into the service.

It is fork-safe (:func:`os.register_at_fork` gives the child an empty queue and
a fresh thread), flushes at interpreter exit within ``atexit_timeout_s``, and
offers :meth:`BatchExporter.force_flush` / :meth:`BatchExporter.shutdown` with
timeouts. Its self-metrics are readable with :meth:`BatchExporter.stats` (or
:func:`stats` for the configured exporter) and are logged every
``stats_interval_s`` when something was dropped or failed. The export thread
logs through the ``crosstrace.export`` logger; a handler that exports log
records must not export that logger's records.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crosstrace.export.transports import (
    SIGNAL_LOGS,
    SIGNAL_TRACES,
    RetryableExportError,
    Transport,
)
from crosstrace.tracing.model import LogData, SpanData

__all__ = ["BatchExporter", "active", "set_active", "stats"]

log = logging.getLogger("crosstrace.export")


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_exporters: weakref.WeakSet[BatchExporter] = weakref.WeakSet()
_active: BatchExporter | None = None
#: A thread's CPU clock, read from another thread (POSIX; absent elsewhere).
_thread_clock = getattr(time, "pthread_getcpuclockid", None)


class BatchExporter:
    """Bounded lock-free queues and one export thread; see the module docstring."""

    def __init__(
        self,
        transport: Transport,
        resource: Mapping[str, Any] | None = None,
        queue_size: int = 2048,
        batch_size: int = 512,
        max_delay_s: float = 1.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stats_interval_s: float = 60.0,
        atexit_timeout_s: float = 5.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_delay_s <= 0:
            raise ValueError("max_delay_s must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must not be negative")
        self.transport = transport
        self.resource: Mapping[str, Any] = resource if resource is not None else {}
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats_interval_s = stats_interval_s
        self.atexit_timeout_s = atexit_timeout_s
        # Counters: single-bytecode ``+=`` on ints, not interrupted under the GIL.
        self.spans_queued = 0
        self.spans_dropped = 0
        self.spans_exported = 0
        self.spans_failed = 0
        self.logs_queued = 0
        self.logs_dropped = 0
        self.logs_exported = 0
        self.logs_failed = 0
        self.batches_failed = 0
        self.retries = 0
        self._cpu_ns = 0
        self._logged: dict[str, int] = {}
        self._init_runtime()
        _exporters.add(self)
        atexit.register(_atexit_shutdown, weakref.ref(self))

    def _init_runtime(self) -> None:
        # No maxlen: a deque with one would evict the oldest entries uncounted
        # when racing appends overshoot the bound (see the module docstring).
        self._spans: collections.deque[SpanData] = collections.deque()
        self._logs: collections.deque[LogData] = collections.deque()
        self._later: collections.deque[Callable[[], None]] = collections.deque()
        # Whether the export thread is running what was handed over (its spans
        # are taken while it flushes at shutdown).
        self._building = False
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._flushes: collections.deque[_Flush] = collections.deque()
        self._stopping = False
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="crosstrace-export", daemon=True)
        self._thread.start()

    # -- request-thread side: no lock, no I/O -------------------------------------
    def export_spans(self, spans: Sequence[SpanData]) -> None:
        """Queue *spans*; when the queue cannot hold them all they are dropped (counted)."""
        q = self._spans
        n = len(spans)
        if (self._stopping and not self._building) or len(q) + n > self.queue_size:
            self.spans_dropped += n
            return
        q.extend(spans)
        self.spans_queued += n
        if len(q) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def export_later(self, build: Callable[[], None]) -> None:
        """Run *build* on the export thread before its next batch; it queues
        what it builds with :meth:`export_spans` and must not raise. When the
        queue cannot hold it, it is dropped and counted as one span dropped."""
        if self._stopping or len(self._spans) + len(self._later) >= self.queue_size:
            self.spans_dropped += 1
            return
        self._later.append(build)

    def export_log(self, record: LogData) -> None:
        """Queue one log record; dropped and counted when the queue is full."""
        q = self._logs
        if self._stopping or len(q) >= self.queue_size:
            self.logs_dropped += 1
            return
        q.append(record)
        self.logs_queued += 1
        if len(q) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def queue_length(self) -> int:
        """Spans waiting in the queue (those still to be built included)."""
        return len(self._spans) + len(self._later)

    def cpu_ns(self) -> int:
        """CPU time the export thread has used (nanoseconds): read from its
        CPU clock while it runs where the platform allows, else what it last
        read of its own ``time.thread_time``."""
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive() and _thread_clock is not None:
            try:
                return max(self._cpu_ns, time.clock_gettime_ns(_thread_clock(ident)))
            except OSError:  # the thread ended meanwhile
                pass
        return self._cpu_ns

    def stats(self) -> dict[str, int]:
        """The self-metrics, as a new dict."""
        return {
            "spans_queued": self.spans_queued,
            "spans_exported": self.spans_exported,
            "spans_dropped": self.spans_dropped,
            "spans_failed": self.spans_failed,
            "logs_queued": self.logs_queued,
            "logs_exported": self.logs_exported,
            "logs_dropped": self.logs_dropped,
            "logs_failed": self.logs_failed,
            "batches_failed": self.batches_failed,
            "retries": self.retries,
            "queue_length": self.queue_length(),
        }

    # -- control -----------------------------------------------------------------
    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export everything queued so far; ``True`` if done within *timeout_s*."""
        if not self._thread.is_alive():
            return not self._spans and not self._logs and not self._later
        req = _Flush()
        self._flushes.append(req)
        self._wake.set()
        return req.done.wait(timeout_s)

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Flush and stop the thread, returning within *timeout_s* in any case.

        Queued data that cannot be sent in time is counted as dropped. Returns
        ``True`` when the thread stopped in time.
        """
        if self._stopping:
            return not self._thread.is_alive()
        self._deadline = time.monotonic() + max(0.0, timeout_s)
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()
        self._thread.join(max(0.0, timeout_s - 0.05))
        if self._thread.is_alive():
            self.transport.abort()
            self._thread.join(0.05)
        stopped = not self._thread.is_alive()
        if not stopped:
            self._count_leftovers()
        try:
            if stopped:
                self.transport.close()
        except Exception:
            log.debug("closing the transport failed", exc_info=True)
        return stopped

    def _count_leftovers(self) -> None:
        n = len(self._spans) + len(self._later)
        self._spans.clear()
        self._later.clear()
        self.spans_dropped += n
        m = len(self._logs)
        self._logs.clear()
        self.logs_dropped += m

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here, and its queue belongs to it.
        if self._stopping:
            return
        self._init_runtime()

    # -- export thread -------------------------------------------------------------
    def _run(self) -> None:
        next_stats = time.monotonic() + self.stats_interval_s
        try:
            while True:
                self._wake.wait(self.max_delay_s)
                self._wake.clear()
                flushes = []
                while self._flushes:
                    flushes.append(self._flushes.popleft())
                self._drain()
                for req in flushes:
                    req.done.set()
                self._cpu_ns = time.thread_time_ns()
                if self._stopping:
                    if self._spans or self._logs or self._later:
                        self._count_leftovers()
                    break
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + self.stats_interval_s
                    self._log_stats()
        except Exception:  # the thread must not die silently with data queued
            log.exception("crosstrace export thread failed")
        finally:
            self._stopped.set()

    def _build(self) -> None:
        """Run what request threads handed over (see :meth:`export_later`)."""
        later = self._later
        self._building = True
        try:
            while later:
                try:
                    later.popleft()()
                except Exception:
                    log.debug("building a span on the export thread failed", exc_info=True)
        finally:
            self._building = False

    def _drain(self) -> None:
        if self._later:
            self._build()
        for signal, q in ((SIGNAL_TRACES, self._spans), (SIGNAL_LOGS, self._logs)):
            while q:
                if self._stopping and time.monotonic() >= self._deadline:
                    return
                batch: list[Any] = []
                popleft = q.popleft
                try:
                    while len(batch) < self.batch_size:
                        batch.append(popleft())
                except IndexError:
                    pass
                if batch:
                    self._send(signal, batch)

    def _send(self, signal: str, batch: list[Any]) -> None:
        n = len(batch)
        try:
            payload = self.transport.encode(signal, batch, self.resource)
        except Exception:
            log.warning("could not encode a batch of %d %s; dropped", n, signal, exc_info=True)
            self._failed(signal, n)
            return
        attempt = 0
        while True:
            try:
                self.transport.send(signal, payload)
            except RetryableExportError as exc:
                if attempt >= self.max_retries or not self._sleep(self._delay(attempt, exc)):
                    log.debug("giving up on a batch of %d %s: %s", n, signal, exc)
                    self._failed(signal, n)
                    return
                attempt += 1
                self.retries += 1
                continue
            except Exception as exc:
                log.debug("batch of %d %s refused: %s", n, signal, exc)
                self._failed(signal, n)
                return
            if signal == SIGNAL_TRACES:
                self.spans_exported += n
            else:
                self.logs_exported += n
            return

    def _delay(self, attempt: int, exc: RetryableExportError) -> float:
        if exc.retry_after is not None:
            return float(exc.retry_after)
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        jittered: float = base * random.uniform(0.5, 1.5)
        return jittered

    def _sleep(self, delay: float) -> bool:
        """Back off *delay* seconds; ``False`` (give up) when shutdown begins."""
        if self._stopping and self._deadline - time.monotonic() <= delay:
            return False
        return not self._stop_requested.wait(delay)

    def _failed(self, signal: str, n: int) -> None:
        self.batches_failed += 1
        if signal == SIGNAL_TRACES:
            self.spans_failed += n
        else:
            self.logs_failed += n

    def _log_stats(self) -> None:
        current = self.stats()
        bad = ("spans_dropped", "spans_failed", "logs_dropped", "logs_failed", "batches_failed")
        delta = {k: current[k] - self._logged.get(k, 0) for k in bad}
        self._logged = current
        if any(delta.values()):
            log.warning(
                "crosstrace export in the last %.0fs: %d spans dropped, %d spans failed, "
                "%d logs dropped, %d logs failed, %d batches failed (totals: %s)",
                self.stats_interval_s,
                delta["spans_dropped"],
                delta["spans_failed"],
                delta["logs_dropped"],
                delta["logs_failed"],
                delta["batches_failed"],
                current,
            )


def _atexit_shutdown(ref: weakref.ref[BatchExporter]) -> None:
    exporter = ref()
    if exporter is not None:
        exporter.shutdown(exporter.atexit_timeout_s)


def _after_fork_in_child() -> None:
    for exporter in list(_exporters):
        exporter._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def set_active(exporter: BatchExporter | None) -> None:
    """Make *exporter* the one :func:`stats` reports (done by ``configure``)."""
    global _active
    _active = exporter


def active() -> BatchExporter | None:
    """The configured exporter, or ``None``."""
    return _active


def stats() -> dict[str, int]:
    """Self-metrics of the configured exporter (all zero when there is none)."""
    exporter = _active
    if exporter is None:
        return dict.fromkeys(
            (
                "spans_queued",
                "spans_exported",
                "spans_dropped",
                "spans_failed",
                "logs_queued",
                "logs_exported",
                "logs_dropped",
                "logs_failed",
                "batches_failed",
                "retries",
                "queue_length",
            ),
            0,
        )
    return exporter.stats()
