"""OTLP/HTTP ingest against the real SQLite store: status codes, limits, commits."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from serve_samples import (
    JSON,
    PB,
    PB_GZIP,
    DelegatingStore,
    gz,
    log_request,
    opened,
    serve_client,
    simple_batch,
    span_request,
    sqlite_url,
)

from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.ingest.http import gunzip_capped
from crosstrace.server.model import LogQuery, LogRecord
from crosstrace.server.store.base import Store

REALDATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata" / "otlp"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened(sqlite_url(tmp_path)) as s:
        yield s


def test_protobuf_gzip_batch_is_committed_before_200(store: Store) -> None:
    """After the 200 the spans are readable: the answer waited for the commit."""
    body, ids = simple_batch(5)
    with serve_client(store) as client:
        r = client.post("/v1/traces", content=gz(body), headers=PB_GZIP)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")
    trace_id = bytes.fromhex(_trace_hex(body))
    assert sorted(s.span_id for s in store.get_trace(trace_id)) == sorted(ids)


def _trace_hex(body: bytes) -> str:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest.FromString(body)
    return str(req.resource_spans[0].scope_spans[0].spans[0].trace_id.hex())


def test_realdata_json_examples_are_stored(store: Store) -> None:
    if not REALDATA.exists():
        pytest.skip("real data is absent")
    with serve_client(store) as client:
        r1 = client.post("/v1/traces", content=(REALDATA / "trace.json").read_bytes(), headers=JSON)
        r2 = client.post("/v1/logs", content=(REALDATA / "logs.json").read_bytes(), headers=JSON)
    assert (r1.status_code, r1.json()) == (200, {})
    assert (r2.status_code, r2.json()) == (200, {})
    trace_id = bytes.fromhex("5b8efff798038103d269b633813fc60c")
    assert [s.name for s in store.get_trace(trace_id)] == ["I'm a server span"]
    assert [r.body for r in store.search_logs(LogQuery(trace_id=trace_id))] == [
        "Example log record"
    ]


def test_partial_success_counts_rejected_spans(store: Store) -> None:
    trace_id = os.urandom(16)
    good = {"trace_id": trace_id, "span_id": os.urandom(8)}
    body = span_request([good, {"trace_id": bytes(16), "span_id": os.urandom(8)}])
    with serve_client(store) as client:
        r = client.post("/v1/traces", content=body, headers=PB)
    assert r.status_code == 200
    response = ExportTraceServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_spans == 1
    assert "invalid trace id" in response.partial_success.error_message
    assert [s.span_id for s in store.get_trace(trace_id)] == [good["span_id"]]


def test_partial_success_in_json_for_a_json_request(store: Store) -> None:
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": "ab" * 16, "spanId": "cd" * 8},
                            {"traceId": "ab" * 16, "spanId": "xyz"},
                        ]
                    }
                ]
            }
        ]
    }
    with serve_client(store) as client:
        r = client.post("/v1/traces", content=json.dumps(doc), headers=JSON)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"


def test_logs_are_committed_and_answered_in_protobuf(store: Store) -> None:
    trace_id = os.urandom(16)
    body = log_request(
        [{"time_ns": 10, "body": "hello", "trace_id": trace_id, "severity_number": 17}]
    )
    with serve_client(store) as client:
        r = client.post("/v1/logs", content=body, headers=PB)
    assert r.status_code == 200
    ExportLogsServiceResponse.FromString(r.content)
    (record,) = store.search_logs(LogQuery(trace_id=trace_id))
    assert (record.body, record.severity_number) == ("hello", 17)


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ({"content-type": "text/plain"}, 415, "unsupported Content-Type"),
        ({}, 415, "unsupported Content-Type"),
        ({**PB, "content-encoding": "br"}, 415, "unsupported Content-Encoding"),
        ({**PB, "content-length": "abc"}, 400, "Content-Length"),
    ],
)
def test_bad_headers_get_clear_errors(
    store: Store, headers: dict[str, str], status: int, message: str
) -> None:
    body, _ = simple_batch(1)
    with serve_client(store) as client:
        r = client.post("/v1/traces", content=body, headers=headers)
    assert r.status_code == status
    assert message.encode() in r.content


def test_wrong_method_and_path(store: Store) -> None:
    with serve_client(store) as client:
        r = client.get("/v1/traces")
        assert (r.status_code, r.headers["allow"]) == (405, "POST")
        assert client.post("/v1/metrics", content=b"", headers=PB).status_code == 404


def test_compressed_body_over_the_limit_is_413(store: Store) -> None:
    body = os.urandom(5000)  # incompressible
    with serve_client(store, max_body_size=4096) as client:
        r = client.post("/v1/traces", content=gz(body), headers=PB_GZIP)
    assert r.status_code == 413


def test_gzip_bomb_is_413_without_inflating_it(store: Store) -> None:
    """32 MiB of zeros compress to ~32 KiB: refused at the decompressed cap."""
    bomb = gzip.compress(bytes(32 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 64 * 1024
    with serve_client(store, max_decompressed_size=1024 * 1024) as client:
        r = client.post("/v1/traces", content=bomb, headers=PB_GZIP)
    assert r.status_code == 413
    assert b"decompressed body exceeds" in r.content


def test_gunzip_capped_never_returns_more_than_the_cap() -> None:
    data = gzip.compress(bytes(10_000))
    assert gunzip_capped(data, 10_000) == bytes(10_000)
    with pytest.raises(OverflowError):
        gunzip_capped(data, 9_999)
    two_members = gzip.compress(b"ab") + gzip.compress(b"cd")
    assert gunzip_capped(two_members, 100) == b"abcd"


@pytest.mark.parametrize(
    "body",
    [
        gzip.compress(b"x" * 1000)[:-10],  # truncated
        b"\x1f\x8b\x08\x00garbage",
        zlib.compress(b"not gzip but zlib"),
        gzip.compress(b"ok") + b"trailing junk",
    ],
)
def test_bad_gzip_is_400(store: Store, body: bytes) -> None:
    with serve_client(store) as client:
        r = client.post("/v1/traces", content=body, headers=PB_GZIP)
    assert r.status_code == 400
    assert b"gzip" in r.content


def test_malformed_protobuf_is_400_with_message(store: Store) -> None:
    with serve_client(store) as client:
        r = client.post("/v1/traces", content=b"\x0a\x05abc", headers=PB)
    assert r.status_code == 400
    assert b"not a valid OTLP protobuf" in r.content


class _FailingStore(DelegatingStore):
    """The real SQLite store, whose writes fail as when its disk is full."""

    def submit_batch(self, batch: SpanBatch) -> Future[None]:
        failed: Future[None] = Future()
        failed.set_exception(OSError("disk full"))
        return failed

    def submit_logs(self, logs: Sequence[LogRecord]) -> Future[int]:
        raise OSError("disk full")


def test_store_failure_is_503_with_retry_after(store: Store) -> None:
    """A store that cannot commit gives 503 + Retry-After (the client retries), not 500."""
    body, _ = simple_batch(2)
    with serve_client(_FailingStore(store)) as client:
        r = client.post("/v1/traces", content=body, headers=PB)
        assert (r.status_code, r.headers["retry-after"]) == (503, "5")
        r = client.post("/v1/logs", content=log_request([{"time_ns": 1}]), headers=PB)
        assert r.status_code == 503
        assert 'crosstrace_records_written_total{signal="traces"} 0' in client.get("/metrics").text


def test_ingest_token_is_required_when_configured(store: Store) -> None:
    body, _ = simple_batch(1)
    with serve_client(store, ingest_tokens=("s3cret",)) as client:
        assert client.post("/v1/traces", content=body, headers=PB).status_code == 401
        wrong = {**PB, "authorization": "Bearer nope"}
        r = client.post("/v1/traces", content=body, headers=wrong)
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
        ok = {**PB, "authorization": "Bearer s3cret"}
        assert client.post("/v1/traces", content=body, headers=ok).status_code == 200


def test_metrics_count_requests_and_records(store: Store) -> None:
    body, _ = simple_batch(4)
    with serve_client(store) as client:
        client.post("/v1/traces", content=body, headers=PB)
        client.post("/v1/traces", content=b"junk", headers=JSON)
        text = client.get("/metrics").text
    assert 'crosstrace_records_received_total{signal="traces"} 4' in text
    assert 'crosstrace_records_written_total{signal="traces"} 4' in text
    assert (
        'crosstrace_ingest_requests_total{transport="http",signal="traces",status="200"} 1' in text
    )
    assert (
        'crosstrace_ingest_requests_total{transport="http",signal="traces",status="400"} 1' in text
    )
    assert "crosstrace_write_latency_seconds_count 1" in text
    assert "crosstrace_write_queue_depth 0" in text
