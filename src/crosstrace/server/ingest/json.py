"""OTLP/JSON request bodies into backend records.

The OTLP/JSON mapping is the proto3 JSON mapping with three changes: trace and
span ids are hex strings (not base64), enums are integers, and keys are
lowerCamelCase. A receiver must also accept the original snake_case field names.
The walker below follows that mapping strictly: a value of the wrong JSON type is
a 400 naming the field. Values are normalised as :mod:`crosstrace.server.ingest.decode`
describes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

from crosstrace.server.batch.values import (
    INT64_MAX,
    INT64_MIN,
    MAX_VALUE_DEPTH,
    UNKNOWN_SERVICE,
    Rejected,
    cap_name,
    clean_float,
    clean_str,
)
from crosstrace.server.ingest.result import (
    DecodeResult,
    OtlpDecodeError,
    bounded,
    check_ids,
    check_time,
    make_log,
)
from crosstrace.server.model import (
    MAX_KIND,
    MAX_STATUS,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    LogRecord,
    SpanRecord,
)

__all__ = ["decode_logs_json", "decode_traces_json"]

_HEX_RE = re.compile(r"[0-9a-fA-F]*", re.ASCII)
_INT_RE = re.compile(r"-?[0-9]+", re.ASCII)
_URLSAFE_B64_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}", re.ASCII)

_SPAN_KIND_NAMES: Final = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_NAMES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _get(obj: dict[str, Any], camel: str, snake: str | None = None) -> Any:
    value = obj.get(camel)
    if value is None and snake is not None:
        value = obj.get(snake)
    return value


def _expect_obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OtlpDecodeError(f"{where}: expected a JSON object")
    return value


def _expect_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpDecodeError(f"{where}: expected a JSON array")
    return value


def _json_str(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise OtlpDecodeError(f"{where}: expected a string")
    return clean_str(value)


def _json_int(value: Any, where: str, *, unsigned: bool = False) -> int:
    """An int64/uint64/fixed64 field: a JSON number or a decimal string."""
    if value is None:
        return 0
    if type(value) is int:
        number = value
    elif (type(value) is float and value.is_integer()) or (
        isinstance(value, str) and len(value) <= 21 and _INT_RE.fullmatch(value)
    ):
        number = int(value)
    else:
        raise OtlpDecodeError(f"{where}: expected an integer or a decimal string")
    if unsigned and number < 0:
        raise OtlpDecodeError(f"{where}: must not be negative")
    if not unsigned and not (INT64_MIN <= number <= INT64_MAX):
        raise Rejected(f"{where} outside int64")
    return number


def _json_enum(value: Any, names: dict[str, int], where: str) -> int:
    if value is None:
        return 0
    if type(value) is int:
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    raise OtlpDecodeError(f"{where}: expected an enum integer")


def _json_id(value: Any, length: int, where: str) -> bytes:
    """A hex id (any case); empty bytes when absent. Bad hex rejects the record."""
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise OtlpDecodeError(f"{where}: expected a hex string")
    if len(value) != 2 * length or not _HEX_RE.fullmatch(value):
        raise Rejected(f"invalid {where}")
    return bytes.fromhex(value)


def _json_value(value: Any, depth: int = 0) -> Any:
    """An OTLP/JSON ``AnyValue`` object."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OtlpDecodeError("attribute value: expected an AnyValue object")
    if "stringValue" in value or "string_value" in value:
        return _json_str(_get(value, "stringValue", "string_value"), "stringValue")
    if "boolValue" in value or "bool_value" in value:
        flag = _get(value, "boolValue", "bool_value")
        if not isinstance(flag, bool):
            raise OtlpDecodeError("boolValue: expected true or false")
        return flag
    if "intValue" in value or "int_value" in value:
        return _json_int(_get(value, "intValue", "int_value"), "intValue")
    if "doubleValue" in value or "double_value" in value:
        return _json_double(_get(value, "doubleValue", "double_value"))
    if "bytesValue" in value or "bytes_value" in value:
        raw = _get(value, "bytesValue", "bytes_value")
        if not isinstance(raw, str):
            raise OtlpDecodeError("bytesValue: expected a base64 string")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            # proto3 JSON also accepts the URL-safe alphabet, padding optional.
            if not _URLSAFE_B64_RE.fullmatch(raw):
                raise OtlpDecodeError("bytesValue: not base64") from None
            try:
                decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            except (binascii.Error, ValueError):
                raise OtlpDecodeError("bytesValue: not base64") from None
        return base64.b64encode(decoded).decode("ascii")
    if depth >= MAX_VALUE_DEPTH:
        raise Rejected(f"attribute value nested deeper than {MAX_VALUE_DEPTH}")
    if "arrayValue" in value or "array_value" in value:
        arr = _expect_obj(_get(value, "arrayValue", "array_value"), "arrayValue")
        return [_json_value(x, depth + 1) for x in _expect_list(arr.get("values"), "values")]
    if "kvlistValue" in value or "kvlist_value" in value:
        kvl = _expect_obj(_get(value, "kvlistValue", "kvlist_value"), "kvlistValue")
        return _json_attrs(kvl.get("values"), depth + 1)
    return None


def _json_double(value: Any) -> float | str:
    if type(value) is int:
        return float(value) if abs(value) < 2**1023 else clean_float(math.inf)
    if type(value) is float:
        return clean_float(value)
    if isinstance(value, str):
        if value in ("NaN", "Infinity", "-Infinity"):
            return value
        try:
            return clean_float(float(value))
        except ValueError:
            pass
    raise OtlpDecodeError("doubleValue: expected a number")


def _json_attrs(value: Any, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in _expect_list(value, "attributes"):
        if not isinstance(kv, dict):
            raise OtlpDecodeError("attributes: expected key/value objects")
        key = _json_str(kv.get("key"), "attributes.key")
        out[key] = _json_value(kv.get("value"), depth)
    return out


def _json_resource(obj: dict[str, Any]) -> tuple[dict[str, Any], str]:
    attrs = _json_attrs(_expect_obj(obj.get("resource"), "resource").get("attributes"))
    service = attrs.get("service.name")
    if not isinstance(service, str) or not service:
        service = UNKNOWN_SERVICE
    check_ids(attrs)
    return attrs, cap_name(service)


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except RecursionError:
        raise OtlpDecodeError("body is not valid OTLP JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise OtlpDecodeError(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OtlpDecodeError("body is not an OTLP JSON export request (expected an object)")
    return doc


def _json_span(sp: Any, service: str, resource: dict[str, Any], scope: str) -> SpanRecord:
    if not isinstance(sp, dict):
        raise OtlpDecodeError("spans: expected span objects")
    trace_id = _json_id(_get(sp, "traceId", "trace_id"), 16, "trace id")
    span_id = _json_id(_get(sp, "spanId", "span_id"), 8, "span id")
    parent = _json_id(_get(sp, "parentSpanId", "parent_span_id"), 8, "parent span id")
    if not trace_id or trace_id == ZERO_TRACE_ID:
        raise Rejected("invalid trace id")
    if not span_id or span_id == ZERO_SPAN_ID:
        raise Rejected("invalid span id")
    status = _expect_obj(sp.get("status"), "status")
    events = []
    for raw_event in _expect_list(sp.get("events"), "events"):
        ev = _expect_obj(raw_event, "events")
        events.append(
            {
                "time_ns": check_time(
                    _json_int(
                        _get(ev, "timeUnixNano", "time_unix_nano"), "timeUnixNano", unsigned=True
                    ),
                    "event time",
                ),
                "name": _json_str(ev.get("name"), "event name"),
                "attributes": _json_attrs(ev.get("attributes")),
            }
        )
    links = []
    for raw_link in _expect_list(sp.get("links"), "links"):
        ln = _expect_obj(raw_link, "links")
        link_trace = _json_id(_get(ln, "traceId", "trace_id"), 16, "link trace id")
        link_span = _json_id(_get(ln, "spanId", "span_id"), 8, "link span id")
        if not link_trace or not link_span:
            raise Rejected("invalid link id")
        links.append(
            {
                "trace_id": link_trace.hex(),
                "span_id": link_span.hex(),
                "attributes": _json_attrs(ln.get("attributes")),
            }
        )
    start = _json_int(
        _get(sp, "startTimeUnixNano", "start_time_unix_nano"), "startTimeUnixNano", unsigned=True
    )
    end = _json_int(
        _get(sp, "endTimeUnixNano", "end_time_unix_nano"), "endTimeUnixNano", unsigned=True
    )
    attributes = _json_attrs(sp.get("attributes"))
    check_ids(attributes)
    kind = _json_enum(sp.get("kind"), _SPAN_KIND_NAMES, "kind")
    code = _json_enum(status.get("code"), _STATUS_NAMES, "status.code")
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent if parent and parent != ZERO_SPAN_ID else None,
        name=cap_name(_json_str(sp.get("name"), "name")),
        kind=bounded(kind, MAX_KIND),
        start_ns=check_time(start, "start time"),
        end_ns=check_time(end, "end time"),
        service=service,
        status_code=bounded(code, MAX_STATUS),
        status_message=_json_str(status.get("message"), "status.message"),
        attributes=attributes,
        events=events,
        links=links,
        resource=resource,
        scope=scope,
        trace_state=_json_str(_get(sp, "traceState", "trace_state"), "traceState"),
    )


def _walk_json(
    doc: dict[str, Any],
    outer: tuple[str, str],
    inner: tuple[str, str],
    items: tuple[str, str],
    convert: Callable[[Any, str, dict[str, Any], str], Any],
    result: DecodeResult,
    out: list[Any],
) -> None:
    for raw_res in _expect_list(_get(doc, *outer), outer[0]):
        res = _expect_obj(raw_res, outer[0])
        try:
            resource, service = _json_resource(res)
        except Rejected as exc:
            resource, service = {}, ""
            bad: str | None = str(exc)
        else:
            bad = None
        for raw_scope in _expect_list(_get(res, *inner), inner[0]):
            sc = _expect_obj(raw_scope, inner[0])
            scope = _json_str(_expect_obj(sc.get("scope"), "scope").get("name"), "scope.name")
            for item in _expect_list(_get(sc, *items), items[0]):
                if bad is not None:
                    result.reject(bad)
                    continue
                try:
                    out.append(convert(item, service, resource, scope))
                except Rejected as exc:
                    result.reject(str(exc))


def _guard_json(run: Callable[[], None]) -> None:
    try:
        run()
    except RecursionError:
        raise OtlpDecodeError("body is not valid OTLP JSON: nested too deeply") from None


def decode_traces_json(body: bytes) -> DecodeResult:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest``."""
    doc = _load_json(body)
    result = DecodeResult()
    _guard_json(
        lambda: _walk_json(
            doc,
            ("resourceSpans", "resource_spans"),
            ("scopeSpans", "scope_spans"),
            ("spans", "spans"),
            _json_span,
            result,
            result.spans,
        )
    )
    return result


def _json_log(lr: Any, service: str, resource: dict[str, Any], scope: str) -> LogRecord:
    if not isinstance(lr, dict):
        raise OtlpDecodeError("logRecords: expected log record objects")
    return make_log(
        time_ns=_json_int(
            _get(lr, "timeUnixNano", "time_unix_nano"), "timeUnixNano", unsigned=True
        ),
        observed_ns=_json_int(
            _get(lr, "observedTimeUnixNano", "observed_time_unix_nano"),
            "observedTimeUnixNano",
            unsigned=True,
        ),
        severity_number=_json_enum(
            _get(lr, "severityNumber", "severity_number"), {}, "severityNumber"
        ),
        severity_text=_json_str(_get(lr, "severityText", "severity_text"), "severityText"),
        body=_json_value(lr.get("body")),
        service=service,
        trace_id=_json_id(_get(lr, "traceId", "trace_id"), 16, "trace id"),
        span_id=_json_id(_get(lr, "spanId", "span_id"), 8, "span id"),
        attributes=_json_attrs(lr.get("attributes")),
        resource=resource,
        scope=scope,
    )


def decode_logs_json(body: bytes) -> DecodeResult:
    """Decode an OTLP/JSON ``ExportLogsServiceRequest``."""
    doc = _load_json(body)
    result = DecodeResult()
    _guard_json(
        lambda: _walk_json(
            doc,
            ("resourceLogs", "resource_logs"),
            ("scopeLogs", "scope_logs"),
            ("logRecords", "log_records"),
            _json_log,
            result,
            result.logs,
        )
    )
    return result
