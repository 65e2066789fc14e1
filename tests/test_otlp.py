"""Spans and log records encoded as opentelemetry-proto messages and OTLP JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from crosstrace import otlp, tracing
from crosstrace.export import LogData
from crosstrace.propagation import start_server_span
from crosstrace.tracing import Span, SpanKind, StatusCode, Tracer, span
from crosstrace.tracing import tracer as tr


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def export_spans(self, spans: Sequence[Span]) -> None:
        self.spans.extend(spans)

    def cpu_ns(self) -> int:
        return 0


@pytest.fixture
def recorded() -> list[Span]:
    sink = Sink()
    previous = tr.get_tracer()
    tr._set_tracer(Tracer("svc-otlp", sink=sink, sample_ratio=1.0))
    try:
        parent = start_server_span(
            "GET /servers",
            {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
                "tracestate": "v=1",
            },
        )
        token = tracing.activate(parent)
        with span("db", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite"}) as s:
            s.set_attributes(
                {
                    "n": 3,
                    "f": 1.5,
                    "b": True,
                    "list": ["a", "b"],
                    "big": 1 << 70,
                    "raw": b"\x00\x01",
                    "none": None,
                    "map": {"k": 1},
                }
            )
            s.add_event("retry", {"attempt": 2})
            s.set_status(StatusCode.ERROR, "disk full")
        tracing.deactivate(token)
        parent.end()
    finally:
        tr._set_tracer(previous)
    return sink.spans


def test_spans_become_an_export_request(recorded: list[Span]) -> None:
    req = ExportTraceServiceRequest.FromString(otlp.spans_to_request(recorded).SerializeToString())
    (rs,) = req.resource_spans
    res = {kv.key: kv.value for kv in rs.resource.attributes}
    assert res["service.name"].string_value == "svc-otlp"
    assert res["process.pid"].int_value > 0
    assert res["host.name"].string_value
    (ss,) = rs.scope_spans
    assert ss.scope.name == "crosstrace"
    db, server = ss.spans
    assert server.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    assert server.kind == PbSpan.SPAN_KIND_SERVER
    assert server.trace_state == "v=1"
    assert server.flags == 0x303  # sampled+random, parent known to be remote
    assert db.trace_id == server.trace_id
    assert db.parent_span_id == server.span_id
    assert db.kind == PbSpan.SPAN_KIND_CLIENT
    assert db.flags == 0x103
    assert db.status.code == 2
    assert db.status.message == "disk full"
    assert db.end_time_unix_nano >= db.start_time_unix_nano > 0
    attrs = {kv.key: kv.value for kv in db.attributes}
    assert attrs["db.system"].string_value == "sqlite"
    assert attrs["n"].int_value == 3
    assert attrs["f"].double_value == 1.5
    assert attrs["b"].bool_value is True
    assert [v.string_value for v in attrs["list"].array_value.values] == ["a", "b"]
    assert attrs["big"].string_value == str(1 << 70)
    assert attrs["raw"].bytes_value == b"\x00\x01"
    assert "none" not in attrs
    assert attrs["map"].kvlist_value.values[0].key == "k"
    (ev,) = db.events
    assert ev.name == "retry"
    assert ev.attributes[0].key == "attempt"
    assert ev.attributes[0].value.int_value == 2


def test_spans_become_otlp_json(recorded: list[Span]) -> None:
    doc = json.loads(json.dumps(otlp.spans_to_json(recorded)))
    (rs,) = doc["resourceSpans"]
    db, server = rs["scopeSpans"][0]["spans"]
    assert server["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server["parentSpanId"] == "00f067aa0ba902b7"
    assert server["kind"] == 2
    assert isinstance(server["startTimeUnixNano"], str)
    assert db["status"] == {"code": 2, "message": "disk full"}
    attrs = {a["key"]: a["value"] for a in db["attributes"]}
    assert attrs["n"] == {"intValue": "3"}
    assert attrs["raw"] == {"bytesValue": "AAE="}
    assert db["events"][0]["name"] == "retry"


def test_log_records_become_an_export_request() -> None:
    rec = LogData(
        "disk full",
        severity_number=17,
        severity_text="ERROR",
        attributes={"openstack.request_id": "req-x"},
        trace_id=0xABC,
        span_id=0xDEF,
        trace_flags=1,
    )
    req = ExportLogsServiceRequest.FromString(
        otlp.logs_to_request([rec], {"service.name": "svc"}).SerializeToString()
    )
    (lr,) = req.resource_logs[0].scope_logs[0].log_records
    assert lr.body.string_value == "disk full"
    assert lr.severity_number == 17
    assert lr.severity_text == "ERROR"
    assert lr.trace_id == (0xABC).to_bytes(16, "big")
    assert lr.span_id == (0xDEF).to_bytes(8, "big")
    assert lr.attributes[0].key == "openstack.request_id"
    assert req.resource_logs[0].resource.attributes[0].value.string_value == "svc"


def test_log_records_become_otlp_json() -> None:
    rec = LogData("hello", trace_id=1, span_id=2)
    doc = otlp.logs_to_json([rec], {"service.name": "svc"})
    (lr,) = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    assert lr["body"] == {"stringValue": "hello"}
    assert lr["traceId"] == "0" * 31 + "1"
    assert lr["spanId"] == "0" * 15 + "2"


def test_non_finite_floats_are_strings_in_json() -> None:
    rec = LogData("x", attributes={"nan": float("nan"), "inf": float("inf")})
    doc = otlp.logs_to_json([rec], {})
    text = json.dumps(doc, allow_nan=False)  # would raise on NaN/Infinity
    assert '"stringValue": "nan"' in text
