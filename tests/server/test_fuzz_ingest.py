"""Fuzz the ingest endpoints: malformed protobuf, JSON and gzip never give a 5xx.

Each test runs against a store that already holds a known trace and a known log,
and ends by checking they are all still there. The app runs in-process and any
exception escaping it fails the test (a crash is not hidden behind a 500).
Hypothesis generates the bulk; hand-picked cases cover the known nasty shapes
(bombs, deep nesting, huge strings, values the databases refuse).
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_samples import (
    JSON,
    PB,
    PB_GZIP,
    AppClient,
    log_request,
    opened,
    serve_client,
    simple_batch,
)

from crosstrace.server.model import LogQuery
from crosstrace.server.store.base import Store

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
PATHS = ["/v1/traces", "/v1/logs"]


@dataclass
class Seeded:
    client: AppClient
    store: Store
    trace_id: bytes
    span_ids: set[bytes]
    log_trace: bytes

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        status = self.client.post(path, content=body, headers=headers).status_code
        assert status < 500, f"{path} answered {status}"
        return status

    def assert_intact(self) -> None:
        assert {s.span_id for s in self.store.get_trace(self.trace_id)} == self.span_ids
        logs = self.store.search_logs(LogQuery(trace_id=self.log_trace))
        assert [r.body for r in logs] == ["seeded log"]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Seeded]:
    if request.param == "sqlite":
        urls = iter(["sqlite:///" + str(tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite3")])
        cleanup = None
    else:
        base = request.getfixturevalue("postgres_url")
        urls, cleanup = _pg_schema(base)
    try:
        with (
            opened(next(urls)) as store,
            serve_client(
                store, max_body_size=4 * 1024**2, max_decompressed_size=8 * 1024**2
            ) as client,
        ):
            body, ids = simple_batch(6)
            assert client.post("/v1/traces", content=body, headers=PB).status_code == 200
            log_trace = os.urandom(16)
            logs = log_request([{"time_ns": 1, "body": "seeded log", "trace_id": log_trace}])
            assert client.post("/v1/logs", content=logs, headers=PB).status_code == 200
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            tid = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0]
            seeded = Seeded(client, store, bytes(tid.spans[0].trace_id), set(ids), log_trace)
            seeded.assert_intact()
            yield seeded
            seeded.assert_intact()
    finally:
        if cleanup:
            cleanup()


def _pg_schema(base: str) -> tuple[Iterator[str], Any]:
    import psycopg

    schema = "fuzz_" + uuid.uuid4().hex[:10]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop() -> None:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    sep = "&" if "?" in base else "?"
    return iter([f"{base}{sep}options=-csearch_path%3D{schema}"]), drop


# ---------------------------------------------------------------- hypothesis


@FUZZ
@given(body=st.binary(max_size=2048), path=st.sampled_from(PATHS))
def test_random_bytes_as_protobuf(seeded: Seeded, body: bytes, path: str) -> None:
    assert seeded.post(path, body, PB) in (200, 400)
    seeded.assert_intact()


@FUZZ
@given(data=st.data(), path=st.sampled_from(PATHS))
def test_mutated_valid_protobuf(seeded: Seeded, data: st.DataObject, path: str) -> None:
    """A real batch with bytes flipped, cut or inserted: decoded, rejected or refused."""
    valid = (
        simple_batch(3)[0]
        if path == "/v1/traces"
        else log_request([{"time_ns": 5, "body": "x", "trace_id": os.urandom(16)}])
    )
    body = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "flip" and body:
            body[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del body[pos : pos + data.draw(st.integers(1, 16))]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    assert seeded.post(path, bytes(body), PB) in (200, 400)
    seeded.assert_intact()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
SPAN_KEYS = st.sampled_from(
    [
        "traceId",
        "spanId",
        "parentSpanId",
        "name",
        "kind",
        "startTimeUnixNano",
        "endTimeUnixNano",
        "attributes",
        "events",
        "links",
        "status",
        "traceState",
    ]
)
ANY_VALUE_KEYS = st.sampled_from(
    [
        "stringValue",
        "boolValue",
        "intValue",
        "doubleValue",
        "arrayValue",
        "kvlistValue",
        "bytesValue",
    ]
)


@FUZZ
@given(doc=JSON_VALUES, path=st.sampled_from(PATHS))
def test_arbitrary_json_documents(seeded: Seeded, doc: Any, path: str) -> None:
    assert seeded.post(path, json.dumps(doc).encode(), JSON) in (200, 400)
    seeded.assert_intact()


@FUZZ
@given(
    overrides=st.dictionaries(SPAN_KEYS, JSON_VALUES, max_size=4),
    attr_kind=ANY_VALUE_KEYS,
    attr_value=JSON_VALUES,
)
def test_otlp_json_with_wrong_types(
    seeded: Seeded, overrides: dict[str, Any], attr_kind: str, attr_value: Any
) -> None:
    """A well-shaped span whose fields and attribute values get arbitrary JSON."""
    span = {
        "traceId": os.urandom(16).hex(),
        "spanId": os.urandom(8).hex(),
        "name": "fuzz",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        "attributes": [{"key": "k", "value": {attr_kind: attr_value}}],
    }
    span.update(overrides)
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}
    assert seeded.post("/v1/traces", json.dumps(doc).encode(), JSON) in (200, 400)
    log = {"timeUnixNano": "1", "body": {attr_kind: attr_value}, **overrides}
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [log]}]}]}
    assert seeded.post("/v1/logs", json.dumps(logs).encode(), JSON) in (200, 400)
    seeded.assert_intact()


@FUZZ
@given(payload=st.binary(max_size=512), cut=st.integers(0, 64), garbage=st.binary(max_size=16))
def test_broken_gzip(seeded: Seeded, payload: bytes, cut: int, garbage: bytes) -> None:
    compressed = gzip.compress(payload)
    body = compressed[: max(0, len(compressed) - cut)] + garbage
    assert seeded.post("/v1/traces", body, PB_GZIP) in (200, 400)
    seeded.assert_intact()


# ---------------------------------------------------------------- hand-picked


def _span_json(**fields: Any) -> bytes:
    span = {
        "traceId": os.urandom(16).hex(),
        "spanId": os.urandom(8).hex(),
        "name": "x",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        **fields,
    }
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def _nested_attribute(depth: int) -> bytes:
    """A span whose attribute value nests *depth* kvlists (built as text: too deep
    for json.dumps)."""
    value = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth
    value += '{"stringValue": "leaf"}' + "}]}}" * depth
    return _span_json(attributes=[{"key": "k", "value": "@@"}]).replace(b'"@@"', value.encode())


def _deep_protobuf(depth: int) -> bytes:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    # Built from the inside out as raw bytes: protobuf itself refuses to build it.
    inner = AnyValue(string_value="leaf").SerializeToString()
    for _ in range(depth):
        array = b"\x0a" + _varint(len(inner)) + inner  # ArrayValue.values
        inner = b"\x2a" + _varint(len(array)) + array  # AnyValue.array_value
    kv = b"\x0a\x01k" + b"\x12" + _varint(len(inner)) + inner
    span = (
        b"\x0a\x10" + os.urandom(16) + b"\x12\x08" + os.urandom(8) + b"\x4a" + _varint(len(kv)) + kv
    )
    scope_spans = b"\x12" + _varint(len(span)) + span
    resource_spans = b"\x12" + _varint(len(scope_spans)) + scope_spans
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


HAND_PICKED: list[tuple[str, bytes, dict[str, str], set[int]]] = [
    ("gzip bomb", gzip.compress(bytes(16 * 1024 * 1024), 9), PB_GZIP, {413}),
    ("empty gzip", b"", PB_GZIP, {200}),
    ("gzip of nothing", gzip.compress(b""), PB_GZIP, {200}),
    ("truncated gzip", gzip.compress(simple_batch(50)[0])[:100], PB_GZIP, {400}),
    ("json nested 200k deep", b"[" * 200_000 + b"]" * 200_000, JSON, {400}),
    ("json object nested 50k", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, JSON, {400}),
    (
        "any value nested 5000",
        _nested_attribute(5000),
        JSON,
        {400},
    ),
    (
        "any value nested 30",
        _nested_attribute(30),
        JSON,
        {200},
    ),
    ("protobuf nested 200", _deep_protobuf(200), PB, {400}),
    ("protobuf nested 40", _deep_protobuf(40), PB, {200}),
    ("huge name", _span_json(name="n" * (3 * 1024 * 1024)), JSON, {200}),
    ("over the limit", _span_json(name="n" * (5 * 1024 * 1024)), JSON, {413}),
    (
        "NUL everywhere",
        _span_json(
            name="a\u0000b",
            attributes=[{"key": "k\u0000", "value": {"stringValue": "\u0000"}}],
            status={"code": 2, "message": "\u0000"},
        ),
        JSON,
        {200},
    ),
    ("lone surrogates", _span_json(name="\ud800", traceState="\udfff"), JSON, {200}),
    (
        "int beyond int64",
        _span_json(attributes=[{"key": "k", "value": {"intValue": "99999999999999999999"}}]),
        JSON,
        {200},
    ),
    ("time beyond int64", _span_json(startTimeUnixNano="18446744073709551615"), JSON, {200}),
    ("time beyond uint64", _span_json(startTimeUnixNano="18446744073709551616000"), JSON, {400}),
    ("float time", _span_json(startTimeUnixNano=1.5), JSON, {400}),
    ("NaN literal", b'{"resourceSpans": NaN}', JSON, {400}),
    (
        "huge number",
        _span_json(attributes=[{"key": "k", "value": {"doubleValue": 1e999}}]).replace(
            b"Infinity", b"1e999"
        ),
        JSON,
        {200},
    ),
    ("kind 2^40", _span_json(kind=2**40), JSON, {200}),
    (
        "bad base64 bytes",
        _span_json(attributes=[{"key": "k", "value": {"bytesValue": "!!"}}]),
        JSON,
        {400},
    ),
    ("utf-16 json", json.dumps({"resourceSpans": []}).encode("utf-16"), JSON, {200, 400}),
    ("not utf-8", b'{"resourceSpans": [{"x": "\xff"}]}', JSON, {400}),
    ("10k empty resource spans", b"\x0a\x00" * 10_000, PB, {200}),
    ("length beyond body", b"\x0a\xff\xff\xff\xff\x07abc", PB, {400}),
]


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [pytest.param(b, h, e, id=name) for name, b, h, e in HAND_PICKED],
)
def test_hand_picked_bad_input(
    seeded: Seeded, body: bytes, headers: dict[str, str], expected: set[int]
) -> None:
    for path in PATHS:
        status = seeded.post(path, body, headers)
        if path == "/v1/traces":
            assert status in expected
    seeded.assert_intact()


def test_partially_bad_batch_keeps_the_good_spans(seeded: Seeded) -> None:
    """NUL bytes, surrogates and out-of-range values next to a valid span: all storable."""
    trace_id = os.urandom(16)
    spans = [
        {"traceId": trace_id.hex(), "spanId": os.urandom(8).hex(), "name": "a\u0000\ud800"},
        {"traceId": trace_id.hex(), "spanId": "00" * 8, "name": "zero id"},
        {
            "traceId": trace_id.hex(),
            "spanId": os.urandom(8).hex(),
            "startTimeUnixNano": str(2**64 - 1),
        },
    ]
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    response = seeded.client.post("/v1/traces", content=json.dumps(doc), headers=JSON)
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedSpans"] == "2"
    (stored,) = seeded.store.get_trace(trace_id)
    assert stored.name == "a\ufffd?"
    seeded.assert_intact()
