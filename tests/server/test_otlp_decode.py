"""OTLP decoding: the realdata OTLP/JSON examples, protobuf, partial success."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from crosstrace.server.ingest.decode import (
    MAX_VALUE_DEPTH,
    SIGNAL_LOGS,
    SIGNAL_TRACES,
    OtlpDecodeError,
    decode,
    decode_logs_json,
    decode_logs_protobuf,
    decode_traces_json,
    decode_traces_protobuf,
    encode_response,
    encode_status,
)

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata" / "otlp"

TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"


def _realdata(name: str) -> bytes:
    path = REALDATA / name
    if not path.exists():
        pytest.skip(f"real data {name} is absent")
    return path.read_bytes()


def _json_span(**fields: Any) -> dict[str, Any]:
    span = {
        "traceId": TRACE_ID,
        "spanId": SPAN_ID,
        "name": "op",
        "kind": 2,
        "startTimeUnixNano": "1000",
        "endTimeUnixNano": "2000",
    }
    span.update(fields)
    return span


def _traces_doc(*spans: dict[str, Any], service: str = "svc") -> bytes:
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "lib"}, "spans": list(spans)}],
            }
        ]
    }
    return json.dumps(doc).encode()


def test_realdata_trace_json_decodes_field_for_field() -> None:
    """The opentelemetry-proto trace.json example decodes to exactly its content."""
    result = decode_traces_json(_realdata("trace.json"))
    assert result.rejected == 0
    (span,) = result.spans
    assert span.trace_id.hex() == TRACE_ID
    assert span.span_id.hex() == SPAN_ID
    assert span.parent_span_id is not None
    assert span.parent_span_id.hex() == "eee19b7ec3c1b173"
    assert span.name == "I'm a server span"
    assert span.kind == 2
    assert span.start_ns == 1544712660000000000
    assert span.end_ns == 1544712661000000000
    assert span.service == "my.service"
    assert span.resource == {"service.name": "my.service"}
    assert span.scope == "my.library"
    assert span.attributes == {"my.span.attr": "some value"}
    assert span.status_code == 0
    assert span.events == []
    assert span.links == []


def test_realdata_logs_json_decodes_every_value_kind() -> None:
    """logs.json: string, bool, int-as-string, double, array and kvlist values."""
    result = decode_logs_json(_realdata("logs.json"))
    assert result.rejected == 0
    (record,) = result.logs
    assert record.time_ns == 1544712660300000000
    assert record.severity_number == 10
    assert record.severity_text == "Information"
    assert record.body == "Example log record"
    assert record.service == "my.service"
    assert record.logger == "my.library"
    assert record.trace_id is not None
    assert record.trace_id.hex() == TRACE_ID
    assert record.span_id is not None
    assert record.span_id.hex() == SPAN_ID
    assert record.attributes == {
        "string.attribute": "some string",
        "boolean.attribute": True,
        "int.attribute": 10,
        "double.attribute": 637.704,
        "array.attribute": ["many", "values"],
        "map.attribute": {"some.map.key": "some value"},
    }


def test_json_and_protobuf_agree_on_realdata() -> None:
    """The protobuf encoding of the JSON example decodes to the same records."""
    from google.protobuf import json_format

    body = json.loads(_realdata("trace.json"))
    for span in body["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):  # proto3 JSON wants base64
            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    message = json_format.ParseDict(body, ExportTraceServiceRequest())
    from_pb = decode_traces_protobuf(message.SerializeToString()).spans
    from_json = decode_traces_json(_realdata("trace.json")).spans
    assert from_pb == from_json


def test_hex_ids_in_any_case_and_ints_as_numbers_or_strings() -> None:
    """Upper/lower hex ids and int64 as number or string decode identically."""
    upper = _traces_doc(_json_span(traceId=TRACE_ID.upper(), startTimeUnixNano="1000"))
    lower = _traces_doc(_json_span(traceId=TRACE_ID, startTimeUnixNano=1000))
    assert decode_traces_json(upper).spans == decode_traces_json(lower).spans


def test_snake_case_field_names_are_accepted() -> None:
    """Receivers must accept the original proto field names too."""
    doc = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE_ID,
                                "span_id": SPAN_ID,
                                "start_time_unix_nano": "5",
                                "end_time_unix_nano": "9",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    (span,) = decode_traces_json(json.dumps(doc).encode()).spans
    assert (span.start_ns, span.end_ns, span.service) == (5, 9, "unknown_service")


def test_enum_names_are_accepted_and_unknown_enum_values_fall_back() -> None:
    named = _json_span(kind="SPAN_KIND_CLIENT", status={"code": "STATUS_CODE_ERROR"})
    (span,) = decode_traces_json(_traces_doc(named)).spans
    assert (span.kind, span.status_code) == (3, 2)
    odd = _json_span(kind=99, status={"code": 7})
    (span,) = decode_traces_json(_traces_doc(odd)).spans
    assert (span.kind, span.status_code) == (0, 0)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("traceId", "00" * 16, "invalid trace id"),
        ("traceId", "abcd", "invalid trace id"),
        ("traceId", "zz" * 16, "invalid trace id"),
        ("spanId", "00" * 8, "invalid span id"),
        ("spanId", "ab" * 9, "invalid span id"),
        ("parentSpanId", "ab" * 3, "invalid parent span id"),
        ("startTimeUnixNano", str(2**63), "start time beyond int64"),
    ],
)
def test_invalid_record_is_rejected_and_the_rest_kept(field: str, value: str, reason: str) -> None:
    """Partial success: the bad span is counted with a reason, the good one stays."""
    good = _json_span(spanId="11" * 8)
    bad = _json_span(**{field: value})
    result = decode_traces_json(_traces_doc(good, bad))
    assert [s.span_id.hex() for s in result.spans] == ["11" * 8]
    assert result.rejected == 1
    assert reason in result.error_message


def test_zero_parent_id_means_root() -> None:
    (span,) = decode_traces_json(_traces_doc(_json_span(parentSpanId="00" * 8))).spans
    assert span.parent_span_id is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "expected an object"),
        (b'{"resourceSpans": 5}', "resourceSpans: expected a JSON array"),
        (_traces_doc(_json_span(name=5)), "name: expected a string"),
        (_traces_doc(_json_span(startTimeUnixNano="12x")), "startTimeUnixNano"),
        (_traces_doc(_json_span(startTimeUnixNano="-5")), "must not be negative"),
        (_traces_doc(_json_span(traceId=12)), "expected a hex string"),
        (_traces_doc(_json_span(kind="server")), "kind: expected an enum"),
        (_traces_doc(_json_span(attributes=[{"key": "a", "value": 3}])), "AnyValue"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_malformed_json_raises_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError, match=message):
        decode_traces_json(body)


def test_malformed_protobuf_raises_a_clear_error() -> None:
    with pytest.raises(OtlpDecodeError, match="not a valid OTLP protobuf"):
        decode_traces_protobuf(b"\x0a\xff\xff\xff\xff\x0f")


def _pb_value(**kind: Any) -> AnyValue:
    return AnyValue(**kind)


def test_protobuf_values_of_every_kind() -> None:
    """bytes -> base64, kvlist -> dict, array -> list, NaN/inf -> strings."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="nova"))
    span = rs.scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex(TRACE_ID)
    span.span_id = bytes.fromhex(SPAN_ID)
    span.name = "x"
    array = AnyValue()
    array.array_value.values.add(int_value=1)
    array.array_value.values.add(string_value="two")
    kvlist = AnyValue()
    kvlist.kvlist_value.values.add(key="k", value=AnyValue(bool_value=False))
    span.attributes.extend(
        [
            KeyValue(key="s", value=AnyValue(string_value="v")),
            KeyValue(key="b", value=AnyValue(bool_value=True)),
            KeyValue(key="i", value=AnyValue(int_value=-(2**63))),
            KeyValue(key="d", value=AnyValue(double_value=1.5)),
            KeyValue(key="nan", value=AnyValue(double_value=float("nan"))),
            KeyValue(key="inf", value=AnyValue(double_value=float("-inf"))),
            KeyValue(key="bytes", value=AnyValue(bytes_value=b"\x00\x01")),
            KeyValue(key="arr", value=array),
            KeyValue(key="kv", value=kvlist),
            KeyValue(key="empty", value=AnyValue()),
            KeyValue(key="nul", value=AnyValue(string_value="a\x00b")),
        ]
    )
    ev = span.events.add(time_unix_nano=7, name="exception")
    ev.attributes.add(key="exception.type", value=AnyValue(string_value="ValueError"))
    span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    (record,) = decode_traces_protobuf(request.SerializeToString()).spans
    assert record.service == "nova"
    assert record.attributes == {
        "s": "v",
        "b": True,
        "i": -(2**63),
        "d": 1.5,
        "nan": "NaN",
        "inf": "-Infinity",
        "bytes": base64.b64encode(b"\x00\x01").decode(),
        "arr": [1, "two"],
        "kv": {"k": False},
        "empty": None,
        "nul": "a\ufffdb",
    }
    assert record.events == [
        {"time_ns": 7, "name": "exception", "attributes": {"exception.type": "ValueError"}}
    ]
    assert record.links == [{"trace_id": "01" * 16, "span_id": "02" * 8, "attributes": {}}]


def test_json_special_values_are_made_storable() -> None:
    """Lone surrogates, NUL, NaN strings and base64 bytes in OTLP/JSON."""
    attrs = [
        {"key": "sur", "value": {"stringValue": "x\ud800y"}},
        {"key": "nul", "value": {"stringValue": "a\u0000b"}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "big", "value": {"doubleValue": 1e308}},
        {"key": "bytes", "value": {"bytesValue": base64.b64encode(b"hi").decode()}},
    ]
    (span,) = decode_traces_json(_traces_doc(_json_span(attributes=attrs))).spans
    assert span.attributes["sur"] == "x?y"
    assert span.attributes["nul"] == "a\ufffdb"
    assert span.attributes["nan"] == "NaN"
    assert span.attributes["big"] == 1e308
    assert span.attributes["bytes"] == base64.b64encode(b"hi").decode()


def test_values_nested_too_deeply_reject_the_record() -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(MAX_VALUE_DEPTH + 2):
        value = {"arrayValue": {"values": [value]}}
    result = decode_traces_json(_traces_doc(_json_span(attributes=[{"key": "d", "value": value}])))
    assert result.spans == []
    assert result.rejected == 1
    assert "nested deeper" in result.error_message


def test_int_attribute_outside_int64_rejects_the_record() -> None:
    attrs = [{"key": "n", "value": {"intValue": str(2**64)}}]
    result = decode_traces_json(_traces_doc(_json_span(attributes=attrs)))
    assert (len(result.spans), result.rejected) == (0, 1)


def test_log_request_ids_are_lifted_only_when_valid() -> None:
    rid = "req-6f1d1a4e-6f7a-4d5c-9b1e-2b8c3f0a9d11"
    doc = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "10",
                                "body": {"stringValue": "ok"},
                                "attributes": [
                                    {"key": "openstack.request_id", "value": {"stringValue": rid}},
                                    {
                                        "key": "openstack.global_request_id",
                                        "value": {"stringValue": "req-NOT-VALID"},
                                    },
                                    {
                                        "key": "openstack.project_id",
                                        "value": {"stringValue": "p1"},
                                    },
                                ],
                            },
                            {"observedTimeUnixNano": "20", "body": {"intValue": "3"}},
                        ]
                    }
                ]
            }
        ]
    }
    first, second = decode_logs_json(json.dumps(doc).encode()).logs
    assert (first.request_id, first.global_request_id, first.project_id) == (rid, None, "p1")
    assert first.attributes["openstack.global_request_id"] == "req-NOT-VALID"
    assert (second.time_ns, second.body) == (20, "3")


def test_protobuf_logs_decode() -> None:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.add(key="service.name", value=AnyValue(string_value="cinder"))
    sl = rl.scope_logs.add()
    sl.scope.name = "cinder.api"
    rec = sl.log_records.add(time_unix_nano=5, severity_number=17, severity_text="ERROR")
    rec.body.string_value = "boom"
    rec.trace_id = bytes.fromhex(TRACE_ID)
    bad = sl.log_records.add(time_unix_nano=6)
    bad.span_id = b"\x01\x02"
    result = decode_logs_protobuf(request.SerializeToString())
    assert result.rejected == 1
    (log,) = result.logs
    assert (log.service, log.logger, log.severity_number, log.body) == (
        "cinder",
        "cinder.api",
        17,
        "boom",
    )


def test_decode_dispatches_on_signal_and_encoding() -> None:
    assert decode(SIGNAL_TRACES, _realdata("trace.json"), as_json=True).spans
    assert decode(SIGNAL_LOGS, _realdata("logs.json"), as_json=True).logs
    with pytest.raises(OtlpDecodeError, match="unknown OTLP signal"):
        decode("metrics", b"", as_json=False)


def test_partial_success_response_in_both_encodings() -> None:
    result = decode_traces_json(_traces_doc(_json_span(), _json_span(traceId="00" * 16)))
    pb = ExportTraceServiceResponse.FromString(
        encode_response(SIGNAL_TRACES, result, as_json=False)
    )
    assert pb.partial_success.rejected_spans == 1
    assert "invalid trace id" in pb.partial_success.error_message
    js = json.loads(encode_response(SIGNAL_TRACES, result, as_json=True))
    assert js["partialSuccess"]["rejectedSpans"] == "1"
    assert encode_response(SIGNAL_LOGS, decode_logs_json(b"{}"), as_json=True) == b"{}"


def test_status_body_is_a_google_rpc_status() -> None:
    """Hand-encoded Status: field 1 code, field 2 message (read back with protobuf)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="status_test.proto", package="t")
    msg = fdp.message_type.add(name="Status")
    msg.field.add(name="code", number=1, type=5, label=1)
    msg.field.add(name="message", number=2, type=9, label=1)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    status_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Status"))
    text = "x" * 300 + " é"
    status = status_cls.FromString(encode_status(3, text, as_json=False))
    assert (status.code, status.message) == (3, text)
    assert json.loads(encode_status(3, "m", as_json=True)) == {"code": 3, "message": "m"}


def test_long_names_are_cut_and_long_ids_reject_the_record() -> None:
    """Names and ids feed database indexes, which have a row size limit."""
    from crosstrace.server.ingest.decode import MAX_ID_LENGTH, MAX_NAME_BYTES

    long_name = "é" * MAX_NAME_BYTES  # 2 bytes each
    long_id = [{"key": "openstack.project_id", "value": {"stringValue": "p" * 300}}]
    result = decode_traces_json(
        _traces_doc(_json_span(name=long_name), _json_span(spanId="22" * 8, attributes=long_id))
    )
    (span,) = result.spans
    assert span.name == "é" * (MAX_NAME_BYTES // 2)
    assert result.rejected == 1
    assert f"longer than {MAX_ID_LENGTH}" in result.error_message
