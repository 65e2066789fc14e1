"""Export transports: OTLP/HTTP, RabbitMQ (kombu) and JSON lines.

A :class:`Transport` turns a batch into bytes once (:meth:`Transport.encode`)
and sends them per attempt (:meth:`Transport.send`), raising
:class:`RetryableExportError` for what may succeed later (connection errors,
HTTP 429/502/503/504, with ``Retry-After``) and :class:`ExportError` for what
will not. Batching, retries and counting belong to :mod:`crosstrace.export.batch`.

* :class:`OtlpHttpTransport`: ``POST {endpoint}/v1/traces`` and ``/v1/logs``,
  ``Content-Type: application/x-protobuf``, ``Content-Encoding: gzip``,
  standard library ``http.client`` with separate connect and read timeouts.
* :class:`AmqpTransport` (kombu, e.g. RabbitMQ): each batch is one persistent
  message to the durable direct exchange ``crosstrace`` with routing key
  ``otlp``, the durable queue ``crosstrace.otlp`` declared and bound; the body
  is the serialized ``ExportTraceServiceRequest`` (or
  ``ExportLogsServiceRequest``), ``content_type`` ``application/x-protobuf``,
  ``content_encoding`` ``binary`` and header ``otlp-signal``
  (``traces``/``logs``): what ``crosstrace serve --consume`` reads.
* :class:`FileTransport`: one OTLP/JSON ``ExportTraceServiceRequest``
  (``{"resourceSpans": [...]}``) or ``ExportLogsServiceRequest``
  (``{"resourceLogs": [...]}``) object per line, one line per batch.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AMQP_CONTENT_ENCODING",
    "AMQP_SIGNAL_HEADER",
    "CONTENT_TYPE_PROTOBUF",
    "DEFAULT_AMQP_EXCHANGE",
    "DEFAULT_AMQP_QUEUE",
    "DEFAULT_AMQP_ROUTING_KEY",
    "MAX_RETRY_AFTER_S",
    "RETRYABLE_STATUSES",
    "SIGNAL_LOGS",
    "SIGNAL_TRACES",
    "AmqpTransport",
    "ExportError",
    "FileTransport",
    "OtlpHttpTransport",
    "RetryableExportError",
    "Transport",
]

log = logging.getLogger("crosstrace.export")


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
    if signal == SIGNAL_TRACES:
        from crosstrace.export.wire import spans_to_protobuf

        return spans_to_protobuf(items)
    from crosstrace import otlp

    body: bytes = otlp.logs_to_request(items, resource).SerializeToString()
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
        if signal == SIGNAL_TRACES:
            from crosstrace.export.wire import spans_to_json_line

            return spans_to_json_line(items)
        from crosstrace import otlp

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
