"""Spans written as OTLP directly: the same bytes as the library's protobuf messages and
as ``json.dumps`` of the OTLP/JSON objects."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from crosstrace import otlp, tracing
from crosstrace.export import wire
from crosstrace.export.transports import FileTransport, OtlpHttpTransport
from crosstrace.propagation import start_server_span
from crosstrace.tracecontext import TraceState
from crosstrace.tracing import SpanKind, StatusCode, span
from crosstrace.tracing import tracer as tr
from crosstrace.tracing.model import SpanContext
from tracing_support import Sink, sink_tracer


@dataclass
class Segment:
    flags: int = 1
    trace_state: TraceState | None = None
    resource: dict[str, Any] = field(default_factory=lambda: {"service.name": "svc"})


@dataclass
class FakeSpan:
    """A span record as the exporter reads it (:class:`SpanData`), any shape."""

    segment: Segment = field(default_factory=Segment)
    trace_id: int = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    span_id: int = 0x00F067AA0BA902B7
    parent_id: int = 0
    parent_remote: bool = False
    name: str = "op"
    kind: int = 1
    start_ns: int = 1_700_000_000_000_000_000
    end_ns: int = 1_700_000_000_001_000_000
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, int, dict[str, Any]]] | None = None
    links: list[tuple[SpanContext, dict[str, Any]]] | None = None
    status_code: int = 0
    status_message: str | None = None
    dropped_attributes: int = 0
    dropped_events: int = 0


def library_bytes(spans: Sequence[Any]) -> bytes:
    return otlp.spans_to_request(spans).SerializeToString()  # type: ignore[no-any-return]


def test_a_traced_requests_spans_are_written_as_the_library_writes_them() -> None:
    sink = Sink()
    previous = tr.get_tracer()
    tr._set_tracer(sink_tracer(sink, "svc-wire", sample_ratio=1.0))
    try:
        parent = start_server_span(
            "GET /servers",
            {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
                "tracestate": "v=1,w=2",
            },
        )
        token = tracing.activate(parent)
        with span("db", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite"}) as s:
            s.set_attributes({"n": -3, "f": 1.5, "b": True, "list": ["a", 2], "map": {"k": 1}})
            s.add_event("retry", {"attempt": 2, "db.system": "sqlite"})
            s.set_status(StatusCode.ERROR, "disk full")
        tracing.deactivate(token)
        parent.end()
    finally:
        tr._set_tracer(previous)
    assert len(sink.spans) == 2
    written = wire.spans_to_protobuf(sink.spans)
    assert written == library_bytes(sink.spans)
    (rs,) = ExportTraceServiceRequest.FromString(written).resource_spans
    db, server = rs.scope_spans[0].spans
    assert server.trace_state == "v=1,w=2"
    assert db.status.message == "disk full"
    assert db.events[0].attributes[1].value.string_value == "sqlite"


def test_the_http_transport_sends_the_direct_encoding() -> None:
    spans = [FakeSpan(attributes={"http.request.method": "GET"})]
    transport = OtlpHttpTransport("http://127.0.0.1:4318", compress=False)
    assert transport.encode("traces", spans, {}) == library_bytes(spans)


# -- every shape, against the library --------------------------------------------------

_scalars = (
    st.text(max_size=12)
    | st.booleans()
    | st.integers(min_value=-(1 << 64), max_value=1 << 64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=12)
    | st.none()
)


class Opaque:
    def __str__(self) -> str:
        return "opaque ✓"


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _scalars | st.just(Opaque())
    inner = _values(depth - 1)
    return (
        _scalars
        | st.just(Opaque())
        | st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
        | st.dictionaries(st.integers(0, 3), inner, max_size=2)
    )


_attributes = st.dictionaries(st.text(max_size=10), _values(6), max_size=5)
_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
_contexts = st.builds(
    SpanContext,
    st.integers(min_value=1, max_value=(1 << 128) - 1),
    _ids,
    st.integers(0, 255),
    st.sampled_from([None, TraceState([("a", "1")]), TraceState([("v", "x"), ("w", "y")])]),
    st.booleans(),
)
_segments = st.builds(
    Segment,
    st.integers(0, 255),
    st.sampled_from([None, TraceState([("congo", "t61rcWkgMzE")])]),
    st.sampled_from([{"service.name": "a"}, {"service.name": "b", "process.pid": 7}, {}]),
)
_spans = st.builds(
    FakeSpan,
    segment=_segments,
    trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1),
    span_id=_ids,
    parent_id=st.just(0) | _ids,
    parent_remote=st.booleans(),
    name=st.text(max_size=20),
    kind=st.integers(0, 5),
    start_ns=st.integers(0, (1 << 64) - 1),
    end_ns=st.integers(0, (1 << 64) - 1),
    attributes=_attributes,
    events=st.none()
    | st.lists(
        st.tuples(st.text(max_size=8), st.integers(0, (1 << 64) - 1), _attributes), max_size=3
    ),
    links=st.none() | st.lists(st.tuples(_contexts, _attributes), max_size=2),
    status_code=st.integers(0, 2),
    status_message=st.none() | st.text(max_size=10),
    dropped_attributes=st.integers(0, 1000),
    dropped_events=st.integers(0, 1000),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_spans, min_size=1, max_size=4))
def test_any_span_is_written_as_the_library_writes_it(spans: list[FakeSpan]) -> None:
    assert wire.spans_to_protobuf(spans) == library_bytes(spans)


def test_spans_of_several_resources_are_grouped_as_the_library_groups_them() -> None:
    a, b = Segment(resource={"service.name": "a"}), Segment(resource={"service.name": "b"})
    spans = [FakeSpan(segment=a), FakeSpan(segment=b), FakeSpan(segment=a, span_id=9)]
    written = wire.spans_to_protobuf(spans)
    assert written == library_bytes(spans)
    request = ExportTraceServiceRequest.FromString(written)
    assert [len(rs.scope_spans[0].spans) for rs in request.resource_spans] == [2, 1]


def test_long_values_are_cut_as_the_library_cuts_them() -> None:
    spans = [
        FakeSpan(
            attributes={
                "s": "x" * (otlp.MAX_VALUE_LENGTH + 10),
                "é": "é" * (otlp.MAX_VALUE_LENGTH + 1),
                "raw": b"\xff" * (otlp.MAX_VALUE_LENGTH + 3),
                "deep": [[[[[["too deep"]]]]]],
                "nan": math.nan,
            }
        )
    ]
    written = wire.spans_to_protobuf(spans)
    assert written == library_bytes(spans)
    attrs = ExportTraceServiceRequest.FromString(written).resource_spans[0]
    values = {kv.key: kv.value for kv in attrs.scope_spans[0].spans[0].attributes}
    assert len(values["s"].string_value) == otlp.MAX_VALUE_LENGTH
    assert len(values["raw"].bytes_value) == otlp.MAX_VALUE_LENGTH


# -- the cache of encoded attribute pairs --------------------------------------------


def test_a_cached_pair_keeps_its_type_and_its_field() -> None:
    # True == 1 and hash alike; the same pair on a span, an event and a link,
    # and in the resource, is written with each one's own field number.
    segment = Segment(resource={"v": 1})
    link = (SpanContext(5, 6, 1), {"v": 1})
    spans = [
        FakeSpan(segment=segment, attributes={"v": True}, events=[("e", 1, {"v": 1})]),
        FakeSpan(segment=segment, attributes={"v": 1}, links=[link]),
        FakeSpan(segment=segment, attributes={"v": True}, events=[("e", 2, {"v": True})]),
    ]
    written = wire.spans_to_protobuf(spans)
    assert written == library_bytes(spans)
    assert wire.spans_to_protobuf(spans) == written  # now from the cache
    first, second, _ = (
        ExportTraceServiceRequest.FromString(written).resource_spans[0].scope_spans[0].spans
    )
    assert first.attributes[0].value.WhichOneof("value") == "bool_value"
    assert second.attributes[0].value.WhichOneof("value") == "int_value"


def test_the_cache_stays_bounded_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "CACHE_SIZE", 8)
    wire._cache.clear()
    spans = [FakeSpan(attributes={f"k{i % 13}": f"v{i % 5}", "n": i}) for i in range(60)]
    assert wire.spans_to_protobuf(spans) == library_bytes(spans)
    assert len(wire._cache) <= 8
    long_value = "x" * (wire.CACHE_VALUE_LENGTH + 1)
    wire.spans_to_protobuf([FakeSpan(attributes={"long": long_value})])
    assert not any(key[1] == "long" for key in wire._cache)


def test_text_that_is_not_utf8_is_replaced_not_refused() -> None:
    # A lone surrogate cannot be UTF-8: the library refuses the whole batch;
    # the direct encoding replaces the character and keeps the span.
    spans = [FakeSpan(name="op\udc80", attributes={"k": "a\ud800b", "ok": "fine"})]
    with pytest.raises(UnicodeEncodeError):
        library_bytes(spans)
    request = ExportTraceServiceRequest.FromString(wire.spans_to_protobuf(spans))
    pb = request.resource_spans[0].scope_spans[0].spans[0]
    assert pb.name == "op?"
    assert [(kv.key, kv.value.string_value) for kv in pb.attributes] == [
        ("k", "a?b"),
        ("ok", "fine"),
    ]


# -- OTLP/JSON lines ---------------------------------------------------------------


def library_json_line(spans: Sequence[Any]) -> bytes:
    doc = otlp.spans_to_json(spans)
    return (json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_spans, min_size=1, max_size=4))
def test_any_span_is_written_as_json_as_the_library_dumps_it(spans: list[FakeSpan]) -> None:
    assert wire.spans_to_json_line(spans) == library_json_line(spans)


def test_the_file_transport_writes_the_direct_json(tmp_path: Path) -> None:
    segment = Segment()
    quoted = {"q": 'say "hi"\n'}
    spans = [
        FakeSpan(segment, attributes={**quoted, "n": 1 << 70, "inf": math.inf}, status_code=2),
        FakeSpan(segment, attributes=quoted, events=[("e", 5, quoted)]),
    ]
    transport = FileTransport(str(tmp_path / "spans.jsonl"))
    line = transport.encode("traces", spans, {})
    assert line == library_json_line(spans)
    assert json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["events"][0][
        "attributes"
    ] == [{"key": "q", "value": {"stringValue": 'say "hi"\n'}}]


def test_json_text_that_is_not_utf8_is_replaced_not_refused() -> None:
    spans = [FakeSpan(name="op\udc80", attributes={"k": "a\ud800b"})]
    with pytest.raises(UnicodeEncodeError):
        library_json_line(spans)
    doc = json.loads(wire.spans_to_json_line(spans))
    pb = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert pb["name"] == "op?"
    assert pb["attributes"] == [{"key": "k", "value": {"stringValue": "a?b"}}]
