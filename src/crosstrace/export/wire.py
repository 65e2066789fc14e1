"""OTLP for spans, written directly: the export thread's hot path.

Building ``opentelemetry-proto`` messages and serializing them cost the
export thread 17-32 us of CPU per span (a span of three attributes,
``benchmarks/bench_encode.py``), more than recording the span did, and
``json.dumps`` of OTLP/JSON objects 13-26 us; the overhead budget pays that
for every span it exports. This module writes the same bytes field by
field, at 4-7 us and 5-9 us a span: :func:`spans_to_protobuf` those of
:func:`crosstrace.otlp.spans_to_request` serialized (the same fields in the
same order, the same proto3 rules: a singular field at its default value is
left out, a ``oneof`` member never is), :func:`spans_to_json_line` those of
:func:`crosstrace.otlp.spans_to_json` dumped compactly on one line. The
tests compare both with the library's bytes for spans of every shape.

Attribute values follow :mod:`crosstrace.otlp`: ``str``, ``bool``, ``int``
(outside int64 a string), ``float``, ``bytes``, sequences and mappings (to
:data:`~crosstrace.otlp.MAX_VALUE_LENGTH` characters and a depth of four);
``None`` is skipped and anything else becomes ``str(value)``. A string that
is not valid UTF-8 (a lone surrogate) has the offending characters replaced
by ``?`` rather than failing its whole batch.

A span's attributes mostly repeat across spans (``db.system``, a method, a
status code): the encoded pair of a ``bool``, an ``int`` or a short ``str``
is kept in a bounded cache (keyed by the field it is written as), emptied
when it fills.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from crosstrace.otlp import (
    FLAG_HAS_REMOTE,
    FLAG_IS_REMOTE,
    INT64_MAX,
    INT64_MIN,
    MAX_DEPTH,
    MAX_VALUE_LENGTH,
    SCOPE_NAME,
    SCOPE_VERSION,
    group_by_resource,
)

if TYPE_CHECKING:
    from crosstrace.tracing.model import SpanData

__all__ = ["CACHE_SIZE", "CACHE_VALUE_LENGTH", "spans_to_json_line", "spans_to_protobuf"]

#: Encoded attribute pairs kept (emptied when full).
CACHE_SIZE = 4096

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
_BYTE = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    """A non-negative integer as a protobuf varint (a negative int64 as its
    unsigned 64-bit two's complement, ten bytes)."""
    if n < 0:
        n += 1 << 64
    elif n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag, the length, the body."""
    n = len(body)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + body


def _utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace")


# Tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length, 5 fixed32).
# AnyValue
_ANY_STRING, _ANY_BOOL, _ANY_INT, _ANY_DOUBLE = b"\x0a", b"\x10", b"\x18", b"\x21"
_ANY_ARRAY, _ANY_KVLIST, _ANY_BYTES = b"\x2a", b"\x32", b"\x3a"
# KeyValue, ArrayValue, KeyValueList
_KV_KEY, _KV_VALUE, _VALUES = b"\x0a", b"\x12", b"\x0a"
# Span
_TRACE_ID, _SPAN_ID, _TRACE_STATE, _PARENT_ID, _NAME = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x2a"
_KIND, _START, _END, _ATTRIBUTES, _DROPPED_ATTRS = b"\x30", b"\x39", b"\x41", b"\x4a", b"\x50"
_EVENTS, _DROPPED_EVENTS, _LINKS, _STATUS, _FLAGS = b"\x5a", b"\x60", b"\x6a", b"\x7a", b"\x85\x01"
# Span.Event
_EVENT_TIME, _EVENT_NAME, _EVENT_ATTRS = b"\x09", b"\x12", b"\x1a"
# Span.Link
_LINK_TRACE_ID, _LINK_SPAN_ID, _LINK_STATE, _LINK_ATTRS, _LINK_FLAGS = (
    b"\x0a",
    b"\x12",
    b"\x1a",
    b"\x22",
    b"\x35",
)
# Status
_STATUS_MESSAGE, _STATUS_CODE = b"\x12", b"\x18"
# ExportTraceServiceRequest, ResourceSpans, Resource, ScopeSpans
_RESOURCE_SPANS, _RESOURCE, _SCOPE_SPANS, _RESOURCE_ATTRS = b"\x0a", b"\x0a", b"\x12", b"\x0a"
_SCOPE, _SPANS = b"\x0a", b"\x12"
_SCOPE_BYTES = _len(_SCOPE, _len(b"\x0a", _utf8(SCOPE_NAME)) + _len(b"\x12", _utf8(SCOPE_VERSION)))

#: Longest string value whose encoded pair is cached (characters).
CACHE_VALUE_LENGTH = 256

_cache: dict[tuple[bytes, Any, type, Any], bytes] = {}


def _any(value: Any, depth: int) -> bytes | None:
    """The body of an ``AnyValue`` for *value* (``None``: left out)."""
    t = type(value)
    if t is str:
        return _len(_ANY_STRING, _utf8(value[:MAX_VALUE_LENGTH]))
    if t is bool:
        return _ANY_BOOL + (b"\x01" if value else b"\x00")
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
            return _ANY_INT + _varint(value)
        return _len(_ANY_STRING, str(value).encode())
    if t is float:
        return _ANY_DOUBLE + _double(value)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return _len(_ANY_BYTES, bytes(value[:MAX_VALUE_LENGTH]))
    if depth < MAX_DEPTH:
        if isinstance(value, Mapping):
            return _len(_ANY_KVLIST, _attributes(_VALUES, value, depth + 1))
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [_any(x, depth + 1) for x in value]
            body = b"".join(_len(_VALUES, v) for v in items if v is not None)
            return _len(_ANY_ARRAY, body)
    try:
        text = str(value)[:MAX_VALUE_LENGTH]
    except Exception:
        text = "<unprintable>"
    return _len(_ANY_STRING, _utf8(text))


def _pair(key: Any, value: Any, depth: int) -> bytes | None:
    """A ``KeyValue``'s body (``None`` for a ``None`` value)."""
    v = _any(value, depth)
    if v is None:
        return None
    k = str(key)
    return (_len(_KV_KEY, _utf8(k)) if k else b"") + _len(_KV_VALUE, v)


def _attributes(tag: bytes, attributes: Mapping[str, Any], depth: int = 0) -> bytes:
    """Each attribute as a ``KeyValue`` field with *tag*."""
    out = []
    cache = _cache
    for key, value in attributes.items():
        t = type(value)
        if depth == 0 and (
            t is int or t is bool or (t is str and len(value) <= CACHE_VALUE_LENGTH)
        ):
            ck = (tag, key, t, value)
            field = cache.get(ck)
            if field is None:
                body = _pair(key, value, 0)
                field = _len(tag, body) if body is not None else b""
                if len(cache) >= CACHE_SIZE:
                    cache.clear()
                cache[ck] = field
            out.append(field)
            continue
        body = _pair(key, value, depth)
        if body is not None:
            out.append(_len(tag, body))
    return b"".join(out)


def _span(s: SpanData) -> bytes:
    seg = s.segment
    flags = (seg.flags & 0xFF) | FLAG_HAS_REMOTE
    if s.parent_remote:
        flags |= FLAG_IS_REMOTE
    parts = [
        b"\x0a\x10",  # trace_id, 16 bytes
        s.trace_id.to_bytes(16, "big"),
        b"\x12\x08",  # span_id, 8 bytes
        s.span_id.to_bytes(8, "big"),
    ]
    if seg.trace_state:
        parts.append(_len(_TRACE_STATE, _utf8(seg.trace_state.to_header())))
    if s.parent_id:
        parts.append(b"\x22\x08")  # parent_span_id, 8 bytes
        parts.append(s.parent_id.to_bytes(8, "big"))
    if s.name:
        parts.append(_len(_NAME, _utf8(s.name)))
    kind = int(s.kind)
    if kind:
        parts.append(_KIND + _varint(kind))
    if s.start_ns:
        parts.append(_START + _fixed64(s.start_ns))
    if s.end_ns:
        parts.append(_END + _fixed64(s.end_ns))
    parts.append(_attributes(_ATTRIBUTES, s.attributes))
    if s.dropped_attributes:
        parts.append(_DROPPED_ATTRS + _varint(s.dropped_attributes))
    if s.events:
        for name, ts, attrs in s.events:
            body = (
                (_EVENT_TIME + _fixed64(ts) if ts else b"")
                + (_len(_EVENT_NAME, _utf8(name)) if name else b"")
                + _attributes(_EVENT_ATTRS, attrs)
            )
            parts.append(_len(_EVENTS, body))
    if s.dropped_events:
        parts.append(_DROPPED_EVENTS + _varint(s.dropped_events))
    if s.links:
        for ctx, attrs in s.links:
            state = ctx.trace_state.to_header() if ctx.trace_state else ""
            link_flags = (
                (ctx.trace_flags & 0xFF)
                | FLAG_HAS_REMOTE
                | (FLAG_IS_REMOTE if ctx.is_remote else 0)
            )
            body = (
                b"\x0a\x10"
                + ctx.trace_id.to_bytes(16, "big")
                + b"\x12\x08"
                + ctx.span_id.to_bytes(8, "big")
                + (_len(_LINK_STATE, _utf8(state)) if state else b"")
                + _attributes(_LINK_ATTRS, attrs)
                + _LINK_FLAGS
                + _fixed32(link_flags)
            )
            parts.append(_len(_LINKS, body))
    if s.status_code:
        message = s.status_message or ""
        body = (_len(_STATUS_MESSAGE, _utf8(message)) if message else b"") + (
            _STATUS_CODE + _varint(int(s.status_code))
        )
        parts.append(_len(_STATUS, body))
    parts.append(_FLAGS + _fixed32(flags))
    return b"".join(parts)


def spans_to_protobuf(spans: Sequence[SpanData]) -> bytes:
    """A serialized ``ExportTraceServiceRequest`` for *spans*, grouped by
    their resource: the bytes ``spans_to_request(spans).SerializeToString()``
    gives, written directly."""
    out = []
    for resource, group in group_by_resource(spans, lambda s: s.segment.resource):
        scope_spans = _SCOPE_BYTES + b"".join(_len(_SPANS, _span(s)) for s in group)
        body = _len(_RESOURCE, _attributes(_RESOURCE_ATTRS, resource)) + _len(
            _SCOPE_SPANS, scope_spans
        )
        out.append(_len(_RESOURCE_SPANS, body))
    return b"".join(out)


# -- OTLP/JSON --------------------------------------------------------------------------


def _json_any(value: Any, depth: int) -> str | None:
    """An ``AnyValue`` as OTLP/JSON text (``None``: left out)."""
    t = type(value)
    if t is str:
        return '{"stringValue":' + encode_basestring(value[:MAX_VALUE_LENGTH]) + "}"
    if t is bool:
        return '{"boolValue":true}' if value else '{"boolValue":false}'
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
            return '{"intValue":"' + str(value) + '"}'
        return '{"stringValue":"' + str(value) + '"}'
    if t is float:
        if not math.isfinite(value):
            return '{"stringValue":"' + str(value) + '"}'  # JSON has no NaN/Infinity
        return '{"doubleValue":' + repr(value) + "}"
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        data = base64.b64encode(bytes(value[:MAX_VALUE_LENGTH])).decode("ascii")
        return '{"bytesValue":"' + data + '"}'
    if depth < MAX_DEPTH:
        if isinstance(value, Mapping):
            return '{"kvlistValue":{"values":[' + _json_attrs(value, depth + 1) + "]}}"
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [_json_any(x, depth + 1) for x in value]
            return '{"arrayValue":{"values":[' + ",".join(v for v in items if v) + "]}}"
    try:
        text = str(value)[:MAX_VALUE_LENGTH]
    except Exception:
        text = "<unprintable>"
    return '{"stringValue":' + encode_basestring(text) + "}"


_json_cache: dict[tuple[Any, type, Any], str] = {}


def _json_attrs(attributes: Mapping[str, Any], depth: int = 0) -> str:
    """The attributes as the members of an OTLP/JSON ``KeyValue`` array."""
    out = []
    cache = _json_cache
    for key, value in attributes.items():
        t = type(value)
        cached = depth == 0 and (
            t is int or t is bool or (t is str and len(value) <= CACHE_VALUE_LENGTH)
        )
        if cached:
            text = cache.get((key, t, value))
            if text is not None:
                out.append(text)
                continue
        v = _json_any(value, depth)
        if v is None:
            continue
        text = '{"key":' + encode_basestring(str(key)) + ',"value":' + v + "}"
        if cached:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[(key, t, value)] = text
        out.append(text)
    return ",".join(out)


_JSON_SCOPE = (
    '"scope":{"name":'
    + encode_basestring(SCOPE_NAME)
    + ',"version":'
    + encode_basestring(SCOPE_VERSION)
    + "}"
)


def _json_span(s: SpanData) -> str:
    seg = s.segment
    flags = (seg.flags & 0xFF) | FLAG_HAS_REMOTE | (FLAG_IS_REMOTE if s.parent_remote else 0)
    parts = [
        f'{{"traceId":"{s.trace_id:032x}","spanId":"{s.span_id:016x}","flags":{flags},'
        f'"name":{encode_basestring(s.name)},"kind":{int(s.kind)},'
        f'"startTimeUnixNano":"{s.start_ns}","endTimeUnixNano":"{s.end_ns}",'
        f'"attributes":[{_json_attrs(s.attributes)}]'
    ]
    if s.parent_id:
        parts.append(f',"parentSpanId":"{s.parent_id:016x}"')
    if seg.trace_state:
        parts.append(',"traceState":' + encode_basestring(seg.trace_state.to_header()))
    if s.dropped_attributes:
        parts.append(f',"droppedAttributesCount":{s.dropped_attributes}')
    if s.events:
        events = ",".join(
            f'{{"name":{encode_basestring(n)},"timeUnixNano":"{ts}",'
            f'"attributes":[{_json_attrs(a)}]}}'
            for n, ts, a in s.events
        )
        parts.append(',"events":[' + events + "]")
    if s.dropped_events:
        parts.append(f',"droppedEventsCount":{s.dropped_events}')
    if s.links:
        links = ",".join(
            f'{{"traceId":"{ctx.trace_id:032x}","spanId":"{ctx.span_id:016x}",'
            f'"attributes":[{_json_attrs(a)}]}}'
            for ctx, a in s.links
        )
        parts.append(',"links":[' + links + "]")
    if s.status_code:
        message = s.status_message
        tail = ',"message":' + encode_basestring(message) if message else ""
        parts.append(f',"status":{{"code":{int(s.status_code)}{tail}}}')
    parts.append("}")
    return "".join(parts)


def spans_to_json_line(spans: Sequence[SpanData]) -> bytes:
    """An OTLP/JSON ``ExportTraceServiceRequest`` for *spans* on one line,
    UTF-8: the bytes of :func:`crosstrace.otlp.spans_to_json` dumped
    compactly (``ensure_ascii=False``) with a newline, written directly."""
    groups = [
        '{"resource":{"attributes":['
        + _json_attrs(resource)
        + "]},"
        + '"scopeSpans":[{'
        + _JSON_SCOPE
        + ',"spans":['
        + ",".join(_json_span(s) for s in group)
        + "]}]}"
        for resource, group in group_by_resource(spans, lambda s: s.segment.resource)
    ]
    return _utf8('{"resourceSpans":[' + ",".join(groups) + "]}\n")
