"""crosstrace: global request ids, cross-service tracing and a trace backend."""

from __future__ import annotations

from crosstrace.config import configure
from crosstrace.context import RequestContext, get_current
from crosstrace.tracer import SpanKind, StatusCode, current_span, span

__all__ = [
    "RequestContext",
    "SpanKind",
    "StatusCode",
    "configure",
    "current_span",
    "get_current",
    "span",
]

__version__ = "0.1.0"
