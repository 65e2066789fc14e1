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

import json
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

from crosstrace.export.transports import SIGNAL_LOGS, SIGNAL_TRACES
from crosstrace.server.batch.scan import SecretKeySeen, scan_traces
from crosstrace.server.batch.values import (
    MAX_ID_LENGTH,
    MAX_NAME_BYTES,
    MAX_VALUE_DEPTH,
    UNKNOWN_SERVICE,
    BatchDecodeError,
    Rejected,
    cap_name,
    clean_str,
    pb_attrs,
    pb_value,
)
from crosstrace.server.ingest.json import decode_logs_json, decode_traces_json
from crosstrace.server.ingest.result import DecodeResult, OtlpDecodeError, check_ids, make_log
from crosstrace.server.redaction import default_redactor

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


# --------------------------------------------------------------------- protobuf side


def _pb_resource(resource: Any) -> tuple[dict[str, Any], str]:
    attrs = pb_attrs(resource.attributes)
    service = attrs.get("service.name")
    if not isinstance(service, str) or not service:
        service = UNKNOWN_SERVICE
    check_ids(attrs)
    return attrs, cap_name(service)


def decode_traces_protobuf(
    body: bytes, secret_key: Callable[[str], bool] | None = None
) -> DecodeResult:
    """Decode a protobuf ``ExportTraceServiceRequest`` into a :class:`SpanBatch`
    (:class:`SecretKeySeen` if *secret_key* calls an attribute key secret)."""
    result = DecodeResult()
    try:
        result.use_batch(scan_traces(body, result.reject, secret_key=secret_key))
    except BatchDecodeError as exc:
        raise OtlpDecodeError(str(exc)) from None
    return result


def _parse_pb(message: Any, body: bytes) -> None:
    try:
        message.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise OtlpDecodeError(f"body is not a valid OTLP protobuf message: {exc}") from None


def decode_logs_protobuf(body: bytes) -> DecodeResult:
    """Decode a protobuf ``ExportLogsServiceRequest``."""
    request = ExportLogsServiceRequest()
    _parse_pb(request, body)
    result = DecodeResult()
    for rl in request.resource_logs:
        try:
            resource, service = _pb_resource(rl.resource)
        except Rejected as exc:
            for sl in rl.scope_logs:
                for _ in sl.log_records:
                    result.reject(str(exc))
            continue
        for sl in rl.scope_logs:
            scope = clean_str(sl.scope.name)
            for lr in sl.log_records:
                try:
                    result.logs.append(
                        make_log(
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
                except Rejected as exc:
                    result.reject(str(exc))
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
    """Decode *body* of *signal* (``traces`` or ``logs``) in either encoding.

    Secrets in trace bodies are masked here, before anything else sees them (log
    records are masked by the store, which imported logs reach too)."""
    try:
        decoder = _DECODERS[signal, as_json]
    except KeyError:
        raise OtlpDecodeError(f"unknown OTLP signal {signal!r}") from None
    if signal == SIGNAL_TRACES:
        redactor = default_redactor()
        if not as_json:
            if not redactor.may_hold_secrets(body):
                try:
                    return decode_traces_protobuf(body, redactor.is_secret_key)
                except SecretKeySeen:
                    pass
            try:
                body = redactor.otlp_traces(body)
            except (DecodeError, RecursionError, ValueError) as exc:
                raise OtlpDecodeError(f"body is not a valid OTLP protobuf message: {exc}") from None
            return decoder(body)
        result = decoder(body)
        for span in result.spans:
            redactor.span(span)
        return result
    return decoder(body)
