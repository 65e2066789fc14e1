"""crosstrace: global request ids, cross-service tracing and a trace backend."""

from __future__ import annotations

from crosstrace.config import configure, force_flush
from crosstrace.context import RequestContext, get_current
from crosstrace.tracing import SpanKind, StatusCode, Tracer, current_span, get_tracer, span

__all__ = [
    "RequestContext",
    "SpanKind",
    "StatusCode",
    "Tracer",
    "configure",
    "current_span",
    "force_flush",
    "get_current",
    "get_tracer",
    "span",
]

__version__ = "0.1.0"
