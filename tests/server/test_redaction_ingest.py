"""Server-side redaction: keys, header values, query parameters, patterns, OTLP bodies."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from crosstrace.server.model import LogRecord, SpanRecord
from crosstrace.server.redaction import ServerRedactor, mask

SECRET = "s3cr3t-VALUE-42"


@pytest.mark.parametrize(
    "text",
    [
        f"X-Auth-Token: {SECRET}",
        f"x-subject-token={SECRET}",
        f"Authorization: Bearer {SECRET}",
        f"GET /v1/objects?password={SECRET}&limit=1",
        f"GET /v1/objects?a=1#access_token={SECRET}",
        f"swift GET /o?temp_url_sig={SECRET}&temp_url_expires=1",
        f"GET /o?key={SECRET}",
        f"GET /o?sig={SECRET}",
        f'{{"password": "{SECRET}"}}',
        f"{{'admin_password': '{SECRET}'}}",
    ],
)
def test_secret_values_in_text_are_masked(text: str) -> None:
    out = ServerRedactor().text(text)
    assert SECRET not in out
    assert "***" in out


@pytest.mark.parametrize(
    "text", ["/v3/auth/tokens", "monkey=banana", "keystone said ok", "GET /o?limit=10"]
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert ServerRedactor().text(text) == text


def test_mask_tells_the_length_class_only() -> None:
    assert mask("abc") == "***"
    assert mask("a" * 20) == "******"
    assert mask("a" * 200) == "*********"


def test_configured_patterns_mask_the_match_or_its_group() -> None:
    r = ServerRedactor(patterns=[r"AKIA[0-9A-Z]{16}", r"pin (\d+)"])
    assert r.text("key AKIAABCDEFGHIJKLMNOP, pin 1234.") == "key ******, pin ***."


def test_span_record_attributes_events_and_status_are_redacted() -> None:
    span = SpanRecord(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        parent_span_id=None,
        name="GET /x",
        kind=2,
        start_ns=1,
        end_ns=2,
        service="svc",
        status_message=f"failed with X-Auth-Token: {SECRET}",
        attributes={"db.password": SECRET, "url.full": f"http://h/p?token={SECRET}", "n": 3},
        events=[
            {
                "name": "exception",
                "time_ns": 1,
                "attributes": {"exception.message": f"bad password={SECRET}"},
            }
        ],
    )
    ServerRedactor().span(span)
    assert SECRET not in repr(span)
    assert span.attributes["n"] == 3


def test_log_record_body_and_attributes_are_redacted() -> None:
    record = LogRecord(
        time_ns=1,
        severity_number=9,
        severity_text="INFO",
        body=f"REQ: curl -H 'X-Auth-Token: {SECRET}'",
        service="svc",
        attributes={"http.request.header.authorization": SECRET},
    )
    ServerRedactor(extra_keys=["mycorp_pin"]).log(record)
    assert SECRET not in repr(record)


def _request(attrs: dict[str, str], status: str = "") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = b"\x01" * 16
    span.span_id = b"\x02" * 8
    span.name = "GET /x"
    span.status.message = status
    for k, v in attrs.items():
        span.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    ev = span.events.add()
    ev.name = "exception"
    ev.attributes.append(
        KeyValue(key="exception.message", value=AnyValue(string_value="plain message"))
    )
    return req


def test_protobuf_body_with_secrets_is_rewritten() -> None:
    body = _request(
        {"http.request.header.x-auth-token": SECRET, "url.query": f"sig={SECRET}"},
        status=f"Authorization: Basic {SECRET}",
    ).SerializeToString()
    out = ServerRedactor().otlp_traces(body)
    assert SECRET.encode() not in out
    back = ExportTraceServiceRequest()
    back.ParseFromString(out)
    assert back.resource_spans[0].scope_spans[0].spans[0].name == "GET /x"


def test_clean_protobuf_body_is_returned_as_is() -> None:
    body = _request({"http.route": "/servers/{id}"}).SerializeToString()
    assert ServerRedactor().otlp_traces(body) is body
