"""Spans and log records as OTLP: ``opentelemetry-proto`` messages and OTLP JSON.

The span model maps 1:1 onto OTLP (DESIGN.md "Span model"): integer ids become
16/8 big-endian bytes (hex in JSON), kinds and status codes are OTLP's numbers,
events carry ``exception.*`` attributes, links keep their trace state, and the
resource holds ``service.name``, ``host.name`` and ``process.pid``.
``Span.flags`` carries the W3C trace flags in bits 0-7 and OTLP's "parent is
remote" bits (``0x100`` known, ``0x200`` remote).

Attribute values: ``str``, ``bool``, ``int`` (outside int64 they become
strings), ``float``, ``bytes``, sequences (arrays) and mappings (key-value
lists); ``None`` is skipped and anything else is sent as ``str(value)``.
Strings longer than :data:`MAX_VALUE_LENGTH` are cut.

JSON follows the OTLP/JSON rules: hex ids, 64-bit integers as decimal strings,
enums as integers, lowerCamelCase field names. This module is imported by the
export thread only; the request path never touches protobuf.

The exporter writes log records with these messages and objects. Spans, many
more of them, it writes directly (:mod:`crosstrace.export.wire`, at a fifth
to a third of the CPU): :func:`spans_to_request` and :func:`spans_to_json`
are the reference those bytes are checked against.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

if TYPE_CHECKING:
    from crosstrace.tracing.model import LogData, SpanData

__all__ = [
    "FLAG_HAS_REMOTE",
    "FLAG_IS_REMOTE",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "MAX_VALUE_LENGTH",
    "SCOPE_NAME",
    "SCOPE_VERSION",
    "group_by_resource",
    "logs_to_json",
    "logs_to_request",
    "spans_to_json",
    "spans_to_request",
]

#: The instrumentation scope every crosstrace span and log record carries.
SCOPE_NAME = "crosstrace"
SCOPE_VERSION = "0.1.0"
#: Longest string attribute value exported (characters).
MAX_VALUE_LENGTH = 8192
#: Deepest nesting of arrays / maps exported.
MAX_DEPTH = 4
#: The range of OTLP's ``int_value``; an integer outside it is sent as a string.
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
#: ``Span.flags`` bits: whether the parent is known to be remote, and is.
FLAG_HAS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200


# -- protobuf ---------------------------------------------------------------------


def _any_value(value: Any, depth: int = 0) -> AnyValue | None:
    t = type(value)
    if t is str:
        return AnyValue(string_value=value[:MAX_VALUE_LENGTH])
    if t is bool:
        return AnyValue(bool_value=value)
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))
    if t is float:
        return AnyValue(double_value=value)
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return AnyValue(bytes_value=bytes(value[:MAX_VALUE_LENGTH]))
    if depth < MAX_DEPTH:
        if isinstance(value, Mapping):
            return AnyValue(kvlist_value=KeyValueList(values=_key_values(value, depth + 1)))
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [v for v in (_any_value(x, depth + 1) for x in value) if v is not None]
            return AnyValue(array_value=ArrayValue(values=items))
    try:
        return AnyValue(string_value=str(value)[:MAX_VALUE_LENGTH])
    except Exception:
        return AnyValue(string_value="<unprintable>")


def _key_values(attributes: Mapping[str, Any], depth: int = 0) -> list[KeyValue]:
    out = []
    for key, value in attributes.items():
        v = _any_value(value, depth)
        if v is not None:
            out.append(KeyValue(key=str(key), value=v))
    return out


def _resource(attributes: Mapping[str, Any]) -> Resource:
    return Resource(attributes=_key_values(attributes))


_SCOPE = InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION)


def _pb_span(s: SpanData) -> PbSpan:
    seg = s.segment
    flags = (seg.flags & 0xFF) | FLAG_HAS_REMOTE
    if s.parent_remote:
        flags |= FLAG_IS_REMOTE
    pb = PbSpan(
        trace_id=s.trace_id.to_bytes(16, "big"),
        span_id=s.span_id.to_bytes(8, "big"),
        parent_span_id=s.parent_id.to_bytes(8, "big") if s.parent_id else b"",
        flags=flags,
        name=s.name,
        kind=int(s.kind),  # type: ignore[arg-type]
        start_time_unix_nano=s.start_ns,
        end_time_unix_nano=s.end_ns,
        attributes=_key_values(s.attributes),
        dropped_attributes_count=s.dropped_attributes,
        dropped_events_count=s.dropped_events,
    )
    if seg.trace_state:
        pb.trace_state = seg.trace_state.to_header()
    if s.events:
        for name, ts, attrs in s.events:
            pb.events.add(name=name, time_unix_nano=ts, attributes=_key_values(attrs))
    if s.links:
        for ctx, attrs in s.links:
            pb.links.add(
                trace_id=ctx.trace_id.to_bytes(16, "big"),
                span_id=ctx.span_id.to_bytes(8, "big"),
                trace_state=ctx.trace_state.to_header() if ctx.trace_state else "",
                attributes=_key_values(attrs),
                flags=(ctx.trace_flags & 0xFF)
                | FLAG_HAS_REMOTE
                | (FLAG_IS_REMOTE if ctx.is_remote else 0),
            )
    if s.status_code:
        pb.status.CopyFrom(
            Status(code=s.status_code, message=s.status_message or "")  # type: ignore[arg-type]
        )
    return pb


def group_by_resource(
    items: Iterable[Any], resource_of: Any
) -> list[tuple[Mapping[str, Any], list[Any]]]:
    """*items* grouped by the resource object *resource_of* gives each, in
    the order each resource first appears."""
    groups: dict[int, tuple[Mapping[str, Any], list[Any]]] = {}
    for item in items:
        res = resource_of(item)
        entry = groups.get(id(res))
        if entry is None:
            entry = groups[id(res)] = (res, [])
        entry[1].append(item)
    return list(groups.values())


def spans_to_request(spans: Sequence[SpanData]) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` for *spans* (grouped by their resource)."""
    req = ExportTraceServiceRequest()
    for resource, group in group_by_resource(spans, lambda s: s.segment.resource):
        req.resource_spans.append(
            ResourceSpans(
                resource=_resource(resource),
                scope_spans=[ScopeSpans(scope=_SCOPE, spans=[_pb_span(s) for s in group])],
            )
        )
    return req


def _pb_log(rec: LogData) -> LogRecord:
    pb = LogRecord(
        time_unix_nano=rec.time_ns,
        observed_time_unix_nano=rec.observed_ns or rec.time_ns,
        severity_number=rec.severity_number,  # type: ignore[arg-type]
        severity_text=rec.severity_text,
        attributes=_key_values(rec.attributes),
        flags=rec.trace_flags & 0xFF,
    )
    body = _any_value(rec.body)
    if body is not None:
        pb.body.CopyFrom(body)
    if rec.trace_id:
        pb.trace_id = rec.trace_id.to_bytes(16, "big")
    if rec.span_id:
        pb.span_id = rec.span_id.to_bytes(8, "big")
    return pb


def _log_groups(
    records: Sequence[LogData], resource: Mapping[str, Any]
) -> list[tuple[Mapping[str, Any], list[tuple[str | None, list[LogData]]]]]:
    """Records grouped by resource (theirs, else *resource*), then by scope."""
    out = []
    for res, group in group_by_resource(records, lambda r: r.resource or resource):
        scopes: dict[str | None, list[LogData]] = {}
        for r in group:
            scopes.setdefault(r.scope, []).append(r)
        out.append((res, list(scopes.items())))
    return out


def _pb_scope(name: str | None) -> InstrumentationScope:
    return _SCOPE if name is None else InstrumentationScope(name=name[:MAX_VALUE_LENGTH])


def logs_to_request(
    records: Sequence[LogData], resource: Mapping[str, Any]
) -> ExportLogsServiceRequest:
    """An ``ExportLogsServiceRequest`` for *records*, grouped by resource (a
    record's own, else *resource*) and by scope (its logger name)."""
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=_resource(res),
                scope_logs=[
                    ScopeLogs(scope=_pb_scope(scope), log_records=[_pb_log(r) for r in group])
                    for scope, group in scopes
                ],
            )
            for res, scopes in _log_groups(records, resource)
        ]
    )


# -- OTLP JSON --------------------------------------------------------------------


def _json_value(value: Any, depth: int = 0) -> dict[str, Any] | None:
    t = type(value)
    if t is str:
        return {"stringValue": value[:MAX_VALUE_LENGTH]}
    if t is bool:
        return {"boolValue": value}
    if t is int:
        if INT64_MIN <= value <= INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if t is float:
        if not math.isfinite(value):
            return {"stringValue": str(value)}  # JSON has no NaN/Infinity
        return {"doubleValue": value}
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return {"bytesValue": base64.b64encode(bytes(value[:MAX_VALUE_LENGTH])).decode("ascii")}
    if depth < MAX_DEPTH:
        if isinstance(value, Mapping):
            return {"kvlistValue": {"values": _json_attrs(value, depth + 1)}}
        if isinstance(value, (list, tuple, set, frozenset)):
            items = [v for v in (_json_value(x, depth + 1) for x in value) if v is not None]
            return {"arrayValue": {"values": items}}
    try:
        return {"stringValue": str(value)[:MAX_VALUE_LENGTH]}
    except Exception:
        return {"stringValue": "<unprintable>"}


def _json_attrs(attributes: Mapping[str, Any], depth: int = 0) -> list[dict[str, Any]]:
    out = []
    for key, value in attributes.items():
        v = _json_value(value, depth)
        if v is not None:
            out.append({"key": str(key), "value": v})
    return out


_JSON_SCOPE = {"name": SCOPE_NAME, "version": SCOPE_VERSION}


def _json_span(s: SpanData) -> dict[str, Any]:
    seg = s.segment
    flags = (seg.flags & 0xFF) | FLAG_HAS_REMOTE | (FLAG_IS_REMOTE if s.parent_remote else 0)
    out: dict[str, Any] = {
        "traceId": f"{s.trace_id:032x}",
        "spanId": f"{s.span_id:016x}",
        "flags": flags,
        "name": s.name,
        "kind": int(s.kind),
        "startTimeUnixNano": str(s.start_ns),
        "endTimeUnixNano": str(s.end_ns),
        "attributes": _json_attrs(s.attributes),
    }
    if s.parent_id:
        out["parentSpanId"] = f"{s.parent_id:016x}"
    if seg.trace_state:
        out["traceState"] = seg.trace_state.to_header()
    if s.dropped_attributes:
        out["droppedAttributesCount"] = s.dropped_attributes
    if s.events:
        out["events"] = [
            {"name": n, "timeUnixNano": str(ts), "attributes": _json_attrs(a)}
            for n, ts, a in s.events
        ]
    if s.dropped_events:
        out["droppedEventsCount"] = s.dropped_events
    if s.links:
        out["links"] = [
            {
                "traceId": f"{ctx.trace_id:032x}",
                "spanId": f"{ctx.span_id:016x}",
                "attributes": _json_attrs(a),
            }
            for ctx, a in s.links
        ]
    if s.status_code:
        status: dict[str, Any] = {"code": int(s.status_code)}
        if s.status_message:
            status["message"] = s.status_message
        out["status"] = status
    return out


def spans_to_json(spans: Sequence[SpanData]) -> dict[str, Any]:
    """An OTLP/JSON ``ExportTraceServiceRequest`` object for *spans*."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _json_attrs(resource)},
                "scopeSpans": [{"scope": _JSON_SCOPE, "spans": [_json_span(s) for s in group]}],
            }
            for resource, group in group_by_resource(spans, lambda s: s.segment.resource)
        ]
    }


def _json_log(rec: LogData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timeUnixNano": str(rec.time_ns),
        "observedTimeUnixNano": str(rec.observed_ns or rec.time_ns),
        "severityNumber": rec.severity_number,
        "severityText": rec.severity_text,
        "attributes": _json_attrs(rec.attributes),
    }
    body = _json_value(rec.body)
    if body is not None:
        out["body"] = body
    if rec.trace_id:
        out["traceId"] = f"{rec.trace_id:032x}"
    if rec.span_id:
        out["spanId"] = f"{rec.span_id:016x}"
    if rec.trace_flags:
        out["flags"] = rec.trace_flags & 0xFF
    return out


def logs_to_json(records: Sequence[LogData], resource: Mapping[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON ``ExportLogsServiceRequest`` object for *records*."""
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": _json_attrs(res)},
                "scopeLogs": [
                    {
                        "scope": _JSON_SCOPE if scope is None else {"name": scope},
                        "logRecords": [_json_log(r) for r in group],
                    }
                    for scope, group in scopes
                ],
            }
            for res, scopes in _log_groups(records, resource)
        ]
    }
