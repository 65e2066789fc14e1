"""Builders of OTLP requests shared by the serve tests (ingest, API, consumer, fuzz)."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from crosstrace.server.app import create_app
from crosstrace.server.auth import TokenSet
from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.ingest.pool import DecodePool
from crosstrace.server.model import (
    DependencyEdge,
    LogQuery,
    LogRecord,
    SpanRecord,
    TracePage,
    TraceQuery,
    TraceSummary,
)
from crosstrace.server.scope import Scope
from crosstrace.server.store import Store, open_store

PB = {"content-type": "application/x-protobuf"}
PB_GZIP = {"content-type": "application/x-protobuf", "content-encoding": "gzip"}
JSON = {"content-type": "application/json"}
BASE_NS = 1_763_800_000_000_000_000  # 2025-11-22


def sqlite_url(tmp_path: Path, name: str = "store.sqlite3") -> str:
    return "sqlite:///" + str(tmp_path / name)


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span_request(spans: list[dict[str, Any]], service: str = "nova-api") -> bytes:
    """An ExportTraceServiceRequest; each dict gives SpanRecord-like fields."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", service), kv("host.name", "node-1")])
    scope = rs.scope_spans.add()
    scope.scope.name = "crosstrace"
    for fields in spans:
        sp = scope.spans.add()
        sp.trace_id = fields["trace_id"]
        sp.span_id = fields["span_id"]
        if fields.get("parent_span_id"):
            sp.parent_span_id = fields["parent_span_id"]
        sp.name = fields.get("name", "GET /servers")
        sp.kind = fields.get("kind", 2)
        sp.start_time_unix_nano = fields.get("start_ns", BASE_NS)
        sp.end_time_unix_nano = fields.get("end_ns", sp.start_time_unix_nano + 1_000_000)
        sp.status.code = fields.get("status_code", 0)
        sp.status.message = fields.get("status_message", "")
        sp.attributes.extend(kv(k, v) for k, v in fields.get("attributes", {}).items())
        for event in fields.get("events", []):
            ev = sp.events.add(time_unix_nano=event["time_ns"], name=event["name"])
            ev.attributes.extend(kv(k, v) for k, v in event.get("attributes", {}).items())
    return request.SerializeToString()


def log_request(records: list[dict[str, Any]], service: str = "nova-api") -> bytes:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", service))
    sl = rl.scope_logs.add()
    sl.scope.name = "nova.api"
    for fields in records:
        rec = sl.log_records.add(
            time_unix_nano=fields["time_ns"],
            severity_number=fields.get("severity_number", 9),
            severity_text=fields.get("severity_text", "INFO"),
        )
        rec.body.string_value = fields.get("body", "")
        if fields.get("trace_id"):
            rec.trace_id = fields["trace_id"]
        if fields.get("span_id"):
            rec.span_id = fields["span_id"]
        rec.attributes.extend(kv(k, v) for k, v in fields.get("attributes", {}).items())
    return request.SerializeToString()


def simple_batch(n: int = 5, trace_id: bytes | None = None) -> tuple[bytes, list[bytes]]:
    """One trace of *n* chained spans; returns the body and the span ids."""
    trace_id = trace_id or os.urandom(16)
    ids = [os.urandom(8) for _ in range(n)]
    spans = [
        {
            "trace_id": trace_id,
            "span_id": sid,
            "parent_span_id": ids[i - 1] if i else None,
            "start_ns": BASE_NS + i * 1000,
            "attributes": {"http.request.method": "GET", "seq": i},
        }
        for i, sid in enumerate(ids)
    ]
    return span_request(spans), ids


def gz(body: bytes) -> bytes:
    return gzip.compress(body)


class AppClient:
    """A synchronous client calling the ASGI app in-process (httpx ASGITransport).

    Exceptions escaping the app are raised in the test (a crash is never hidden
    behind a 500)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


@contextmanager
def serve_client(
    store: Store,
    *,
    ingest_tokens: tuple[str, ...] = (),
    api_tokens: tuple[str, ...] = (),
    decode_pool: DecodePool | None = None,
    **limits: int,
) -> Iterator[AppClient]:
    """A TestClient over the one ASGI app of ``serve`` on *store*."""
    app = create_app(
        store,
        ingest_tokens=TokenSet(ingest_tokens),
        api_tokens=TokenSet(api_tokens),
        decode_pool=decode_pool,
        **limits,
    )
    client = AppClient(app)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def opened(url: str) -> Iterator[Store]:
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


class DelegatingStore(Store):
    """Passes every call to a real store; tests override one method to inject a fault."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def submit_batch(self, batch: SpanBatch) -> Future[None]:
        return self.inner.submit_batch(batch)

    def submit_logs(self, logs: Sequence[LogRecord]) -> Future[int]:
        return self.inner.submit_logs(logs)

    def search_traces(self, query: TraceQuery) -> TracePage:
        return self.inner.search_traces(query)

    def get_trace(self, trace_id: bytes, scope: Scope = Scope.ALL) -> list[SpanRecord]:
        return self.inner.get_trace(trace_id, scope)

    def get_trace_summary(self, trace_id: bytes, scope: Scope = Scope.ALL) -> TraceSummary | None:
        return self.inner.get_trace_summary(trace_id, scope)

    def traces_for_request(
        self, request_id: str, limit: int = 100, scope: Scope = Scope.ALL
    ) -> list[TraceSummary]:
        return self.inner.traces_for_request(request_id, limit, scope)

    def search_logs(self, query: LogQuery) -> list[LogRecord]:
        return self.inner.search_logs(query)

    def services(self, scope: Scope = Scope.ALL) -> list[str]:
        return self.inner.services(scope)

    def operations(self, service: str, scope: Scope = Scope.ALL) -> list[str]:
        return self.inner.operations(service, scope)

    def dependencies(
        self, start_ns: int | None, end_ns: int | None, scope: Scope = Scope.ALL
    ) -> list[DependencyEdge]:
        return self.inner.dependencies(start_ns, end_ns, scope)

    def apply_retention(self, max_age_ns: int | None, max_bytes: int | None = None) -> int:
        return self.inner.apply_retention(max_age_ns, max_bytes)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()
