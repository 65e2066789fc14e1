"""Exporting kept spans and log records: the batching exporter and its transports.

* :mod:`crosstrace.export.batch`: :class:`BatchExporter` (bounded lock-free
  queues, one background thread, retries, drop counting, fork safety, flush on
  exit). :class:`LogData` (re-exported here) lives in :mod:`crosstrace.tracing.model`.
* :mod:`crosstrace.export.transports`: :class:`OtlpHttpTransport` (OTLP/HTTP
  protobuf + gzip), :class:`AmqpTransport` (RabbitMQ through kombu) and
  :class:`FileTransport` (OTLP/JSON lines).
* :mod:`crosstrace.export.wire`: spans as OTLP protobuf and OTLP/JSON,
  written directly (what the transports send; a fifth to a third of the CPU
  of building ``opentelemetry-proto`` messages or running ``json.dumps``).

:func:`stats` returns the configured exporter's self-metrics.
"""

from __future__ import annotations

from crosstrace.export.batch import BatchExporter, active, set_active, stats
from crosstrace.export.transports import (
    AMQP_CONTENT_ENCODING,
    AMQP_SIGNAL_HEADER,
    CONTENT_TYPE_PROTOBUF,
    DEFAULT_AMQP_EXCHANGE,
    DEFAULT_AMQP_QUEUE,
    DEFAULT_AMQP_ROUTING_KEY,
    MAX_RETRY_AFTER_S,
    RETRYABLE_STATUSES,
    SIGNAL_LOGS,
    SIGNAL_TRACES,
    AmqpTransport,
    ExportError,
    FileTransport,
    OtlpHttpTransport,
    RetryableExportError,
    Transport,
    _retry_after,
)
from crosstrace.tracing.model import LogData

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
    "BatchExporter",
    "ExportError",
    "FileTransport",
    "LogData",
    "OtlpHttpTransport",
    "RetryableExportError",
    "Transport",
    "_retry_after",
    "active",
    "set_active",
    "stats",
]
