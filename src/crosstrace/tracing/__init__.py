"""Tracing: the span API, the tracer and its sampling, the span model.

The layers, bottom up (each imports only those below it):

* :mod:`crosstrace.tracing.model`: shared data types (span identity, the span
  record the exporter reads, log records, the sink protocol);
* :mod:`crosstrace.tracing.sampling`, :mod:`crosstrace.tracing.calibration`,
  :mod:`crosstrace.tracing.budget` and :mod:`crosstrace.tracing.plan`:
  sampling decisions, the overhead controller, the prices calibration finds,
  its cost accounting and its plan of the requests it leaves untraced;
* :mod:`crosstrace.tracing.spans`: recording and non-recording spans, the
  current span;
* :mod:`crosstrace.tracing.tracer`: :class:`Tracer`, :func:`span`,
  :func:`start_span`, :func:`get_tracer`;
* :mod:`crosstrace.tracing.serve`: serving one request or message under its
  request context and server span (used by the WSGI/ASGI middleware and the
  RPC consumers).

Exporting (:mod:`crosstrace.export`) sits beside it and reads only the model;
the middleware and integrations sit above it.

Which tracer records a span (one rule)
    A :class:`Tracer` holds a resource (``service.name`` ...) and the sampling
    state. A span opened while another span is current is a child of it and
    belongs to the *parent's* tracer, whatever tracer the caller names. Only a
    *local root* (no current span: an incoming request or message, a
    background job) picks a tracer: the ``tracer=`` argument of the entry point
    (:func:`span`, :func:`start_span`, the WSGI/ASGI middleware, the kombu
    consumer wrapper, the client integrations), else the process default set
    by :func:`crosstrace.configure`. Several services in one process (threads
    of a test or a demo) each pass their own ``crosstrace.get_tracer(name)``:
    those tracers share the configured exporter (one background thread, spans
    grouped by resource in each batch), the sampling ratio, the rate limit and
    the overhead budget, and differ only in ``service.name``.

How much a span costs
    *Unconfigured* (no :func:`crosstrace.configure` and no tracer given) every
    call is a no-op: ``with span(...) as s`` binds the shared non-recording
    :data:`~crosstrace.tracing.spans.INVALID_SPAN`. *Configured*, the sampling decision
    is made once per trace, at the local root span, before anything is
    recorded (:mod:`crosstrace.tracing.sampling`). A trace that is neither head-sampled
    nor in the recorded fraction gets one non-recording span (at an entry
    point, a :class:`~crosstrace.tracing.deferred.DeferredRoot` that reads the
    request only if it fails, is slow or propagates); every span opened under
    it is that same object, so a child costs a ContextVar read and an empty
    ``with``. Otherwise spans are
    recorded: plain ``__slots__`` objects with integer ids from
    :func:`random.getrandbits` and :func:`time.time_ns`.

Segments and the tail rule
    The spans of one trace within this process (its *local segment*) are
    collected until the local root span ends. The segment is then exported if
    the trace was head-sampled (or forced by a trusted trigger), if any span in
    it ended with error status (exceptions set error status; so do the
    middleware's 5xx responses and failed client calls, which is how a failure
    three services down keeps a segment in every service it passed through),
    or if the local root took longer than the slow threshold. Otherwise the
    segment is dropped without any further work: no redaction, no encoding.
    A span that ends after its local root (a leftover background task) follows
    its segment's decision.
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
