"""Carry the request context and the trace context across process boundaries.

This module is the one place where the wire fields are written and read:

* :func:`inject` writes the current request context *and* the current span's
  trace headers into a message carrier (RPC message headers);
  :func:`extract` rebuilds the receiver's request context from one and
  :func:`extract_context` its trace context (a :class:`RemoteContext`).
* :func:`inject_headers` does the same for outbound HTTP headers
  (``X-OpenStack-Request-ID``, ``traceparent``, ``tracestate``).
* :func:`inject_context` writes only the trace headers of a span
  (``traceparent``/``tracestate``, and a re-signed trigger or OSProfiler headers
  when the trace was forced by one); :func:`start_server_span` starts the local
  root span of an incoming request or message from a carrier.

Inbound values are untrusted: an invalid request id is dropped, counted (see
:func:`stats`) and logged at debug level without its value; a malformed
``traceparent`` restarts the trace, a malformed ``tracestate`` is dropped, and
only a valid signed trigger or OSProfiler pair forces recording.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from crosstrace.context import RequestContext, get_current
from crosstrace.headers import CONTEXT_KEY, HEADER_REQUEST_ID, HEADER_REQUEST_ID_LOWER
from crosstrace.ids import generate_request_id, is_valid_request_id
from crosstrace.tracecontext import (
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    format_traceparent,
    parse_traceparent,
    parse_tracestate,
)
from crosstrace.tracing import (
    INVALID_SPAN,
    NonRecordingSpan,
    RemoteContext,
    Span,
    SpanContext,
    SpanKind,
    Tracer,
)
from crosstrace.tracing import tracer as _tracer_mod
from crosstrace.tracing.spans import _get_current_span
from crosstrace.trust import (
    OSPROFILER_HMAC_HEADER,
    OSPROFILER_INFO_HEADER,
    TRIGGER_HEADER,
    make_osprofiler_headers,
    make_trigger,
    verify_osprofiler,
    verify_trigger,
)

__all__ = [
    "CONTEXT_KEY",
    "HEADER_REQUEST_ID",
    "HEADER_REQUEST_ID_LOWER",
    "Getter",
    "extract",
    "extract_context",
    "inject",
    "inject_context",
    "inject_headers",
    "record_invalid",
    "start_server_span",
    "stats",
    "valid_inbound_id",
]

log = logging.getLogger(__name__)


#: Counter names reported by :func:`stats`.
STAT_INVALID_HTTP = "invalid_http_request_id"
STAT_INVALID_MESSAGE = "invalid_message_request_id"


class _Counter:
    """An exact counter without a lock, and bounded in size.

    ``next()`` on an :func:`itertools.count` is a single C call, atomic under
    the GIL; its ``repr`` (``count(N)``) is the only way to read it without
    advancing it.
    """

    __slots__ = ("_count", "add")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.add = self._count.__next__

    def value(self) -> int:
        return int(repr(self._count)[6:-1])


class _Counters:
    __slots__ = ("_by_name",)

    def __init__(self) -> None:
        self._by_name = {STAT_INVALID_HTTP: _Counter(), STAT_INVALID_MESSAGE: _Counter()}

    def add(self, name: str) -> None:
        self._by_name[name].add()

    def snapshot(self) -> dict[str, int]:
        return {name: counter.value() for name, counter in self._by_name.items()}


_counters = _Counters()


def stats() -> dict[str, int]:
    """Counts of dropped inbound request ids since the process started.

    ``invalid_http_request_id``: ``X-OpenStack-Request-ID`` headers refused by the
    WSGI/ASGI middleware; ``invalid_message_request_id``: ids refused by
    :func:`extract`.
    """
    return _counters.snapshot()


def record_invalid(source: str, value: str | bytes, where: str = STAT_INVALID_HTTP) -> None:
    """Count one refused inbound id and log it at debug level, without its value.

    Only the length is logged: the value may carry log-injection payloads.
    """
    _counters.add(where)
    log.debug("dropped an invalid request id from %s (%d characters)", source, len(value))


def valid_inbound_id(value: Any, source: str, where: str = STAT_INVALID_HTTP) -> str | None:
    """*value* if it is a valid request id, else ``None`` (counted when present)."""
    if value is None:
        return None
    if type(value) is str and is_valid_request_id(value):
        return value
    if isinstance(value, (str, bytes)):
        record_invalid(source, value, where)
    else:
        _counters.add(where)
        log.debug("dropped a request id of type %s from %s", type(value).__name__, source)
    return None


def inject(carrier: MutableMapping[str, Any], context: RequestContext | None = None) -> None:
    """Write *context* (default: the current one) and the current span into *carrier*.

    Sets ``X-OpenStack-Request-ID`` to the context's :attr:`~RequestContext.global_id`
    and, under :data:`CONTEXT_KEY`, the context as a JSON-safe dict without
    ``None`` values (AMQP header tables and JSON both carry it); then the
    current span's trace headers (:func:`inject_context`). Writes nothing for
    what is absent.
    """
    ctx = context if context is not None else get_current()
    if ctx is not None:
        carrier[HEADER_REQUEST_ID] = ctx.global_id
        carrier[CONTEXT_KEY] = {k: v for k, v in ctx.to_dict().items() if v is not None}
    cur = _get_current_span()
    if cur is not None:
        inject_context(carrier, cur)


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Write the outbound HTTP headers for the current request and span.

    ``X-OpenStack-Request-ID: <global_id>`` unless *headers* already has it (any
    case: ``requests`` and ``httpx`` header maps are case-insensitive), and the
    current span's ``traceparent``/``tracestate`` (see :func:`inject_context`).
    """
    ctx = get_current()
    if ctx is not None and HEADER_REQUEST_ID not in headers:
        headers[HEADER_REQUEST_ID] = ctx.global_id
    cur = _get_current_span()
    if cur is not None:
        inject_context(headers, cur)


def _lookup(carrier: Mapping[str, Any], key: str) -> Any:
    value = carrier.get(key)
    if value is None:
        value = carrier.get(key.lower())
    return value


def extract(carrier: Mapping[str, Any] | None) -> RequestContext | None:
    """Build the receiver's context from a carrier written by :func:`inject`.

    The sender's global id (header, else the context dict) becomes the
    receiver's ``global_request_id`` when valid; the receiver gets a new local
    ``request_id``; identity fields come from the dict (sanitised by
    :meth:`RequestContext.from_dict`). Returns ``None`` when the carrier holds
    neither field.
    """
    if not carrier:
        return None
    try:
        header = _lookup(carrier, HEADER_REQUEST_ID)
        values = carrier.get(CONTEXT_KEY)
        if header is None and values is None:
            return None
        if not isinstance(values, Mapping):
            values = {}
        if header is None:
            header = values.get("global_request_id") or values.get("request_id")
        global_id = valid_inbound_id(header, "message headers", STAT_INVALID_MESSAGE)
        # Identity from the dict; its ids are the sender's, not ours.
        identity = {k: v for k, v in values.items() if k not in ("request_id", "global_request_id")}
        ctx = RequestContext.from_dict(identity)
    except Exception as exc:  # never raise into the consumer because a header was odd
        # The type only: the message could quote the untrusted value.
        log.debug("could not read the request context from a carrier: %s", type(exc).__name__)
        ctx = RequestContext()
        global_id = None
    ctx.request_id = generate_request_id()
    ctx.global_request_id = global_id
    return ctx


# -- trace context ----------------------------------------------------------------

#: Reads one header by name (``None`` when absent).
Getter = Callable[[str], "str | None"]
_MASK64 = (1 << 64) - 1


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


def extract_context(
    carrier: Mapping[str, Any] | Getter, tracer: Tracer | None = None
) -> RemoteContext:
    """Read the trace headers from an incoming *carrier*.

    *carrier* is a mapping of header names (any case) or a function returning
    a header's value by name. Untrusted input: a malformed ``traceparent``
    gives ``parent=None`` (the trace restarts), a malformed ``tracestate`` is
    dropped, and only a trigger or OSProfiler pair signed with one of
    *tracer*'s keys (default: the configured tracer's) sets ``forced``. A
    verified OSProfiler ``base_id`` becomes the trace id when there is no
    valid ``traceparent``.
    """
    get = carrier if callable(carrier) else _mapping_getter(carrier)
    t = tracer or _tracer_mod._tracer
    try:
        parsed = parse_traceparent(get(TRACEPARENT_HEADER))
        parent: SpanContext | None = None
        if parsed is not None:
            state = parse_tracestate(get(TRACESTATE_HEADER))
            parent = SpanContext(parsed[0], parsed[1], parsed[2], state, True)
        if t is None:
            return RemoteContext(parent)
        forced = False
        if t.trigger_keys and parent is not None:
            trig = get(TRIGGER_HEADER)
            if trig is not None:
                forced = verify_trigger(trig, parent.trace_id, t.trigger_keys)
        if t.osprofiler_keys:
            info = get(OSPROFILER_INFO_HEADER)
            if info is not None:
                mac = get(OSPROFILER_HMAC_HEADER)
                osp = verify_osprofiler(info, mac, t.osprofiler_keys)
                if osp is not None:
                    key = _osprofiler_key(info, mac, t.osprofiler_keys)
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
    tracer: Tracer | None = None,
) -> Span | NonRecordingSpan:
    """Start the local root span of an incoming request or message.

    Reads the trace headers from *carrier* (see :func:`extract_context`), adds
    the current RequestContext's ids as attributes, and returns the span
    without making it current: ``token = activate(s)`` ... ``s.end()``,
    ``deactivate(token)``. *tracer* is the service's tracer (default: the
    configured one; with neither, :data:`~crosstrace.tracing.spans.INVALID_SPAN`).
    Mark 5xx responses with ``s.set_status(StatusCode.ERROR, ...)`` so the
    segment is kept.
    """
    t = tracer or _tracer_mod._tracer
    if t is None:
        return INVALID_SPAN
    remote = extract_context(carrier, t) if carrier is not None else RemoteContext()
    try:
        return t.start_root(name, kind, attributes, remote, start_ns)
    except Exception:
        log.debug("span start failed", exc_info=True)
        return INVALID_SPAN


def inject_context(
    carrier: MutableMapping[str, Any], s: Span | NonRecordingSpan | None = None
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
            ctx = s.context
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
