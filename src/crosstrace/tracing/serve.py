"""Serve one incoming request or message under its request context and server span.

Every entry point into a service does the same dance: make the request context
current, start the local root span (SERVER for HTTP, CONSUMER for a message)
continuing the caller's trace, make it current, run the handler, record an
escaping exception, restore both context variables, end the span. The WSGI and
ASGI middleware, the kombu consumer wrapper and the oslo.messaging dispatcher
hook all do it through :func:`serve`, so that they behave the same way and the
tracing work stays in one place::

    remote = crosstrace.propagation.extract_context(headers, tracer)
    with serve(context, tracer, "process compute", SpanKind.CONSUMER, attrs, remote) as s:
        s.span.set_attribute("messaging.operation.name", "process")
        return handler(body, message)

A handler whose work continues after it returns (a streamed WSGI body) uses the
steps separately: :meth:`Served.enter` / :meth:`Served.leave` around each piece
of work, :meth:`Served.fail` for an exception, :meth:`Served.finish` once.

With no tracer (tracing not configured) only the request context is handled,
and the span is the shared do-nothing :data:`~crosstrace.tracing.spans.INVALID_SPAN`.
Tracing never raises into the service: a span that cannot start is replaced by
that same do-nothing span.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping
from typing import Any

from crosstrace.context import RequestContext, reset_current, set_current
from crosstrace.tracing.deferred import Describe
from crosstrace.tracing.model import RemoteContext, SpanKind
from crosstrace.tracing.spans import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    _current,
    record_failure,
)
from crosstrace.tracing.tracer import Tracer

__all__ = ["Served", "serve"]

log = logging.getLogger("crosstrace.tracer")


class Served:
    """One request or message being served: its context and its local root span.

    Use it as a context manager, or call :meth:`enter`, :meth:`leave`,
    :meth:`fail` and :meth:`finish` yourself. :attr:`span` is the server span
    (a non-recording one when the trace is not recorded or tracing is off).
    """

    __slots__ = ("_ctx_token", "_span_token", "_start", "context", "span")

    def __init__(
        self,
        context: RequestContext,
        span: Span | NonRecordingSpan = INVALID_SPAN,
        start: Callable[[], Span | NonRecordingSpan] | None = None,
    ) -> None:
        self.context = context
        self.span = span
        self._start = start
        self._ctx_token: contextvars.Token[RequestContext | None] | None = None
        self._span_token: contextvars.Token[Span | NonRecordingSpan | None] | None = None

    def enter(self) -> None:
        """Make the request context and the span current (the first call
        starts the span, under the context, so it takes the context's ids)."""
        self._ctx_token = set_current(self.context)
        start = self._start
        if start is not None:
            self._start = None
            try:
                self.span = start()
            except Exception:  # tracing must never break the service
                log.debug("span start failed", exc_info=True)
        self._span_token = _current.set(self.span)

    def leave(self) -> None:
        """Restore what was current before :meth:`enter`."""
        span_token = self._span_token
        if span_token is not None:
            self._span_token = None
            try:
                _current.reset(span_token)
            except ValueError:  # left in another context (another task)
                pass
        ctx_token = self._ctx_token
        if ctx_token is not None:
            self._ctx_token = None
            try:
                reset_current(ctx_token)
            except ValueError:
                pass

    def fail(self, exc: BaseException) -> None:
        """Record *exc* escaping the handler on the span (error status)."""
        if isinstance(exc, Exception):
            record_failure(self.span, exc)

    def finish(self) -> None:
        """End the span (idempotent); ending the local root settles its trace."""
        try:
            self.span.end()
        except Exception:  # tracing must never break the service
            log.debug("span end failed", exc_info=True)

    def __enter__(self) -> Served:
        self.enter()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> None:
        if ev is not None:
            self.fail(ev)
        self.leave()
        self.finish()


def serve(
    context: RequestContext,
    tracer: Tracer | None = None,
    name: str = "",
    kind: int = SpanKind.SERVER,
    attributes: Mapping[str, Any] | None = None,
    remote: RemoteContext | None = None,
    *,
    describe: Describe | None = None,
    traceparent: str | None = None,
    forced: bool = False,
) -> Served:
    """Prepare to serve one request or message (nothing is current yet).

    *tracer* is the service's tracer (``None``: no span). *remote* is what
    :func:`crosstrace.propagation.extract_context` read from the caller's
    headers. The span starts at the first :meth:`Served.enter` and is current
    between each :meth:`Served.enter` and :meth:`Served.leave`.

    Entry points on a hot path pass *describe* instead of *name*, *attributes*
    and *remote*: a function returning the three, called only when the trace
    is recorded (or, for a trace outside the record fraction, only when the
    request fails, is slow or propagates its trace; see
    :meth:`~crosstrace.tracing.tracer.Tracer.start_deferred`). *traceparent*
    is the caller's raw header (for the record decision) and *forced* says a
    trigger header is present.
    """
    if tracer is None:
        return Served(context)
    if describe is not None:
        d = describe

        def start_deferred() -> Span | NonRecordingSpan:
            return tracer.start_deferred(kind, d, traceparent, forced)

        return Served(context, INVALID_SPAN, start_deferred)

    def start() -> Span | NonRecordingSpan:
        return tracer.start_root(name, kind, attributes, remote)

    return Served(context, INVALID_SPAN, start)
