"""The batching exporter and its transports (OTLP/HTTP, RabbitMQ, JSON lines).

:class:`BatchExporter` takes kept spans (and log records, the second signal)
from request threads without a lock and without I/O: each goes into a bounded
:class:`collections.deque` whose length is checked before appending (a full
queue drops and counts; it never blocks). One daemon thread, woken by a
:class:`threading.Event` when a batch is ready or every ``max_delay_s``,
encodes batches and hands them to a transport, retrying with exponential
back-off and jitter on 429/502/503/504 and connection errors (honouring
``Retry-After``) up to ``max_retries``, then counting the batch as failed.
Nothing here raises into the service.

It is fork-safe (:func:`os.register_at_fork` gives the child an empty queue and
a fresh thread), flushes at interpreter exit within ``atexit_timeout_s``, and
offers :meth:`BatchExporter.force_flush` / :meth:`BatchExporter.shutdown` with
timeouts. Its self-metrics are readable with :meth:`BatchExporter.stats` (or
:func:`stats` for the configured exporter) and are logged every
``stats_interval_s`` when something was dropped or failed.

Transports
    * :class:`OtlpHttpTransport`: ``POST {endpoint}/v1/traces`` and
      ``/v1/logs``, ``Content-Type: application/x-protobuf``,
      ``Content-Encoding: gzip``, standard library ``http.client`` with
      separate connect and read timeouts.
    * :class:`AmqpTransport` (kombu, e.g. RabbitMQ): each batch is one
      persistent message to the durable direct exchange ``crosstrace`` with
      routing key ``otlp``, the durable queue ``crosstrace.otlp`` declared and
      bound; the body is the serialized ``ExportTraceServiceRequest`` (or
      ``ExportLogsServiceRequest``), ``content_type`` ``application/x-protobuf``,
      ``content_encoding`` ``binary`` and header ``otlp-signal``
      (``traces``/``logs``): what ``crosstrace serve --consume`` reads.
    * :class:`FileTransport`: one OTLP/JSON ``ExportTraceServiceRequest``
      (``{"resourceSpans": [...]}``) or ``ExportLogsServiceRequest``
      (``{"resourceLogs": [...]}``) object per line, one line per batch.

The export thread logs through the ``crosstrace.export`` logger; a handler
that exports log records must not export that logger's records.
"""

from __future__ import annotations

import atexit
import collections
import gzip
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from crosstrace.tracer import Span

__all__ = [
    "AMQP_CONTENT_ENCODING",
    "AMQP_SIGNAL_HEADER",
    "CONTENT_TYPE_PROTOBUF",
    "AmqpTransport",
    "BatchExporter",
    "ExportError",
    "FileTransport",
    "LogData",
    "OtlpHttpTransport",
    "RetryableExportError",
    "Transport",
    "stats",
]

log = logging.getLogger(__name__)

SIGNAL_TRACES = "traces"
SIGNAL_LOGS = "logs"
CONTENT_TYPE_PROTOBUF = "application/x-protobuf"
AMQP_CONTENT_ENCODING = "binary"
#: Message header telling the consumer which OTLP request the body holds.
AMQP_SIGNAL_HEADER = "otlp-signal"
DEFAULT_AMQP_EXCHANGE = "crosstrace"
DEFAULT_AMQP_ROUTING_KEY = "otlp"
DEFAULT_AMQP_QUEUE = "crosstrace.otlp"
#: HTTP statuses worth retrying (OTLP/HTTP specification).
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
#: Longest ``Retry-After`` honoured, seconds.
MAX_RETRY_AFTER_S = 60.0


class ExportError(Exception):
    """A batch could not be sent and retrying will not help."""


class RetryableExportError(ExportError):
    """A batch could not be sent now; retry later (after ``retry_after`` if set)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LogData:
    """A log record to export (:class:`crosstrace.logging.ExportHandler` fills it)."""

    __slots__ = (
        "attributes",
        "body",
        "observed_ns",
        "resource",
        "scope",
        "severity_number",
        "severity_text",
        "span_id",
        "time_ns",
        "trace_flags",
        "trace_id",
    )

    def __init__(
        self,
        body: Any,
        severity_number: int = 9,
        severity_text: str = "INFO",
        attributes: Mapping[str, Any] | None = None,
        time_ns: int = 0,
        trace_id: int = 0,
        span_id: int = 0,
        trace_flags: int = 0,
        observed_ns: int = 0,
        resource: Mapping[str, Any] | None = None,
        scope: str | None = None,
    ) -> None:
        self.body = body
        #: The service's resource (``None``: the exporter's).
        self.resource = resource
        #: The instrumentation scope (the logger name; ``None``: ``crosstrace``).
        self.scope = scope
        self.severity_number = severity_number
        self.severity_text = severity_text
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.time_ns = time_ns or time.time_ns()
        self.observed_ns = observed_ns
        self.trace_id = trace_id
        self.span_id = span_id
        self.trace_flags = trace_flags


class Transport:
    """Sends encoded batches. :meth:`encode` once, :meth:`send` per attempt."""

    def encode(self, signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
        """Serialize a batch of spans or log records."""
        raise NotImplementedError

    def send(self, signal: str, payload: bytes) -> None:
        """Send one batch; raise :class:`RetryableExportError` or :class:`ExportError`."""
        raise NotImplementedError

    def abort(self) -> None:
        """Interrupt a blocked :meth:`send` (called from another thread on shutdown)."""

    def close(self) -> None:
        """Release connections and files."""


def _protobuf(signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
    from crosstrace import otlp

    if signal == SIGNAL_TRACES:
        body: bytes = otlp.spans_to_request(items).SerializeToString()
    else:
        body = otlp.logs_to_request(items, resource).SerializeToString()
    return body


class _HTTPConnection(http.client.HTTPConnection):
    """``HTTPConnection`` with a connect timeout separate from the read timeout."""

    def __init__(self, host: str, port: int | None, connect_timeout: float, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), self.connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(self.timeout)


class OtlpHttpTransport(Transport):
    """OTLP/HTTP with protobuf bodies and gzip, over ``http.client``."""

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:4318",
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 3.0,
        timeout_s: float = 10.0,
        compress: bool = True,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OTLP endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = endpoint
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._headers = dict(headers or {})
        self._connect_timeout = connect_timeout_s
        self._timeout = timeout_s
        self._compress = compress
        self._conn: http.client.HTTPConnection | None = None

    def encode(self, signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
        body = _protobuf(signal, items, resource)
        return gzip.compress(body, compresslevel=1) if self._compress else body

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
            else:
                conn = _HTTPConnection(self._host, self._port, self._connect_timeout, self._timeout)
            self._conn = conn
        return conn

    def send(self, signal: str, payload: bytes) -> None:
        headers = {"Content-Type": CONTENT_TYPE_PROTOBUF, **self._headers}
        if self._compress:
            headers["Content-Encoding"] = "gzip"
        conn = self._connection()
        try:
            conn.request("POST", f"{self._base}/v1/{signal}", body=payload, headers=headers)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise RetryableExportError(f"{type(exc).__name__}: {exc}") from None
        status = resp.status
        if 200 <= status < 300:
            return
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        if status in RETRYABLE_STATUSES:
            retry_after = _retry_after(resp.getheader("Retry-After"))
            raise RetryableExportError(f"HTTP {status}", retry_after)
        raise ExportError(f"HTTP {status}")

    def abort(self) -> None:
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        from email.utils import parsedate_to_datetime

        delay = parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


def _kombu() -> Any:
    """kombu, imported only when the AMQP transport is used (untyped: ``Any``)."""
    import importlib

    return importlib.import_module("kombu")


class AmqpTransport(Transport):
    """Publishes each batch as one persistent message through kombu."""

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672//",
        exchange: str = DEFAULT_AMQP_EXCHANGE,
        routing_key: str = DEFAULT_AMQP_ROUTING_KEY,
        queue: str = DEFAULT_AMQP_QUEUE,
        timeout_s: float = 5.0,
    ) -> None:
        kombu = _kombu()
        self.url = url
        self._timeout = timeout_s
        self._exchange = kombu.Exchange(exchange, type="direct", durable=True)
        self._queue = kombu.Queue(queue, self._exchange, routing_key=routing_key, durable=True)
        self._routing_key = routing_key
        self._conn: Any = None
        self._producer: Any = None
        self._declared = False

    def encode(self, signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
        return _protobuf(signal, items, resource)

    def _ensure(self) -> Any:
        kombu = _kombu()
        if self._producer is None:
            conn = kombu.Connection(self.url, connect_timeout=self._timeout)
            conn.ensure_connection(max_retries=0, timeout=self._timeout)
            self._conn = conn
            self._producer = kombu.Producer(conn.channel(), exchange=self._exchange)
            self._declared = False
        return self._producer

    def send(self, signal: str, payload: bytes) -> None:
        try:
            producer = self._ensure()
            producer.publish(
                payload,
                routing_key=self._routing_key,
                exchange=self._exchange,
                content_type=CONTENT_TYPE_PROTOBUF,
                content_encoding=AMQP_CONTENT_ENCODING,
                headers={AMQP_SIGNAL_HEADER: signal},
                delivery_mode=2,
                declare=[] if self._declared else [self._queue],
                retry=False,
                timeout=self._timeout,
            )
            self._declared = True
        except Exception as exc:  # kombu/amqp raise many types; all mean "not sent"
            self.close()
            raise RetryableExportError(f"{type(exc).__name__}: {exc}") from None

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception:
                log.debug("closing the AMQP connection failed", exc_info=True)


class FileTransport(Transport):
    """Appends one OTLP/JSON request object per batch, one per line."""

    def __init__(self, path: str) -> None:
        if not path:
            raise ValueError("the file transport needs a path")
        self.path = path
        self._file: Any = None

    def encode(self, signal: str, items: Sequence[Any], resource: Mapping[str, Any]) -> bytes:
        from crosstrace import otlp

        if signal == SIGNAL_TRACES:
            doc = otlp.spans_to_json(items)
        else:
            doc = otlp.logs_to_json(items, resource)
        return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()

    def send(self, signal: str, payload: bytes) -> None:
        try:
            if self._file is None:
                self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
            self._file.write(payload)
            self._file.flush()
        except OSError as exc:
            self.close()
            raise RetryableExportError(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_exporters: weakref.WeakSet[BatchExporter] = weakref.WeakSet()
_active: BatchExporter | None = None


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
        self._spans: collections.deque[Span] = collections.deque(maxlen=self.queue_size)
        self._logs: collections.deque[LogData] = collections.deque(maxlen=self.queue_size)
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        self._flushes: collections.deque[_Flush] = collections.deque()
        self._stopping = False
        self._deadline = 0.0
        self._thread = threading.Thread(target=self._run, name="crosstrace-export", daemon=True)
        self._thread.start()

    # -- request-thread side: no lock, no I/O -------------------------------------
    def export_spans(self, spans: Sequence[Span]) -> None:
        """Queue *spans*; when the queue cannot hold them all they are dropped."""
        q = self._spans
        n = len(spans)
        if self._stopping or len(q) + n > self.queue_size:
            self.spans_dropped += n
            return
        q.extend(spans)
        self.spans_queued += n
        if len(q) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

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
        """Spans waiting in the queue."""
        return len(self._spans)

    def cpu_ns(self) -> int:
        """CPU time the export thread has used (nanoseconds, ``time.thread_time``)."""
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
            "queue_length": len(self._spans),
        }

    # -- control -----------------------------------------------------------------
    def force_flush(self, timeout_s: float = 5.0) -> bool:
        """Export everything queued so far; ``True`` if done within *timeout_s*."""
        if not self._thread.is_alive():
            return not self._spans and not self._logs
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
        n = len(self._spans)
        self._spans.clear()
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
                    if self._spans or self._logs:
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

    def _drain(self) -> None:
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
