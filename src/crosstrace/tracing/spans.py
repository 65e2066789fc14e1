"""The span model: identities, recording and non-recording spans, the current span.

A :class:`Span` is a plain ``__slots__`` object with integer ids (hex appears
only at the edge, in :mod:`crosstrace.tracecontext` and :mod:`crosstrace.otlp`);
the spans of one trace recorded in this process belong to one *segment*, which
knows its owner (a :class:`SegmentOwner`: the tracer, with its resource, keep
rule and sink). A
:class:`NonRecordingSpan` carries only the ids of a trace that is not recorded,
so that the trace still propagates.

The current span lives in its own :class:`contextvars.ContextVar`, beside the
request context (:func:`current_span`, :func:`activate`, :func:`deactivate`,
:func:`use_span`); :func:`crosstrace.context.wrap` carries both to other threads.
Spans are started by :mod:`crosstrace.tracing.tracer`; this module does not
import it (the tracer registers its span opener for :func:`decorate`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterator, Mapping
from random import getrandbits
from time import time_ns
from typing import Any, ParamSpec, Protocol, TypeVar

from crosstrace.context import RequestContext, get_current
from crosstrace.tracecontext import TraceState
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
    StatusCode,
)

__all__ = [
    "INVALID_SPAN",
    "MAX_ATTRIBUTES",
    "NonRecordingSpan",
    "SegmentOwner",
    "Span",
    "activate",
    "current_span",
    "deactivate",
    "decorate",
    "get_current_span",
    "in_untraced_request",
    "record_failure",
    "reset_current_span",
    "set_current_span",
    "set_span_opener",
    "use_span",
]

log = logging.getLogger("crosstrace.tracer")

P = ParamSpec("P")
R = TypeVar("R")

#: Per-span limits; what goes over is counted in ``dropped_*``.
MAX_ATTRIBUTES = 128
MAX_EVENTS = 128
#: Longest ``exception.stacktrace`` kept (characters, the end is kept).
MAX_STACKTRACE = 16384

_MASK64 = (1 << 64) - 1


_INTERNAL = 1
_SERVER = 2
_CONSUMER = 5
_ERROR = 2
# Kinds whose spans get the request context's ids in Span.__init__.
_REQUEST_KINDS = frozenset({_SERVER, _CONSUMER})


class SegmentOwner(Protocol):
    """What a segment needs from the tracer that recorded it."""

    @property
    def resource(self) -> dict[str, Any]:
        """The service's resource (``service.name`` ...)."""

    def _finish(self, seg: _Segment, root: Span) -> None:
        """The local root *root* of *seg* ended: keep or drop the segment."""

    def _export_late(self, span: Span) -> None:
        """*span* ended after its kept segment was settled: export it alone."""

    @property
    def trigger_keys(self) -> tuple[str, ...]:
        """Keys this tracer signs triggers with (the first signs onwards)."""


class _Segment:
    """The spans of one trace recorded in this process."""

    __slots__ = (
        "closed",
        "failed",
        "flags",
        "forced",
        "kept",
        "osprofiler",
        "resource",
        "sampled",
        "spans",
        "trace_id",
        "trace_state",
        "tracer",
    )

    def __init__(
        self,
        tracer: SegmentOwner,
        trace_id: int,
        flags: int,
        trace_state: TraceState | None,
        sampled: bool,
        forced: bool,
    ) -> None:
        self.tracer = tracer
        self.resource = tracer.resource
        self.trace_id = trace_id
        self.flags = flags
        self.trace_state = trace_state
        self.sampled = sampled
        self.forced = forced
        self.failed = False
        self.closed = False
        self.kept = False
        self.spans: list[Span] = []
        self.osprofiler: tuple[str, str] | None = None


def _request_attributes(attributes: dict[str, Any], rc: RequestContext | None = None) -> None:
    if rc is None:
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
    if rc.project_domain_id is not None:
        attributes[ATTR_PROJECT_DOMAIN_ID] = rc.project_domain_id
    if rc.user_id is not None:
        attributes[ATTR_USER_ID] = rc.user_id


def _exception_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


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

    def _failed(self, exc: BaseException) -> None:
        """*exc* escaped this span (see :func:`record_failure`): nothing to do."""

    def __enter__(self) -> NonRecordingSpan:
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        return None

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn*; the span takes the function's qualified name.

        (Only reached when ``span(...)`` is used as a decorator inside an
        unrecorded trace; at import time the name given is used.)
        """
        return decorate(fn, None, _INTERNAL, None)

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

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate *fn*: each call runs in a new span with this name and kind."""
        return decorate(fn, self.name, self.kind, None)

    def __repr__(self) -> str:
        return f"Span({self.name!r}, trace_id={self.trace_id:032x}, span_id={self.span_id:016x})"


_current: contextvars.ContextVar[Span | NonRecordingSpan | None] = contextvars.ContextVar(
    "crosstrace_span", default=None
)
_get_current_span = _current.get


def current_span() -> Span | NonRecordingSpan:
    """The current span, or :data:`INVALID_SPAN` when there is none."""
    cur = _get_current_span()
    return INVALID_SPAN if cur is None else cur


#: The current span's variable, read, set and reset directly (no checks) by
#: entry points on their hot path; everyone else uses :func:`current_span`,
#: :func:`activate` and :func:`deactivate`.
get_current_span = _current.get
set_current_span = _current.set
reset_current_span = _current.reset


def in_untraced_request() -> bool:
    """Whether the current request runs with tracing off (its context is
    marked :attr:`~crosstrace.context.RequestContext.untraced`): a span opened
    there with no current span does nothing, as with no tracer at all."""
    rc = get_current()
    return rc is not None and rc.untraced


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


def record_failure(s: Span | NonRecordingSpan, exc: BaseException) -> None:
    """Record *exc* escaping *s* (an ``exception`` event) and set error status."""
    if not isinstance(s, Span):
        s._failed(exc)
        return
    try:
        s.record_exception(exc, {"exception.escaped": True})
        try:
            message = f"{type(exc).__name__}: {exc}"
        except Exception:
            message = type(exc).__name__
        s.set_status(StatusCode.ERROR, message)
    except Exception:  # tracing must never break the service
        log.debug("recording an exception failed", exc_info=True)


# -- decorating functions --------------------------------------------------------------

#: Opens a span for a ``with`` block: ``opener(name, kind, attributes, tracer)``.
SpanOpener = Callable[[str, int, "Mapping[str, Any] | None", Any], Any]
_opener: SpanOpener | None = None


def set_span_opener(opener: SpanOpener) -> None:
    """Register the function :func:`decorate` opens spans with (the tracer's
    :func:`~crosstrace.tracing.tracer.span`; registered when it is imported)."""
    global _opener
    _opener = opener


def decorate(
    fn: Callable[P, R],
    name: str | None,
    kind: int,
    attributes: Mapping[str, Any] | None,
    tracer: Any = None,
) -> Callable[P, R]:
    """Wrap *fn* so each call runs in a new span (sync or async).

    The span is opened by the registered opener (the tracer's ``span``); with
    none registered, the call runs untraced.
    """
    span_name = name or getattr(fn, "__qualname__", None) or repr(fn)
    attrs = dict(attributes) if attributes else None
    if inspect.iscoroutinefunction(fn):
        afn: Callable[P, Awaitable[Any]] = fn

        @functools.wraps(fn)
        async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            opener = _opener
            if opener is None:
                return await afn(*args, **kwargs)
            with opener(span_name, kind, attrs, tracer):
                return await afn(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        opener = _opener
        if opener is None:
            return fn(*args, **kwargs)
        with opener(span_name, kind, attrs, tracer):
            return fn(*args, **kwargs)

    return wrapper
