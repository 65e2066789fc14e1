"""The tracer's public names at their first path; the module is
:mod:`crosstrace.tracing.tracer`."""

from __future__ import annotations

from crosstrace.tracing.tracer import Tracer, get_tracer, span, start_span

__all__ = ["Tracer", "get_tracer", "span", "start_span"]
