"""crosstrace: global request ids, cross-service tracing and a trace backend."""

from __future__ import annotations

from crosstrace.context import RequestContext, get_current

__all__ = [
    "RequestContext",
    "get_current",
]

__version__ = "0.1.0"
