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
from collections.abc import Mapping
from time import thread_time_ns, time_ns
from typing import Any

from crosstrace.context import RequestContext, reset_current, set_current
from crosstrace.httpnames import ATTR_STATUS_CODE
from crosstrace.tracing.budget import (
    GROUP_CONTROL,
    GROUP_DEFERRED,
    GROUP_RECORDED,
    GROUP_SKIPPED,
)
from crosstrace.tracing.deferred import DeferredRoot, Describe, sampled_bits
from crosstrace.tracing.model import RemoteContext, SpanKind, StatusCode
from crosstrace.tracing.plan import SKIP_MEASURED, TRACE_ALL
from crosstrace.tracing.spans import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    _current,
    record_failure,
)
from crosstrace.tracing.tracer import Tracer

__all__ = ["Served", "export_untraced", "serve"]

log = logging.getLogger("crosstrace.tracer")


class Served:
    """One request or message being served: its context and its local root span.

    Use it as a context manager, or call :meth:`enter`, :meth:`leave`,
    :meth:`fail` and :meth:`finish` yourself; report an HTTP status with
    :meth:`status`. :attr:`span` is the server span (a non-recording one when
    the trace is not recorded or tracing is off).

    It is also where the overhead budget acts and is measured: unless the
    entry point asked already, a tracer over a small budget may run the
    request untraced (its failure or slow run still exported, after the
    fact); some requests run with tracing off as a control group, and some or
    all traced ones have their thread CPU time measured, so the tracer
    compares what traced requests cost with what untraced ones cost
    (:meth:`~crosstrace.tracing.budget.CostModel.observe`).
    """

    __slots__ = (
        "_attributes",
        "_code",
        "_control_ns",
        "_ctx_token",
        "_describe",
        "_exc",
        "_forced",
        "_kind",
        "_name",
        "_remote",
        "_skipped",
        "_span_token",
        "_t0",
        "_traceparent",
        "_tracer",
        "context",
        "span",
    )

    def __init__(
        self,
        context: RequestContext,
        tracer: Tracer | None = None,
        kind: int = SpanKind.SERVER,
        describe: Describe | None = None,
        traceparent: str | None = None,
        forced: bool = False,
        name: str = "",
        attributes: Mapping[str, Any] | None = None,
        remote: RemoteContext | None = None,
        budget: bool = True,
    ) -> None:
        self.context = context
        self.span: Span | NonRecordingSpan = INVALID_SPAN
        self._tracer = tracer
        self._t0 = 0
        self._control_ns = 0
        self._skipped = 0
        if tracer is None or tracer.controller is None:  # no budget to hold
            pass
        elif budget and tracer.trace_threshold < TRACE_ALL and (skip := tracer.skip_request()):
            # Over a small budget: this request runs as with tracing off; only
            # a failure or a slow run exports its root span, after the fact.
            self._control_ns = time_ns()
            self._skipped = skip
            if skip == SKIP_MEASURED:
                self._t0 = thread_time_ns() - tracer.costs.own_ns
        else:
            costs = tracer.costs
            n = next(costs.tickets)
            control, every = costs.control_every, costs.sample_every
            if control and n % control == 0:
                if not forced and sampled_bits(traceparent) >= tracer.threshold:
                    # The control group (never a head-sampled trace): tracing
                    # off for this request, kept only if it fails or is slow.
                    self._control_ns = time_ns()
            elif every > 1 and n % every != 1:
                n = 0
            if n:
                # From here to finish(), less the budget's own work in between.
                self._t0 = thread_time_ns() - costs.own_ns
        self._kind = kind
        self._describe = describe
        self._traceparent = traceparent
        self._forced = forced
        self._name = name
        self._attributes = attributes
        self._remote = remote
        self._code = 0
        self._exc: BaseException | None = None
        self._ctx_token: contextvars.Token[RequestContext | None] | None = None
        self._span_token: contextvars.Token[Span | NonRecordingSpan | None] | None = None

    def enter(self) -> None:
        """Make the request context and the span current (the first call
        starts the span, under the context, so it takes the context's ids)."""
        self._ctx_token = set_current(self.context)
        if self._control_ns:
            # Run untraced, the handler's spans take the tracing-off path.
            self.context.untraced = True
            self._span_token = _current.set(None)
            return
        tracer = self._tracer
        if tracer is not None and self.span is INVALID_SPAN:
            self._start(tracer)
        self._span_token = _current.set(self.span)

    def _start(self, tracer: Tracer) -> None:
        try:
            describe = self._describe
            if describe is not None:
                self.span = tracer.start_deferred(
                    self._kind, describe, self._traceparent, self._forced
                )
            else:
                self.span = tracer.start_root(
                    self._name, self._kind, self._attributes, self._remote
                )
        except Exception:  # tracing must never break the service
            log.debug("span start failed", exc_info=True)

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

    def status(self, code: int) -> None:
        """The response status: ``http.response.status_code``; 5xx is an error."""
        self._code = code  # for the root span built after the fact, if it is one
        self.span.set_attribute(ATTR_STATUS_CODE, code)
        if code >= 500:
            self.span.set_status(StatusCode.ERROR, f"HTTP {code}")

    def fail(self, exc: BaseException) -> None:
        """Record *exc* escaping the handler on the span (error status)."""
        if isinstance(exc, Exception):
            record_failure(self.span, exc)
            self._exc = exc

    def finish(self) -> None:
        """End the span (idempotent); ending the local root settles its trace."""
        try:
            self.span.end()
            t0 = self._t0
            tracer = self._tracer
            if t0 and tracer is not None:
                self._t0 = 0
                self._observe(thread_time_ns() - tracer.costs.own_ns - t0)
            elif self._control_ns and tracer is not None:
                self._settle_untraced(tracer)
        except Exception:  # tracing must never break the service
            log.debug("span end failed", exc_info=True)

    def _observe(self, cpu_ns: int) -> None:
        tracer = self._tracer
        if tracer is None:
            return
        span = self.span
        if self._control_ns:
            group = GROUP_SKIPPED if self._skipped else GROUP_CONTROL
            self._settle_untraced(tracer)
        elif span._recording:
            group = GROUP_RECORDED
        else:
            group = GROUP_DEFERRED
        tracer.costs.observe(group, cpu_ns)

    def _settle_untraced(self, tracer: Tracer) -> None:
        """A request run untraced ended: export its root span if it failed or
        was slow."""
        control = self._control_ns
        self._control_ns = 0
        if self._code >= 500 or self._exc is not None or time_ns() - control >= tracer.slow_ns > 0:
            self._export_control(tracer, control)

    def _export_control(self, tracer: Tracer, start_ns: int) -> None:
        """A request run untraced failed or was slow: export its root span alone."""
        describe = self._describe
        if describe is None:
            name, attrs, remote = self._name, dict(self._attributes or {}), self._remote

            def describe() -> tuple[str, dict[str, Any], RemoteContext]:
                return name, attrs, remote or RemoteContext()

        export_untraced(self.context, tracer, describe, start_ns, self._code, self._exc, self._kind)

    def __enter__(self) -> Served:
        self.enter()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> None:
        if ev is not None:
            self.fail(ev)
        self.leave()
        self.finish()


def export_untraced(
    context: RequestContext,
    tracer: Tracer,
    describe: Describe,
    start_ns: int,
    code: int = 0,
    exc: BaseException | None = None,
    kind: int = SpanKind.SERVER,
) -> None:
    """Export the root span of a request the budget ran untraced, which failed
    (answered *code* 5xx, or raised *exc*) or was slow (started at *start_ns*).

    What the span is made of (*describe*: its name, attributes and the
    caller's trace context, read from the request) is taken now, while the
    request is still this thread's; where the exporter offers it
    (:meth:`~crosstrace.export.BatchExporter.export_later`) the span is built
    and queued on the export thread, in a batch with the others: built here,
    one now and then between the service's requests, it costs the request
    thread more, most of it in code gone cold. An exception is kept (with its
    traceback's frames) until then: at most until the exporter's next batch.
    What is done here is measured (this is tracing cost however rare); the
    export thread's CPU time is measured apart."""
    t0 = thread_time_ns()
    try:
        end_ns = time_ns()
        root = DeferredRoot(tracer, kind, describe, start_ns)
        root._request = context
        if code:
            root.set_attribute(ATTR_STATUS_CODE, code)
            if code >= 500:
                root.set_status(StatusCode.ERROR, f"HTTP {code}")
        if exc is not None:
            root._failed(exc)
        later = getattr(tracer.sink, "export_later", None)
        if later is None:
            _end_late(tracer, root, end_ns)
        else:
            root.description()  # read the request while it is still this thread's
            later(lambda: _end_late(tracer, root, end_ns))
    except Exception:  # tracing must never break the service
        log.debug("exporting an untraced request failed", exc_info=True)
    tracer.costs.add_late(thread_time_ns() - t0)


def _end_late(tracer: Tracer, root: DeferredRoot, end_ns: int) -> None:
    """End the root span of a request run untraced, which exports it (counted
    with the traces it is among, where it is built)."""
    tracer.accounting.late += 1
    root.end(end_ns)


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
    budget: bool = True,
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
    trigger header is present. Unless *budget* is false (the entry point asked
    :meth:`~crosstrace.tracing.tracer.Tracer.skip_request` itself), a tracer
    over a small overhead budget may run the request untraced: its failure or
    slow run is then exported after the fact.
    """
    return Served(
        context, tracer, kind, describe, traceparent, forced, name, attributes, remote, budget
    )
