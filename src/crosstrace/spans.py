"""The span model's public names at their first path; the modules are
:mod:`crosstrace.tracing.spans` and :mod:`crosstrace.tracing.model`."""

from __future__ import annotations

from crosstrace.tracing.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    INVALID_SPAN_CONTEXT,
    RemoteContext,
    SpanContext,
    SpanKind,
    SpanSink,
    StatusCode,
)
from crosstrace.tracing.spans import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    activate,
    current_span,
    deactivate,
    record_failure,
    use_span,
)

__all__ = [
    "ATTR_DOMAIN_ID",
    "ATTR_GLOBAL_REQUEST_ID",
    "ATTR_PROJECT_DOMAIN_ID",
    "ATTR_PROJECT_ID",
    "ATTR_REQUEST_ID",
    "ATTR_USER_ID",
    "INVALID_SPAN",
    "INVALID_SPAN_CONTEXT",
    "NonRecordingSpan",
    "RemoteContext",
    "Span",
    "SpanContext",
    "SpanKind",
    "SpanSink",
    "StatusCode",
    "activate",
    "current_span",
    "deactivate",
    "record_failure",
    "use_span",
]
