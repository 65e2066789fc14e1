"""Tracing: the span API, the tracer and its sampling, the span model.

The layers, bottom up (each imports only those below it):

* :mod:`crosstrace.tracing.model`: shared data types (span identity, the span
  record the exporter reads, log records, the sink protocol);
* :mod:`crosstrace.tracing.sampling` and :mod:`crosstrace.tracing.budget`:
  sampling decisions, the overhead controller and its cost accounting;
* :mod:`crosstrace.tracing.spans`: recording and non-recording spans, the
  current span;
* :mod:`crosstrace.tracing.tracer`: :class:`Tracer`, :func:`span`,
  :func:`start_span`, :func:`get_tracer`;
* :mod:`crosstrace.tracing.serve`: serving one request or message under its
  request context and server span (used by the WSGI/ASGI middleware and the
  RPC consumers).

Exporting (:mod:`crosstrace.export`) sits beside it and reads only the model;
the middleware and integrations sit above it.
"""

from __future__ import annotations

from crosstrace.tracing.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    INVALID_SPAN_CONTEXT,
    LogData,
    RemoteContext,
    SpanContext,
    SpanKind,
    SpanSink,
    StatusCode,
)
from crosstrace.tracing.serve import Served, serve
from crosstrace.tracing.spans import (
    INVALID_SPAN,
    MAX_ATTRIBUTES,
    NonRecordingSpan,
    Span,
    activate,
    current_span,
    deactivate,
    record_failure,
    use_span,
)
from crosstrace.tracing.tracer import Tracer, get_tracer, span, start_span

__all__ = [
    "ATTR_DOMAIN_ID",
    "ATTR_GLOBAL_REQUEST_ID",
    "ATTR_PROJECT_DOMAIN_ID",
    "ATTR_PROJECT_ID",
    "ATTR_REQUEST_ID",
    "ATTR_USER_ID",
    "INVALID_SPAN",
    "INVALID_SPAN_CONTEXT",
    "MAX_ATTRIBUTES",
    "LogData",
    "NonRecordingSpan",
    "RemoteContext",
    "Served",
    "Span",
    "SpanContext",
    "SpanKind",
    "SpanSink",
    "StatusCode",
    "Tracer",
    "activate",
    "current_span",
    "deactivate",
    "get_tracer",
    "record_failure",
    "serve",
    "span",
    "start_span",
    "use_span",
]
