"""Spans: the tracing API services call, and the per-trace keep/drop rule.

Use :func:`span` as a context manager or a decorator (sync and async)::

    with crosstrace.span("resize", kind=SpanKind.INTERNAL, attributes={"flavor": f}) as s:
        s.add_event("quota checked")

    @crosstrace.span("fetch_image")
    async def fetch_image(...): ...

An exception leaving the block is recorded as an ``exception`` event
(``exception.type``, ``exception.message``, ``exception.stacktrace``), the span
gets error status, and the exception propagates unchanged.

How much a span costs
    *Unconfigured* (no :func:`crosstrace.configure` yet) every call is a no-op:
    ``with span(...) as s`` binds the shared non-recording :data:`INVALID_SPAN`.
    *Configured*, the sampling decision is made once per trace, at the local
    root span, before anything is recorded (:mod:`crosstrace.sampling`). A trace
    that is neither head-sampled nor in the recorded fraction gets one
    non-recording span holding only its ids (for propagation); every span
    opened under it is that same object, so a child costs a ContextVar read and
    an empty ``with``. Otherwise spans are recorded: plain ``__slots__`` objects
    with integer ids from :func:`random.getrandbits` and :func:`time.time_ns`.

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

Hooks for instrumentation (middleware, HTTP clients, RPC, DB)
    * :func:`extract_context` reads ``traceparent``/``tracestate``, the signed
      trigger and OSProfiler's headers from an incoming carrier (any mapping, or
      a getter such as a WSGI environ reader) into a :class:`RemoteContext`.
    * :func:`start_server_span` starts a SERVER (or CONSUMER) span from those
      headers with the current :class:`~crosstrace.context.RequestContext`'s
      ids as attributes; it is not made current until :func:`activate` (pair
      with :func:`deactivate` and :meth:`Span.end`), or use :func:`use_span`.
    * :func:`inject_context` writes ``traceparent``/``tracestate`` (and a
      re-signed trigger or OSProfiler headers when the trace was forced by one)
      for the current span into an outbound carrier (HTTP headers, message
      headers).
    * Mark failures with ``span.set_status(StatusCode.ERROR, "HTTP 503")``: the
      tail rule keys on status, not only on exceptions.

The current span lives in its own :class:`contextvars.ContextVar`, beside the
request context, so :func:`crosstrace.context.wrap` carries both to other
threads. Nothing here does I/O or takes a lock; kept segments are handed to the
exporter's lock-free queue.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import inspect
import logging
import os
import socket
import traceback
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from random import getrandbits
from time import monotonic_ns, perf_counter_ns, time_ns
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from crosstrace.context import get_current
from crosstrace.redact import Redactor
from crosstrace.sampling import (
    TIMED_FACTOR,
    OverheadController,
    TokenBucket,
    ratio_sampled,
    ratio_threshold,
    record_threshold,
    recorded,
    timed,
)
from crosstrace.tracecontext import (
    FLAG_RANDOM,
    FLAG_SAMPLED,
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    TraceState,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
)
from crosstrace.trust import (
    ATTR_OSPROFILER_BASE_ID,
    ATTR_OSPROFILER_PARENT_ID,
    OSPROFILER_HMAC_HEADER,
    OSPROFILER_INFO_HEADER,
    TRIGGER_HEADER,
    make_osprofiler_headers,
    make_trigger,
    verify_osprofiler,
    verify_trigger,
)

__all__ = [
    "ATTR_DOMAIN_ID",
    "ATTR_GLOBAL_REQUEST_ID",
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
    "StatusCode",
    "Tracer",
    "activate",
    "current_span",
    "deactivate",
    "extract_context",
    "get_tracer",
    "inject_context",
    "span",
    "start_server_span",
    "start_span",
    "use_span",
]

log = logging.getLogger(__name__)

#: Span attributes filled from the current RequestContext (DESIGN.md "Span model").
ATTR_REQUEST_ID = "openstack.request_id"
ATTR_GLOBAL_REQUEST_ID = "openstack.global_request_id"
ATTR_PROJECT_ID = "openstack.project_id"
ATTR_DOMAIN_ID = "openstack.domain_id"
ATTR_USER_ID = "openstack.user_id"

#: Per-span limits; what goes over is counted in ``dropped_*``.
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
#: Longest ``exception.stacktrace`` kept (characters, the end is kept).
MAX_STACKTRACE = 16384

_MASK64 = (1 << 64) - 1


class SpanKind(enum.IntEnum):
    """Span kinds; the values are OTLP's ``Span.SpanKind`` numbers."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class StatusCode(enum.IntEnum):
    """Span status; the values are OTLP's ``Status.StatusCode`` numbers."""

    UNSET = 0
    OK = 1
    ERROR = 2


_INTERNAL = 1
_SERVER = 2
_CONSUMER = 5
_ERROR = 2
# Kinds whose spans get the request context's ids in Span.__init__.
_REQUEST_KINDS = frozenset({_SERVER, _CONSUMER})


class SpanContext(NamedTuple):
    """The immutable identity of a span: integer ids, flags and tracestate.

    Ids stay integers inside the process; hex appears only at the edge
    (:func:`crosstrace.tracecontext.format_traceparent`).
    """

    trace_id: int
    span_id: int
    trace_flags: int = 0
    trace_state: TraceState | None = None
    is_remote: bool = False

    @property
    def is_valid(self) -> bool:
        """Both ids non-zero."""
        return self.trace_id != 0 and self.span_id != 0

    @property
    def sampled(self) -> bool:
        """The sampled flag."""
        return bool(self.trace_flags & FLAG_SAMPLED)


INVALID_SPAN_CONTEXT = SpanContext(0, 0)


class RemoteContext(NamedTuple):
    """What :func:`extract_context` found in an incoming carrier."""

    #: The caller's span, or ``None`` (no or invalid ``traceparent``).
    parent: SpanContext | None = None
    #: A trusted trigger (signed header or OSProfiler HMAC) asks to record.
    forced: bool = False
    #: The verified OSProfiler ``base_id`` / ``parent_id``, if any.
    osprofiler_base_id: str | None = None
    osprofiler_parent_id: str | None = None
    #: The OSProfiler key that verified the headers (to re-sign onwards).
    osprofiler_key: str | None = None


class SpanSink(Protocol):
    """Where kept segments go (the exporter)."""

    def export_spans(self, spans: Sequence[Span]) -> None:
        """Queue *spans* for export; never blocks, never raises."""

    def cpu_ns(self) -> int:
        """CPU time the export thread has used so far, nanoseconds."""


class _Segment:
    """The spans of one trace recorded in this process."""

    __slots__ = (
        "closed",
        "cost_ns",
        "failed",
        "flags",
        "forced",
        "kept",
        "osprofiler",
        "sampled",
        "spans",
        "timed",
        "trace_id",
        "trace_state",
        "tracer",
    )

    def __init__(
        self,
        tracer: Tracer,
        trace_id: int,
        flags: int,
        trace_state: TraceState | None,
        sampled: bool,
        forced: bool,
    ) -> None:
        self.tracer = tracer
        self.trace_id = trace_id
        self.flags = flags
        self.trace_state = trace_state
        self.sampled = sampled
        self.forced = forced
        self.failed = False
        self.closed = False
        self.kept = False
        self.timed = tracer.controller is not None and (tracer._time_all or timed(trace_id))
        self.cost_ns = 0
        self.spans: list[Span] = []
        self.osprofiler: tuple[str, str] | None = None


def _request_attributes(attributes: dict[str, Any]) -> None:
    rc = get_current()
    if rc is None:
        return
    attributes[ATTR_REQUEST_ID] = rc.request_id
    if rc.global_request_id is not None:
        attributes[ATTR_GLOBAL_REQUEST_ID] = rc.global_request_id
    if rc.project_id is not None:
        attributes[ATTR_PROJECT_ID] = rc.project_id
    if rc.domain_id is not None:
        attributes[ATTR_DOMAIN_ID] = rc.domain_id
    if rc.user_id is not None:
        attributes[ATTR_USER_ID] = rc.user_id


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


P = ParamSpec("P")
R = TypeVar("R")


def _decorate(
    fn: Callable[P, R], name: str | None, kind: int, attributes: Mapping[str, Any] | None
) -> Callable[P, R]:
    """Wrap *fn* so each call runs in a new span (sync or async)."""
    span_name = name or getattr(fn, "__qualname__", None) or repr(fn)
    attrs = dict(attributes) if attributes else None
    if inspect.iscoroutinefunction(fn):
        afn: Callable[P, Awaitable[Any]] = fn

        @functools.wraps(fn)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            with span(span_name, kind, attrs):
                return await afn(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with span(span_name, kind, attrs):
            return fn(*args, **kwargs)

    return wrapper


class NonRecordingSpan:
    """A span that records nothing but carries its trace's ids for propagation.

    One object serves a whole unrecorded trace: spans opened under it return
    it again, and entering or leaving it does nothing.
    """

    __slots__ = ("_context", "_segment_info")

    _recording = False

    def __init__(self, context: SpanContext, segment_info: RemoteContext | None = None) -> None:
        self._context = context
        self._segment_info = segment_info

    @property
    def context(self) -> SpanContext:
        """This span's identity (invalid for the unconfigured no-op span)."""
        return self._context

    @property
    def trace_id(self) -> int:
        """The trace id (0 when invalid)."""
        return self._context.trace_id

    @property
    def span_id(self) -> int:
        """The span id (0 when invalid)."""
        return self._context.span_id

    def is_recording(self) -> bool:
        """Always ``False``."""
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        """Does nothing."""

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Does nothing."""

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp_ns: int = 0
    ) -> None:
        """Does nothing."""

    def record_exception(
        self, exc: BaseException, attributes: Mapping[str, Any] | None = None
    ) -> None:
        """Does nothing."""

    def set_status(self, code: int, description: str | None = None) -> None:
        """Does nothing."""

    def update_name(self, name: str) -> None:
        """Does nothing."""

    def end(self, end_ns: int = 0) -> None:
        """Does nothing."""

    def __enter__(self) -> NonRecordingSpan:
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        return None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn*; the span takes the function's qualified name.

        (Only reached when ``span(...)`` is used as a decorator inside an
        unrecorded trace; at import time the name given is used.)
        """
        return _decorate(fn, None, _INTERNAL, None)

    def __repr__(self) -> str:
        return f"NonRecordingSpan(trace_id={self._context.trace_id:032x})"


#: The shared do-nothing span: the current span when there is none.
INVALID_SPAN = NonRecordingSpan(INVALID_SPAN_CONTEXT)


class Span:
    """A recording span. Create with :func:`span` or :func:`start_span`."""

    __slots__ = (
        "_token",
        "attributes",
        "dropped_attributes",
        "dropped_events",
        "end_ns",
        "events",
        "kind",
        "links",
        "name",
        "parent_id",
        "parent_remote",
        "segment",
        "span_id",
        "start_ns",
        "status_code",
        "status_message",
        "trace_id",
    )

    _recording = True

    def __init__(
        self,
        name: str,
        kind: int,
        attributes: Mapping[str, Any] | None,
        segment: _Segment,
        parent_id: int,
        parent_remote: bool = False,
        start_ns: int = 0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.segment = segment
        self.trace_id = segment.trace_id
        self.span_id = getrandbits(64) or 1
        self.parent_id = parent_id
        self.parent_remote = parent_remote
        self.events: list[tuple[str, int, dict[str, Any]]] | None = None
        self.links: list[tuple[SpanContext, dict[str, Any]]] | None = None
        self.status_code = 0
        self.status_message: str | None = None
        self.dropped_attributes = 0
        self.dropped_events = 0
        self.end_ns = 0
        self._token: contextvars.Token[Span | NonRecordingSpan | None] | None = None
        if kind in _REQUEST_KINDS:
            _request_attributes(self.attributes)
        self.start_ns = start_ns or time_ns()

    # -- identity -----------------------------------------------------------
    @property
    def context(self) -> SpanContext:
        """This span's identity."""
        seg = self.segment
        return SpanContext(self.trace_id, self.span_id, seg.flags, seg.trace_state, False)

    def is_recording(self) -> bool:
        """``True`` until the span ends."""
        return self.end_ns == 0

    # -- data ---------------------------------------------------------------
    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute (str, bool, int, float, bytes or a sequence of them)."""
        attrs = self.attributes
        if len(attrs) < MAX_ATTRIBUTES or key in attrs:
            attrs[key] = value
        else:
            self.dropped_attributes += 1

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set several attributes."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp_ns: int = 0
    ) -> None:
        """Add a timestamped event."""
        events = self.events
        if events is None:
            events = self.events = []
        if len(events) >= MAX_EVENTS:
            self.dropped_events += 1
            return
        events.append((name, timestamp_ns or time_ns(), dict(attributes) if attributes else {}))

    def record_exception(
        self, exc: BaseException, attributes: Mapping[str, Any] | None = None
    ) -> None:
        """Add an ``exception`` event with type, message and stack trace."""
        try:
            stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:  # a broken __str__ must not escape
            stack = ""
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable>"
        attrs: dict[str, Any] = {
            "exception.type": _exception_type(exc),
            "exception.message": message,
            "exception.stacktrace": stack[-MAX_STACKTRACE:],
        }
        if attributes:
            attrs.update(attributes)
        self.add_event("exception", attrs)

    def set_status(self, code: int, description: str | None = None) -> None:
        """Set the status; a description is kept for ERROR only (as OTLP says)."""
        self.status_code = int(code)
        self.status_message = description if code == _ERROR else None

    def update_name(self, name: str) -> None:
        """Rename the span (e.g. once the route is known)."""
        self.name = name

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        """Link another span (e.g. the messages of a batch)."""
        if self.links is None:
            self.links = []
        self.links.append((context, dict(attributes) if attributes else {}))

    # -- lifecycle ----------------------------------------------------------
    def end(self, end_ns: int = 0) -> None:
        """End the span (idempotent). Ending the local root settles the segment."""
        seg = self.segment
        if seg.timed:
            t0 = perf_counter_ns()
            self._end(end_ns)
            seg.cost_ns += perf_counter_ns() - t0
        else:
            self._end(end_ns)

    def _end(self, end_ns: int) -> None:
        if self.end_ns:
            return
        seg = self.segment
        self.end_ns = end_ns or time_ns()
        if self.status_code == _ERROR:
            seg.failed = True
        if seg.closed:
            if seg.kept:
                seg.tracer._export_late(self)
            return
        seg.spans.append(self)
        # The local root is the one span of a segment whose parent is remote
        # or absent; every other span has a local parent.
        if self.parent_id == 0 or self.parent_remote:
            seg.tracer._finish(seg, self)

    def __enter__(self) -> Span:
        self._token = _current.set(self)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> None:
        seg = self.segment
        t0 = perf_counter_ns() if seg.timed else 0
        try:
            if ev is not None and isinstance(ev, Exception):
                self.record_exception(ev, {"exception.escaped": True})
                self.status_code = _ERROR
                try:
                    self.status_message = f"{type(ev).__name__}: {ev}"
                except Exception:
                    self.status_message = type(ev).__name__
            self._end(0)
        except Exception:  # tracing must never break the service
            log.debug("span end failed", exc_info=True)
        token = self._token
        if token is not None:
            self._token = None
            try:
                _current.reset(token)
            except ValueError:  # ended in another context (e.g. another task)
                pass
        if t0:
            seg.cost_ns += perf_counter_ns() - t0

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn*: each call runs in a new span with this name and kind."""
        return _decorate(fn, self.name, self.kind, None)

    def __repr__(self) -> str:
        return f"Span({self.name!r}, trace_id={self.trace_id:032x}, span_id={self.span_id:016x})"


_current: contextvars.ContextVar[Span | NonRecordingSpan | None] = contextvars.ContextVar(
    "crosstrace_span", default=None
)
_get_current_span = _current.get

#: The configured tracer, or ``None`` (everything is a no-op).
_tracer: Tracer | None = None
_tracers: weakref.WeakSet[Tracer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for t in list(_tracers):
        t._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Tracer:
    """Process-wide tracing state: resource, sampling knobs, keep rule, sink.

    Built by :func:`crosstrace.configure`; settings that may change at run time
    (ratio, rate, budget, threshold, keys) are plain attributes updated in place
    by :meth:`update`, so changes take effect on the next trace.
    """

    def __init__(
        self,
        service_name: str,
        sink: SpanSink | None = None,
        sample_ratio: float = 1.0,
        rate_limit: float = 0.0,
        overhead_budget: float = 0.0,
        slow_threshold_s: float = 2.0,
        trigger_keys: Sequence[str] = (),
        osprofiler_keys: Sequence[str] = (),
        redact_keys: Sequence[str] = (),
        resource: Mapping[str, Any] | None = None,
    ) -> None:
        self.resource: dict[str, Any] = {
            "service.name": service_name,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
        if resource:
            self.resource.update(resource)
        self.sink = sink
        self.bucket = TokenBucket(rate_limit)
        self.controller: OverheadController | None = None
        self.sample_ratio = 1.0
        self.threshold = 0
        self.record_threshold = record_threshold(1.0)
        self.slow_ns = 0
        self.trigger_keys: tuple[str, ...] = ()
        self.osprofiler_keys: tuple[str, ...] = ()
        self.redactor = Redactor(redact_keys)
        # Time every segment (calibration only) instead of 1 in TIMED_FACTOR.
        self._time_all = False
        # Measured cost x this = estimated full cost (see _calibrate).
        self.cost_factor = 1.0
        # Counters (plain ints: single bytecode updates under the GIL).
        self.segments_kept = 0
        self.segments_dropped = 0
        self.traces_unrecorded = 0
        self.update(
            sample_ratio=sample_ratio,
            rate_limit=rate_limit,
            overhead_budget=overhead_budget,
            slow_threshold_s=slow_threshold_s,
            trigger_keys=trigger_keys,
            osprofiler_keys=osprofiler_keys,
        )
        _tracers.add(self)

    def update(
        self,
        sample_ratio: float | None = None,
        rate_limit: float | None = None,
        overhead_budget: float | None = None,
        slow_threshold_s: float | None = None,
        trigger_keys: Sequence[str] | None = None,
        osprofiler_keys: Sequence[str] | None = None,
        redact_keys: Sequence[str] | None = None,
    ) -> None:
        """Change run-time settings in place; they apply to the next trace."""
        if sample_ratio is not None:
            self.sample_ratio = float(sample_ratio)
        if rate_limit is not None:
            self.bucket.rate = float(rate_limit)
        if overhead_budget is not None:
            if overhead_budget > 0.0:
                if self.controller is None:
                    self.controller = OverheadController(overhead_budget)
                    if not self._time_all:
                        self.cost_factor = self._calibrate()
                else:
                    self.controller.budget = overhead_budget
            else:
                self.controller = None
        if slow_threshold_s is not None:
            self.slow_ns = int(slow_threshold_s * 1e9)
        if trigger_keys is not None:
            self.trigger_keys = tuple(k for k in trigger_keys if k)
        if osprofiler_keys is not None:
            self.osprofiler_keys = tuple(k for k in osprofiler_keys if k)
        if redact_keys is not None:
            self.redactor = Redactor(redact_keys)
        self._apply_knobs()

    def _calibrate(self, rounds: int = 100) -> float:
        """How much of the real per-span cost the timing points capture.

        The timing points cover the tracer's own functions; call overhead, the
        ``with`` protocol and allocation are outside them. Runs a few hundred
        spans through a private tracer, compares the wall time of the loop with
        what the timing points measured, and returns the ratio (1 to 4).
        """
        try:
            cal = Tracer(str(self.resource["service.name"]), overhead_budget=0.0)
            cal._time_all = True
            ctl = cal.controller = OverheadController(1.0)
            attrs = {"calibrate.a": 1, "calibrate.b": "x", "calibrate.c": True}
            t0 = perf_counter_ns()
            for _ in range(rounds):
                root = cal.start_root("calibrate", _SERVER, attrs)
                root.__enter__()
                for _ in range(3):
                    with span("calibrate.child", _INTERNAL, attrs):
                        pass
                root.__exit__(None, None, None)
            external = perf_counter_ns() - t0
            internal = ctl._record_ns / TIMED_FACTOR
            if internal <= 0:
                return 1.0
            return min(4.0, max(1.0, external / internal))
        except Exception:
            log.debug("cost calibration failed", exc_info=True)
            return 1.0

    def _apply_knobs(self) -> None:
        ctl = self.controller
        factor = ctl.ratio_factor if ctl is not None else 1.0
        fraction = ctl.record_fraction if ctl is not None else 1.0
        self.threshold = ratio_threshold(self.sample_ratio * factor)
        self.record_threshold = record_threshold(fraction)

    @property
    def effective_ratio(self) -> float:
        """The head-sampling ratio in force (configured ratio x budget factor)."""
        ctl = self.controller
        return self.sample_ratio * (ctl.ratio_factor if ctl is not None else 1.0)

    @property
    def record_fraction(self) -> float:
        """The share of traces recorded at all (1.0 unless over budget)."""
        ctl = self.controller
        return ctl.record_fraction if ctl is not None else 1.0

    def _after_fork(self) -> None:
        if self.controller is not None:
            self.controller.reset_window()
        self.resource["process.pid"] = os.getpid()

    # -- decisions ------------------------------------------------------------
    def start_root(
        self,
        name: str,
        kind: int,
        attributes: Mapping[str, Any] | None,
        remote: RemoteContext | None = None,
        start_ns: int = 0,
    ) -> Span | NonRecordingSpan:
        """Start a local root span: decide sampling, then record or not."""
        t0 = perf_counter_ns() if self.controller is not None else 0
        parent = remote.parent if remote is not None else None
        forced = remote is not None and remote.forced
        if parent is not None:
            trace_id = parent.trace_id
            flags = parent.trace_flags & FLAG_RANDOM
            trace_state = parent.trace_state
            parent_id = parent.span_id
        else:
            trace_id = getrandbits(128) or 1
            flags = FLAG_RANDOM
            trace_state = None
            parent_id = 0
        sampled = forced or (ratio_sampled(trace_id, self.threshold) and self.bucket.take())
        if sampled:
            flags |= FLAG_SAMPLED
        elif not recorded(trace_id, self.record_threshold):
            self.traces_unrecorded += 1
            nr = NonRecordingSpan(
                SpanContext(trace_id, getrandbits(64) or 1, flags, trace_state, False), remote
            )
            ctl = self.controller
            if t0 and ctl is not None and (self._time_all or timed(trace_id)):
                cost = (perf_counter_ns() - t0) * TIMED_FACTOR * self.cost_factor
                ctl.add_record_cost(int(cost))
            return nr
        seg = _Segment(self, trace_id, flags, trace_state, sampled, forced)
        attrs = dict(attributes) if attributes else {}
        if kind not in _REQUEST_KINDS:
            _request_attributes(attrs)  # servers add them in Span.__init__
        if remote is not None and remote.osprofiler_base_id is not None:
            attrs[ATTR_OSPROFILER_BASE_ID] = remote.osprofiler_base_id
            if remote.osprofiler_parent_id is not None:
                attrs[ATTR_OSPROFILER_PARENT_ID] = remote.osprofiler_parent_id
            if remote.osprofiler_key is not None:
                seg.osprofiler = (remote.osprofiler_base_id, remote.osprofiler_key)
        root = Span(name, kind, attrs, seg, parent_id, parent is not None, start_ns)
        if seg.timed:
            seg.cost_ns += perf_counter_ns() - t0
        return root

    def _finish(self, seg: _Segment, root: Span) -> None:
        """The local root ended: keep (redact, queue) or drop the segment."""
        t0 = perf_counter_ns() if seg.timed else 0
        seg.closed = True
        keep = seg.sampled or seg.failed or (root.end_ns - root.start_ns) >= self.slow_ns > 0
        if keep:
            seg.kept = True
            self.segments_kept += 1
            sink = self.sink
            if sink is not None:
                try:
                    redact = self.redactor.redact_attributes
                    for s in seg.spans:
                        redact(s.attributes)
                        if s.events:
                            for ev in s.events:
                                redact(ev[2])
                    sink.export_spans(seg.spans)
                except Exception:
                    log.debug("export of a segment failed", exc_info=True)
        else:
            self.segments_dropped += 1
        seg.spans = []
        ctl = self.controller
        if ctl is not None:
            if t0:
                cost = (seg.cost_ns + perf_counter_ns() - t0) * TIMED_FACTOR * self.cost_factor
                ctl.add_record_cost(int(cost))
            if monotonic_ns() >= ctl.next_tick_ns:
                self._tick()

    def _tick(self) -> None:
        ctl = self.controller
        if ctl is None:
            return
        try:
            sink = self.sink
            if sink is not None:
                ctl.set_export_cpu(sink.cpu_ns())
            if ctl.tick():
                self._apply_knobs()
        except Exception:
            log.debug("overhead controller tick failed", exc_info=True)

    def _export_late(self, span: Span) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            self.redactor.redact_attributes(span.attributes)
            sink.export_spans([span])
        except Exception:
            log.debug("export of a late span failed", exc_info=True)


class _RootStarter:
    """What :func:`span` returns when no span is current: starts a local root
    on ``__enter__`` (so it also works as a decorator applied at import time)."""

    __slots__ = ("_span", "_token", "attributes", "kind", "name")

    def __init__(self, name: str, kind: int, attributes: Mapping[str, Any] | None) -> None:
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self._span: Span | NonRecordingSpan | None = None
        self._token: contextvars.Token[Span | NonRecordingSpan | None] | None = None

    def __enter__(self) -> Span | NonRecordingSpan:
        tracer = _tracer
        if tracer is None:
            return INVALID_SPAN
        try:
            s = tracer.start_root(self.name, self.kind, self.attributes)
        except Exception:
            log.debug("span start failed", exc_info=True)
            return INVALID_SPAN
        self._span = s
        if s._recording:
            return s.__enter__()
        self._token = _current.set(s)
        return s

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: Any) -> None:
        s = self._span
        if s is None:
            return
        self._span = None
        if s._recording:
            s.__exit__(et, ev, tb)
            return
        token = self._token
        self._token = None
        if token is not None:
            try:
                _current.reset(token)
            except ValueError:
                pass
        tracer = _tracer
        ctl = tracer.controller if tracer is not None else None
        if ctl is not None and monotonic_ns() >= ctl.next_tick_ns:
            tracer._tick()  # type: ignore[union-attr]

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        return _decorate(fn, self.name, self.kind, self.attributes)


def span(
    name: str,
    kind: int = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Any:
    """A span for a ``with`` block, or a decorator for a sync/async function.

    ``with span(...) as s`` binds the started span (a :class:`Span`, or a
    :class:`NonRecordingSpan` when the trace is not recorded). The block's
    exception, if any, is recorded and sets error status, then propagates.
    """
    cur = _get_current_span()
    if cur is None:
        return _RootStarter(name, kind, attributes)
    if not cur._recording:
        return cur
    seg: _Segment = cur.segment  # type: ignore[union-attr]
    try:
        if seg.timed:
            t0 = perf_counter_ns()
            child = Span(name, kind, attributes, seg, cur.span_id)
            seg.cost_ns += perf_counter_ns() - t0
            return child
        return Span(name, kind, attributes, seg, cur.span_id)
    except Exception:
        log.debug("span start failed", exc_info=True)
        return cur


def start_span(
    name: str,
    kind: int = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: Span | NonRecordingSpan | RemoteContext | None = None,
    start_ns: int = 0,
) -> Span | NonRecordingSpan:
    """Start a span without making it current (see :func:`activate`).

    *parent* defaults to the current span; a :class:`RemoteContext` (from
    :func:`extract_context`) starts a local root continuing that trace.
    The caller must :meth:`~Span.end` it.
    """
    tracer = _tracer
    if tracer is None:
        return INVALID_SPAN
    try:
        if parent is None:
            parent = _get_current_span()
        if isinstance(parent, RemoteContext):
            return tracer.start_root(name, kind, attributes, parent, start_ns)
        if parent is None or parent is INVALID_SPAN:
            return tracer.start_root(name, kind, attributes, None, start_ns)
        if isinstance(parent, NonRecordingSpan):
            return parent
        return Span(name, kind, attributes, parent.segment, parent.span_id, False, start_ns)
    except Exception:
        log.debug("span start failed", exc_info=True)
        return INVALID_SPAN


def current_span() -> Span | NonRecordingSpan:
    """The current span, or :data:`INVALID_SPAN` when there is none."""
    cur = _get_current_span()
    return INVALID_SPAN if cur is None else cur


def activate(s: Span | NonRecordingSpan) -> contextvars.Token[Span | NonRecordingSpan | None]:
    """Make *s* the current span; pass the token to :func:`deactivate`."""
    return _current.set(s)


def deactivate(token: contextvars.Token[Span | NonRecordingSpan | None]) -> None:
    """Restore the span that was current before :func:`activate`."""
    try:
        _current.reset(token)
    except ValueError:
        log.debug("span token reset in another context")


@contextlib.contextmanager
def use_span(
    s: Span | NonRecordingSpan, end_on_exit: bool = True
) -> Iterator[Span | NonRecordingSpan]:
    """Make *s* current inside a ``with`` block; record an escaping exception."""
    token = _current.set(s)
    try:
        yield s
    except Exception as exc:
        s.record_exception(exc, {"exception.escaped": True})
        s.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        try:
            _current.reset(token)
        except ValueError:
            pass
        if end_on_exit:
            s.end()


def get_tracer() -> Tracer | None:
    """The configured tracer, or ``None``."""
    return _tracer


def _set_tracer(tracer: Tracer | None) -> None:
    """Install *tracer* process-wide (used by :mod:`crosstrace.config`)."""
    global _tracer
    _tracer = tracer


# -- propagation hooks ----------------------------------------------------------

Getter = Callable[[str], "str | None"]


def _mapping_getter(carrier: Mapping[str, Any]) -> Getter:
    lowered: dict[str, Any] | None = None

    def get(name: str) -> str | None:
        nonlocal lowered
        value = carrier.get(name)
        if value is None:
            if lowered is None:
                lowered = {str(k).lower(): v for k, v in carrier.items()}
            value = lowered.get(name.lower())
        if isinstance(value, bytes):
            try:
                value = value.decode("latin-1")
            except UnicodeDecodeError:
                return None
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        return value if isinstance(value, str) else None

    return get


def extract_context(carrier: Mapping[str, Any] | Getter) -> RemoteContext:
    """Read the trace headers from an incoming *carrier*.

    *carrier* is a mapping of header names (any case) or a function returning
    a header's value by name. Untrusted input: a malformed ``traceparent``
    gives ``parent=None`` (the trace restarts), a malformed ``tracestate`` is
    dropped, and only a valid signed trigger or OSProfiler pair sets
    ``forced``. A verified OSProfiler ``base_id`` becomes the trace id when
    there is no valid ``traceparent``.
    """
    get = carrier if callable(carrier) else _mapping_getter(carrier)
    tracer = _tracer
    try:
        parsed = parse_traceparent(get(TRACEPARENT_HEADER))
        parent: SpanContext | None = None
        if parsed is not None:
            state = parse_tracestate(get(TRACESTATE_HEADER))
            parent = SpanContext(parsed[0], parsed[1], parsed[2], state, True)
        if tracer is None:
            return RemoteContext(parent)
        forced = False
        if tracer.trigger_keys and parent is not None:
            trig = get(TRIGGER_HEADER)
            if trig is not None:
                forced = verify_trigger(trig, parent.trace_id, tracer.trigger_keys)
        if tracer.osprofiler_keys:
            info = get(OSPROFILER_INFO_HEADER)
            if info is not None:
                mac = get(OSPROFILER_HMAC_HEADER)
                osp = verify_osprofiler(info, mac, tracer.osprofiler_keys)
                if osp is not None:
                    key = _osprofiler_key(info, mac, tracer.osprofiler_keys)
                    if parent is None:
                        parent = SpanContext(osp.trace_id, 0, 0, None, True)
                    return RemoteContext(parent, True, osp.base_id, osp.parent_id, key)
        return RemoteContext(parent, forced)
    except Exception:
        log.debug("trace context extraction failed", exc_info=True)
        return RemoteContext()


def _osprofiler_key(info: str, mac: str | None, keys: Sequence[str]) -> str | None:
    for key in keys:
        if verify_osprofiler(info, mac, (key,)) is not None:
            return key
    return None


def start_server_span(
    name: str,
    carrier: Mapping[str, Any] | Getter | None = None,
    kind: int = SpanKind.SERVER,
    attributes: Mapping[str, Any] | None = None,
    start_ns: int = 0,
) -> Span | NonRecordingSpan:
    """Start the local root span of an incoming request or message.

    Reads the trace headers from *carrier* (see :func:`extract_context`), adds
    the current RequestContext's ids as attributes, and returns the span
    without making it current: ``token = activate(s)`` ... ``s.end()``,
    ``deactivate(token)``. Mark 5xx responses with
    ``s.set_status(StatusCode.ERROR, ...)`` so the segment is kept.
    """
    if _tracer is None:
        return INVALID_SPAN
    remote = extract_context(carrier) if carrier is not None else RemoteContext()
    s = start_span(name, kind, attributes, remote, start_ns)
    return s


def inject_context(
    carrier: MutableMapping[str, str], s: Span | NonRecordingSpan | None = None
) -> None:
    """Write the trace headers of *s* (default: the current span) into *carrier*.

    Sets ``traceparent`` (sampled flag = this trace's head decision) and
    ``tracestate`` when there is one. When the trace was forced by a trigger
    this process can re-sign, a fresh trigger header goes along, so the next
    service records it too; a trace that arrived with OSProfiler headers sends
    OSProfiler headers onwards (same ``base_id``, this span as ``parent_id``).
    """
    if s is None:
        s = _get_current_span()
        if s is None:
            return
    try:
        if isinstance(s, NonRecordingSpan):
            ctx = s._context
            if not ctx.is_valid:
                return
            carrier[TRACEPARENT_HEADER] = format_traceparent(
                ctx.trace_id, ctx.span_id, ctx.trace_flags
            )
            if ctx.trace_state:
                carrier[TRACESTATE_HEADER] = ctx.trace_state.to_header()
            return
        seg = s.segment
        carrier[TRACEPARENT_HEADER] = format_traceparent(s.trace_id, s.span_id, seg.flags)
        if seg.trace_state:
            carrier[TRACESTATE_HEADER] = seg.trace_state.to_header()
        tracer = seg.tracer
        if seg.forced and tracer.trigger_keys:
            carrier[TRIGGER_HEADER] = make_trigger(tracer.trigger_keys[0], s.trace_id)
        if seg.osprofiler is not None:
            base_id, key = seg.osprofiler
            carrier.update(
                make_osprofiler_headers(base_id, str(uuid.UUID(int=s.span_id & _MASK64)), key)
            )
    except Exception:
        log.debug("trace context injection failed", exc_info=True)
