"""Trace bodies decoded and prepared in worker processes are stored exactly as
the ones the server decodes itself."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from serve_samples import BASE_NS, PB, opened, serve_client, span_request, sqlite_url

from crosstrace.server.ingest.pool import DecodePool
from crosstrace.server.store.base import Store

MS = 10**6


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    p = DecodePool(1)
    yield p
    p.close()


def _traces(n_traces: int, spans_per_trace: int) -> tuple[list[bytes], bytes]:
    """A request of several traces with parents, ids and indexed attributes, large
    enough to be sent to the decode workers."""
    spans = []
    trace_ids = [os.urandom(16) for _ in range(n_traces)]
    for t, trace_id in enumerate(trace_ids):
        ids = [os.urandom(8) for _ in range(spans_per_trace)]
        for k, span_id in enumerate(ids):
            spans.append(
                {
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": ids[k // 2] if k else None,
                    "name": f"op-{k % 4}",
                    "kind": 3 if k % 3 == 0 else 1,
                    "start_ns": BASE_NS + t * 1000 * MS + k * MS,
                    "status_code": 2 if k == spans_per_trace - 1 and t % 5 == 0 else 0,
                    "attributes": {
                        "openstack.project_id": f"project-{t % 3}",
                        "openstack.request_id": f"req-{trace_id.hex()[:8]}-1111-4111-8111-"
                        f"{trace_id.hex()[:12]}",
                        "http.request.method": "GET",
                        "url.path": f"/v2.1/servers/{t}/{k}",
                        "n": k,
                    },
                }
            )
    return trace_ids, span_request(spans)


def _post(store: Store, body: bytes, pool: DecodePool | None) -> ExportTraceServiceResponse:
    with serve_client(store, decode_pool=pool) as client:
        r = client.post("/v1/traces", content=body, headers=PB)
    assert r.status_code == 200, r.text
    return ExportTraceServiceResponse.FromString(r.content)


def test_worker_prepared_traces_equal_server_prepared(tmp_path: Path, pool: DecodePool) -> None:
    trace_ids, body = _traces(40, 12)
    assert len(body) > 64 * 1024  # goes to the workers
    before = pool.decoded
    with (
        opened(sqlite_url(tmp_path, "a.db")) as here,
        opened(sqlite_url(tmp_path, "b.db")) as there,
    ):
        _post(here, body, None)
        _post(there, body, pool)
        assert pool.decoded == before + 1
        for trace_id in trace_ids:
            spans = there.get_trace(trace_id)
            assert len(spans) == 12
            assert spans == here.get_trace(trace_id)
            assert there.get_trace_summary(trace_id) == here.get_trace_summary(trace_id)


def test_malformed_body_through_workers_is_400(tmp_path: Path, pool: DecodePool) -> None:
    with opened(sqlite_url(tmp_path)) as store, serve_client(store, decode_pool=pool) as client:
        r = client.post("/v1/traces", content=b"\x0a\xff\xff\xff\xff\x0f" * 20_000, headers=PB)
        assert r.status_code == 400
        assert "not a valid OTLP protobuf" in r.text
        assert store.stats()["spans_written"] == 0


def test_rejected_spans_through_workers_are_reported(tmp_path: Path, pool: DecodePool) -> None:
    trace_ids, body = _traces(40, 12)
    bad = span_request([{"trace_id": bytes(16), "span_id": os.urandom(8)}])
    with opened(sqlite_url(tmp_path)) as store:
        response = _post(store, body + bad, pool)  # two ResourceSpans concatenated
        assert response.partial_success.rejected_spans == 1
        assert "invalid trace id" in response.partial_success.error_message
        assert len(store.get_trace(trace_ids[0])) == 12


def test_a_dead_worker_loses_no_request(tmp_path: Path) -> None:
    """A worker killed between requests: the next request is still stored (in the
    server process) and the pool serves the one after with new workers."""
    p = DecodePool(1)
    try:
        for pid in list(p._pool._processes or {}):
            os.kill(pid, signal.SIGKILL)
        first, body1 = _traces(40, 12)
        second, body2 = _traces(40, 12)
        with opened(sqlite_url(tmp_path)) as store:
            _post(store, body1, p)
            _post(store, body2, p)
            assert len(store.get_trace(first[0])) == 12
            assert len(store.get_trace(second[-1])) == 12
            assert p.restarts == 1
    finally:
        p.close()


def test_workers_get_the_dictionary_once_then_by_token(
    tmp_path: Path, pool: DecodePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's dictionary goes to the workers with the first batches after
    it is trained, then by token only; a worker that never got it leaves its
    chunks raw, the store compresses them and sends the bytes again."""
    from crosstrace.server.store import zdict

    monkeypatch.setattr(zdict, "TRAININGS", ((30, 1 << 30, 1),))
    with opened(sqlite_url(tmp_path)) as store:
        _post(store, _traces(40, 12)[1], None)  # 40 chunks: the 30th trains it
        did, token, data = store.compression()  # type: ignore[misc]
        assert data is not None
        _post(store, _traces(40, 12)[1], pool)  # the worker keeps it
        sent = [store.compression()[2] is not None for _ in range(zdict.SHIP_BATCHES)]  # type: ignore[index]
        assert sent == [True] * (zdict.SHIP_BATCHES - 2) + [False] * 2
        _post(store, _traces(40, 12)[1], pool)  # by token: compressed there
        assert store.compression() == (did, token, None)
        fresh = DecodePool(1)
        try:
            ids, body = _traces(40, 12)
            _post(store, body, fresh)  # never got the bytes: raw chunks
        finally:
            fresh.close()
        assert store.compression() == (did, token, data)
        for trace_id in ids:
            assert len(store.get_trace(trace_id)) == 12
        with store._reader() as conn:  # type: ignore[attr-defined]
            (chunk,) = conn.execute(
                "SELECT data FROM chunks WHERE trace_id = ?", (ids[0],)
            ).fetchone()
        assert int.from_bytes(chunk[1:5], "big") == did
