"""OTLP decoding: protobuf and OTLP/JSON request bodies into backend records.

Both encodings of ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest`` are
turned into :class:`~crosstrace.server.model.SpanRecord` /
:class:`~crosstrace.server.model.LogRecord`. Two kinds of bad input are told apart:

* a body that cannot be read at all (not protobuf, not JSON, wrong JSON types)
  raises :class:`OtlpDecodeError`; the ingest endpoint answers 400;
* a record with invalid ids (wrong length, all zero, not hex) or values the store
  cannot hold (times beyond int64) is rejected and counted, the others are kept,
  and the answer reports the count as OTLP *partial success*.

Values are normalised so that anything accepted here can be stored and served as
JSON: bytes become base64 strings, non-finite doubles become the strings
``"NaN"``/``"Infinity"``/``"-Infinity"``, NUL characters become U+FFFD (PostgreSQL
text cannot hold them), lone surrogates from JSON escapes are replaced, and
integers outside int64 are refused.

Protobuf is parsed by the upb-backed ``opentelemetry-proto`` messages and walked
with as little Python per span as possible: this is the ingest hot path.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from crosstrace.ids import is_valid_request_id
from crosstrace.server.model import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    LogRecord,
    SpanRecord,
)
from crosstrace.server.prepare import PreparedBatch
from crosstrace.server.spanbatch import (
    MAX_ID_LENGTH,
    MAX_NAME_BYTES,
    MAX_VALUE_DEPTH,
    UNKNOWN_SERVICE,
    BatchDecodeError,
    Rejected,
    SpanBatch,
    cap_name,
    clean_float,
    clean_str,
    from_records,
    pb_attrs,
    pb_value,
    scan_traces,
)

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_NAME_BYTES",
    "MAX_VALUE_DEPTH",
    "SIGNAL_LOGS",
    "SIGNAL_TRACES",
    "UNKNOWN_SERVICE",
    "DecodeResult",
    "OtlpDecodeError",
    "decode",
    "decode_logs_json",
    "decode_logs_protobuf",
    "decode_traces_json",
    "decode_traces_protobuf",
    "encode_response",
    "encode_status",
]

SIGNAL_TRACES: Final = "traces"
SIGNAL_LOGS: Final = "logs"
_ID_ATTRS: Final = (ATTR_PROJECT_ID, ATTR_DOMAIN_ID, ATTR_USER_ID)
#: How many distinct rejection reasons are quoted in the partial-success message.
_MAX_REASONS = 3

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_ZERO_TRACE_ID: Final = bytes(16)
_ZERO_SPAN_ID: Final = bytes(8)
_HEX_RE = re.compile(r"[0-9a-fA-F]*", re.ASCII)
_INT_RE = re.compile(r"-?[0-9]+", re.ASCII)
_URLSAFE_B64_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}", re.ASCII)
_MAX_KIND = 5
_MAX_STATUS = 2
_MAX_SEVERITY = 24

_SPAN_KIND_NAMES: Final = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_NAMES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


class OtlpDecodeError(ValueError):
    """The request body is not a readable OTLP export request (answer 400)."""

    status_code = 400


_Rejected = Rejected


class DecodeResult:
    """Records decoded from one request, and the ones refused.

    Protobuf trace requests decode into :attr:`batch` (the store's form); the
    :attr:`spans` records are then made from it only when asked for. OTLP/JSON
    fills :attr:`spans`, and :meth:`span_batch` converts them.
    """

    __slots__ = ("_spans", "batch", "logs", "prepared", "reasons", "rejected")

    def __init__(self) -> None:
        self._spans: list[SpanRecord] | None = []
        self.batch: SpanBatch | None = None
        #: The batch prepared for the store when a decode worker made it.
        self.prepared: PreparedBatch | None = None
        self.logs: list[LogRecord] = []
        self.rejected = 0
        self.reasons: list[str] = []

    @property
    def spans(self) -> list[SpanRecord]:
        """The span records (made from :attr:`batch` on first use)."""
        if self._spans is None:
            self._spans = self.batch.records() if self.batch is not None else []
        return self._spans

    @property
    def span_count(self) -> int:
        """Spans accepted, without making records."""
        if self.prepared is not None:
            return len(self.prepared)
        if self.batch is not None:
            return len(self.batch)
        return len(self._spans or ())

    def span_batch(self) -> SpanBatch:
        """The accepted spans as a :class:`SpanBatch`, ready for the store."""
        if self.batch is None:
            self.batch = from_records(self.spans, self.reject)
        return self.batch

    def store_batch(self) -> SpanBatch | PreparedBatch:
        """What to hand to the store: the batch a decode worker prepared, else
        :meth:`span_batch`."""
        return self.prepared if self.prepared is not None else self.span_batch()

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if len(self.reasons) < _MAX_REASONS and reason not in self.reasons:
            self.reasons.append(reason)

    @property
    def error_message(self) -> str:
        if not self.rejected:
            return ""
        return f"{self.rejected} record(s) rejected: " + "; ".join(self.reasons)


# --------------------------------------------------------------------------- helpers


def _check_time(ns: int, what: str) -> int:
    if ns > _INT64_MAX:
        raise _Rejected(f"{what} beyond int64")
    return ns


def _bounded(value: int, top: int) -> int:
    return value if 0 <= value <= top else 0


def _check_ids(*sources: dict[str, Any]) -> None:
    """Reject a record whose project / domain / user id is too long to index."""
    for attrs in sources:
        for key in _ID_ATTRS:
            value = attrs.get(key)
            if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
                raise _Rejected(f"{key} longer than {MAX_ID_LENGTH} characters")


# --------------------------------------------------------------------- protobuf side


def _pb_resource(resource: Any) -> tuple[dict[str, Any], str]:
    attrs = pb_attrs(resource.attributes)
    service = attrs.get("service.name")
    if not isinstance(service, str) or not service:
        service = UNKNOWN_SERVICE
    _check_ids(attrs)
    return attrs, cap_name(service)


def decode_traces_protobuf(body: bytes) -> DecodeResult:
    """Decode a protobuf ``ExportTraceServiceRequest`` into a :class:`SpanBatch`."""
    result = DecodeResult()
    try:
        result.batch = scan_traces(body, result.reject)
    except BatchDecodeError as exc:
        raise OtlpDecodeError(str(exc)) from None
    result._spans = None
    return result


def _parse_pb(message: Any, body: bytes) -> None:
    try:
        message.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise OtlpDecodeError(f"body is not a valid OTLP protobuf message: {exc}") from None


def _body_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _make_log(
    *,
    time_ns: int,
    observed_ns: int,
    severity_number: int,
    severity_text: str,
    body: Any,
    service: str,
    trace_id: bytes,
    span_id: bytes,
    attributes: dict[str, Any],
    resource: dict[str, Any],
    scope: str,
) -> LogRecord:
    if time_ns > _INT64_MAX or observed_ns > _INT64_MAX:
        raise _Rejected("timestamp beyond int64")
    if trace_id and (len(trace_id) != 16 or trace_id == _ZERO_TRACE_ID):
        raise _Rejected("invalid trace id")
    if span_id and (len(span_id) != 8 or span_id == _ZERO_SPAN_ID):
        raise _Rejected("invalid span id")

    def ident(key: str) -> str | None:
        value = attributes.get(key)
        if value is None:
            value = resource.get(key)
        return value if isinstance(value, str) and value else None

    _check_ids(attributes)
    request_id = ident(ATTR_REQUEST_ID)
    global_request_id = ident(ATTR_GLOBAL_REQUEST_ID)
    return LogRecord(
        time_ns=time_ns or observed_ns,
        severity_number=_bounded(severity_number, _MAX_SEVERITY),
        severity_text=severity_text,
        body=_body_text(body),
        service=service,
        trace_id=trace_id or None,
        span_id=span_id or None,
        request_id=request_id if is_valid_request_id(request_id) else None,
        global_request_id=(global_request_id if is_valid_request_id(global_request_id) else None),
        user_id=ident(ATTR_USER_ID),
        project_id=ident(ATTR_PROJECT_ID),
        domain_id=ident(ATTR_DOMAIN_ID),
        logger=scope,
        attributes=attributes,
        resource=resource,
    )


def decode_logs_protobuf(body: bytes) -> DecodeResult:
    """Decode a protobuf ``ExportLogsServiceRequest``."""
    request = ExportLogsServiceRequest()
    _parse_pb(request, body)
    result = DecodeResult()
    for rl in request.resource_logs:
        try:
            resource, service = _pb_resource(rl.resource)
        except _Rejected as exc:
            for sl in rl.scope_logs:
                for _ in sl.log_records:
                    result.reject(str(exc))
            continue
        for sl in rl.scope_logs:
            scope = clean_str(sl.scope.name)
            for lr in sl.log_records:
                try:
                    result.logs.append(
                        _make_log(
                            time_ns=lr.time_unix_nano,
                            observed_ns=lr.observed_time_unix_nano,
                            severity_number=lr.severity_number,
                            severity_text=clean_str(lr.severity_text),
                            body=pb_value(lr.body) if lr.HasField("body") else None,
                            service=service,
                            trace_id=lr.trace_id,
                            span_id=lr.span_id,
                            attributes=pb_attrs(lr.attributes),
                            resource=resource,
                            scope=scope,
                        )
                    )
                except _Rejected as exc:
                    result.reject(str(exc))
    return result


# ------------------------------------------------------------------------- JSON side
#
# The OTLP/JSON mapping is the proto3 JSON mapping with three changes: trace and
# span ids are hex strings (not base64), enums are integers, and keys are
# lowerCamelCase. A receiver must also accept the original snake_case field names.
# The walker below follows that mapping strictly: a value of the wrong JSON type is
# a 400 naming the field.


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
    if not unsigned and not (_INT64_MIN <= number <= _INT64_MAX):
        raise _Rejected(f"{where} outside int64")
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
        raise _Rejected(f"invalid {where}")
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
        raise _Rejected(f"attribute value nested deeper than {MAX_VALUE_DEPTH}")
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
    _check_ids(attrs)
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
    if not trace_id or trace_id == _ZERO_TRACE_ID:
        raise _Rejected("invalid trace id")
    if not span_id or span_id == _ZERO_SPAN_ID:
        raise _Rejected("invalid span id")
    status = _expect_obj(sp.get("status"), "status")
    events = []
    for raw_event in _expect_list(sp.get("events"), "events"):
        ev = _expect_obj(raw_event, "events")
        events.append(
            {
                "time_ns": _check_time(
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
            raise _Rejected("invalid link id")
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
    _check_ids(attributes)
    kind = _json_enum(sp.get("kind"), _SPAN_KIND_NAMES, "kind")
    code = _json_enum(status.get("code"), _STATUS_NAMES, "status.code")
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent if parent and parent != _ZERO_SPAN_ID else None,
        name=cap_name(_json_str(sp.get("name"), "name")),
        kind=_bounded(kind, _MAX_KIND),
        start_ns=_check_time(start, "start time"),
        end_ns=_check_time(end, "end time"),
        service=service,
        status_code=_bounded(code, _MAX_STATUS),
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
        except _Rejected as exc:
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
                except _Rejected as exc:
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
    return _make_log(
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


# --------------------------------------------------------------------------- answers


def encode_response(signal: str, result: DecodeResult, *, as_json: bool) -> bytes:
    """The export response: empty on full success, else ``partial_success``."""
    if as_json:
        if not result.rejected:
            return b"{}"
        key = "rejectedSpans" if signal == SIGNAL_TRACES else "rejectedLogRecords"
        payload = {
            "partialSuccess": {key: str(result.rejected), "errorMessage": result.error_message}
        }
        return json.dumps(payload).encode()
    if signal == SIGNAL_TRACES:
        traces = ExportTraceServiceResponse()
        if result.rejected:
            traces.partial_success.rejected_spans = result.rejected
            traces.partial_success.error_message = result.error_message
        encoded: bytes = traces.SerializeToString()
        return encoded
    logs = ExportLogsServiceResponse()
    if result.rejected:
        logs.partial_success.rejected_log_records = result.rejected
        logs.partial_success.error_message = result.error_message
    encoded_logs: bytes = logs.SerializeToString()
    return encoded_logs


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_status(code: int, message: str, *, as_json: bool) -> bytes:
    """A ``google.rpc.Status`` error body (what OTLP/HTTP sends with a 4xx/5xx).

    Encoded by hand (two fields) to avoid a dependency on googleapis-common-protos.
    """
    if as_json:
        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode("utf-8", "replace")
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


_DECODERS: Final = {
    (SIGNAL_TRACES, False): decode_traces_protobuf,
    (SIGNAL_TRACES, True): decode_traces_json,
    (SIGNAL_LOGS, False): decode_logs_protobuf,
    (SIGNAL_LOGS, True): decode_logs_json,
}


def decode(signal: str, body: bytes, *, as_json: bool) -> DecodeResult:
    """Decode *body* of *signal* (``traces`` or ``logs``) in either encoding."""
    try:
        decoder = _DECODERS[signal, as_json]
    except KeyError:
        raise OtlpDecodeError(f"unknown OTLP signal {signal!r}") from None
    return decoder(body)
