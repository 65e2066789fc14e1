"""The RabbitMQ consumer: ack after commit, reject malformed, requeue on store failure.

The first tests use kombu's in-process ``memory://`` transport (no broker needed)
over a real SQLite store; the last one runs two ``crosstrace serve --consume``
processes on the real RabbitMQ sharing one queue.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from serve_samples import DelegatingStore, log_request, opened, simple_batch, sqlite_url

from crosstrace.server.batch.spanbatch import SpanBatch
from crosstrace.server.ingest.consume import HEADER_SIGNAL, Consumer
from crosstrace.server.ingest.http import OFFLOAD_BYTES, JsonBudget, JsonRefused
from crosstrace.server.ingest.pool import DecodePool
from crosstrace.server.metrics import Metrics
from crosstrace.server.model import LogQuery, SpanRecord
from crosstrace.server.store.base import Store


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def _kombu() -> Any:
    import kombu

    return kombu


def _publish(
    url: str,
    queue: str,
    bodies: Sequence[bytes],
    signal_name: str = "traces",
    headers: dict[str, Any] | None = None,
    content_type: str = "application/x-protobuf",
    content_encoding: str = "binary",
) -> None:
    """Publish like the tracer's AMQP transport does (persistent, header, exchange)."""
    kombu = _kombu()
    exchange = kombu.Exchange("crosstrace", type="direct", durable=True)
    q = kombu.Queue(queue, exchange, routing_key=queue, durable=True)
    with kombu.Connection(url) as conn:
        producer = kombu.Producer(conn.channel(), exchange=exchange)
        for body in bodies:
            producer.publish(
                body,
                routing_key=queue,
                content_type=content_type,
                content_encoding=content_encoding,
                headers={HEADER_SIGNAL: signal_name} if headers is None else headers,
                delivery_mode=2,
                declare=[q],
            )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with opened(sqlite_url(tmp_path)) as s:
        yield s


@pytest.fixture
def memory_url() -> str:
    return "memory://" + uuid.uuid4().hex[:8]


@contextmanager
def _consumer(
    url: str, store: Store, queue: str, pool: DecodePool | None = None
) -> Iterator[Consumer]:
    consumer = Consumer(
        url, store, Metrics(), queue=queue, routing_key=queue, prefetch=4, decode_pool=pool
    )
    consumer.start()
    try:
        assert consumer.ready.wait(10), "consumer did not start"
        yield consumer
    finally:
        consumer.stop()
        consumer.join(10)
        assert not consumer.is_alive()


def test_trace_message_is_stored_then_acked(store: Store, memory_url: str) -> None:
    body, ids = simple_batch(3)
    with _consumer(memory_url, store, "q1") as consumer:
        _publish(memory_url, "q1", [body])
        _wait_for(lambda: consumer.acked == 1, what="ack")
        stored = {s.span_id for s in _all_spans(store, body)}
        assert stored == set(ids)
        assert consumer.metrics.record_count("traces", "written") == 3


def _all_spans(store: Store, body: bytes) -> list[SpanRecord]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest.FromString(body)
    trace_id = req.resource_spans[0].scope_spans[0].spans[0].trace_id
    return store.get_trace(trace_id)


def test_logs_message_is_stored(store: Store, memory_url: str) -> None:
    trace_id = os.urandom(16)
    body = log_request([{"time_ns": 5, "body": "from the bus", "trace_id": trace_id}])
    with _consumer(memory_url, store, "q2") as consumer:
        _publish(memory_url, "q2", [body], signal_name="logs")
        _wait_for(lambda: consumer.acked == 1, what="ack")
    assert [r.body for r in store.search_logs(LogQuery(trace_id=trace_id))] == ["from the bus"]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"\xff\xff\xff", {HEADER_SIGNAL: "traces"}),
        (simple_batch(1)[0], {}),
        (simple_batch(1)[0], {HEADER_SIGNAL: "metrics"}),
    ],
)
def test_malformed_message_is_rejected_without_requeue(
    store: Store, memory_url: str, body: bytes, headers: dict[str, str]
) -> None:
    good, ids = simple_batch(2)
    with _consumer(memory_url, store, "q3") as consumer:
        _publish(memory_url, "q3", [body], headers=headers)
        _publish(memory_url, "q3", [good])
        _wait_for(lambda: consumer.acked == 1 and consumer.rejected == 1, what="settle")
        assert consumer.requeued == 0
    assert {s.span_id for s in _all_spans(store, good)} == set(ids)
    kombu = _kombu()
    with kombu.Connection(memory_url) as conn:  # nothing left, nothing redelivered
        assert conn.SimpleQueue("q3").qsize() == 0


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    p = DecodePool(1)
    yield p
    p.close()


def test_large_message_is_decoded_by_a_worker_then_stored(
    tmp_path: Path, memory_url: str, pool: DecodePool
) -> None:
    """A trace message over the offload size goes through the decode workers and
    is stored exactly as the consumer stores it when it decodes it itself."""
    big, ids = simple_batch(1500)
    small, small_ids = simple_batch(3)
    assert len(big) > OFFLOAD_BYTES > len(small)
    before = pool.decoded
    with (
        opened(sqlite_url(tmp_path, "pool.db")) as there,
        opened(sqlite_url(tmp_path, "here.db")) as here,
    ):
        with _consumer(memory_url, there, "q5", pool) as consumer:
            _publish(memory_url, "q5", [big, small])
            _wait_for(lambda: consumer.acked == 2, what="both acked")
            assert consumer.metrics.record_count("traces", "written") == 1503
        assert pool.decoded == before + 1  # the big one only
        with _consumer(memory_url, here, "q6") as consumer:
            _publish(memory_url, "q6", [big])
            _wait_for(lambda: consumer.acked == 1, what="ack")
        spans = _all_spans(there, big)
        assert [s.span_id for s in spans] == ids
        assert spans == _all_spans(here, big)
        assert {s.span_id for s in _all_spans(there, small)} == set(small_ids)


def test_large_malformed_message_through_a_worker_is_rejected(
    store: Store, memory_url: str, pool: DecodePool
) -> None:
    bad = b"\x0a\xff\xff\xff\xff\x0f" * 20_000
    good, ids = simple_batch(2)
    with _consumer(memory_url, store, "q7", pool) as consumer:
        _publish(memory_url, "q7", [bad, good])
        _wait_for(lambda: consumer.acked == 1 and consumer.rejected == 1, what="settle")
        assert consumer.requeued == 0
    assert {s.span_id for s in _all_spans(store, good)} == set(ids)
    kombu = _kombu()
    with kombu.Connection(memory_url) as conn:
        assert conn.SimpleQueue("q7").qsize() == 0


class _FlakyStore(DelegatingStore):
    """The real store, whose first *failures* span writes fail."""

    def __init__(self, inner: Store, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures

    def submit_batch(self, batch: SpanBatch) -> Future[None]:
        if self.failures > 0:
            self.failures -= 1
            failed: Future[None] = Future()
            failed.set_exception(OSError("database is locked"))
            return failed
        return self.inner.submit_batch(batch)


def test_store_failure_requeues_and_the_retry_is_stored(store: Store, memory_url: str) -> None:
    body, ids = simple_batch(2)
    flaky = _FlakyStore(store, failures=1)
    with _consumer(memory_url, flaky, "q4") as consumer:
        _publish(memory_url, "q4", [body])
        _wait_for(lambda: consumer.acked == 1, what="ack after requeue")
        assert consumer.requeued == 1
    assert {s.span_id for s in _all_spans(store, body)} == set(ids)


# ------------------------------------------------------------------ real RabbitMQ


def test_json_bomb_over_rabbitmq_is_rejected_within_the_memory_bound(
    store: Store, amqp_url: str, amqp_queue_name: str
) -> None:
    """A small gzip message whose JSON would take far more than 20x its size to
    decode is refused before decoding (as on HTTP ingest), rejected without
    requeue and counted; the good message after it is stored."""
    inflated = b'{"resourceSpans":[' + b",".join([b"{}"] * 400_000) + b"]}"
    bomb = gzip.compress(inflated, compresslevel=9)
    assert len(bomb) < 8 * 1024 < len(inflated) // 100
    cost = JsonBudget(2**62).reserve
    with pytest.raises(JsonRefused) as refused:
        cost(inflated)
    assert refused.value.status_code == 413
    good, ids = simple_batch(2)
    with _consumer(amqp_url, store, amqp_queue_name) as consumer:
        _publish(
            amqp_url,
            amqp_queue_name,
            [bomb],
            content_type="application/json",
            content_encoding="gzip",
        )
        _publish(amqp_url, amqp_queue_name, [good])
        _wait_for(lambda: consumer.acked == 1 and consumer.rejected == 1, what="settle")
        assert consumer.requeued == 0
        assert consumer.metrics.request_count("amqp", "traces", "rejected") == 1
        assert consumer.json_budget.used == 0
    assert {s.span_id for s in _all_spans(store, good)} == set(ids)
    kombu = _kombu()
    with kombu.Connection(amqp_url) as conn:  # nothing left, nothing redelivered
        queue = kombu.Queue(amqp_queue_name, durable=True)(conn.channel())
        _, left, _ = queue.queue_declare(passive=True)
        queue.delete()
    assert left == 0


def _serve_consume(db: str, amqp_url: str, queue: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-c",
        "from crosstrace.cli import main; main()",
        "serve",
        "--db",
        db,
        "--consume",
        amqp_url,
        "--no-http",
        "--queue",
        queue,
        "--routing-key",
        queue,
        "--prefetch",
        "2",
        "--decode-workers",
        "1",
        "--retention",
        "off",
    ]
    env = {**os.environ, "CROSSTRACE_CONFIG": ""}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


@pytest.mark.rabbitmq
def test_two_serve_processes_share_one_queue(
    amqp_url: str, amqp_queue_name: str, tmp_path: Path
) -> None:
    """Both consume, every batch is stored exactly once across the two stores."""
    kombu = _kombu()
    dbs = [sqlite_url(tmp_path, f"consumer{i}.sqlite3") for i in range(2)]
    procs = [
        _serve_consume(db, amqp_url, amqp_queue_name, tmp_path / f"consumer{i}.log")
        for i, db in enumerate(dbs)
    ]
    try:
        with kombu.Connection(amqp_url) as conn:
            channel = conn.channel()

            def consumers() -> int:
                q = kombu.Queue(amqp_queue_name, durable=True)(channel)
                _, _, count = q.queue_declare(passive=True)
                return int(count)

            _wait_for(lambda: _queue_exists(conn, amqp_queue_name), what="queue declared")
            _wait_for(lambda: consumers() == 2, what="two consumers")
            # Small batches, and a few over the size that serve's decode workers take.
            batches = [simple_batch(5) for _ in range(60)] + [simple_batch(1500) for _ in range(6)]
            _publish(amqp_url, amqp_queue_name, [b for b, _ in batches])
            traces = [_trace_of(b) for b, _ in batches]
            sizes = {t: len(ids) for t, (_, ids) in zip(traces, batches, strict=True)}

            def stored_everywhere() -> list[set[bytes]]:
                found = []
                for db in dbs:
                    with opened(db) as store:
                        found.append({t for t in traces if store.get_trace(t)})
                return found

            _wait_for(
                lambda: len(set().union(*stored_everywhere())) == len(traces),
                timeout=60,
                what="every batch stored",
            )
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0
        first, second = stored_everywhere()
        assert first, "the first process consumed some batches"
        assert second, "the second process consumed some batches"
        assert not first & second, "no batch stored twice"
        for db, stored in zip(dbs, (first, second), strict=True):
            with opened(db) as store:
                for t in stored:
                    assert len(store.get_trace(t)) == sizes[t]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with kombu.Connection(amqp_url) as conn:
            kombu.Queue(amqp_queue_name)(conn.channel()).delete()


def _queue_exists(conn: Any, name: str) -> bool:
    kombu = _kombu()
    try:
        kombu.Queue(name)(conn.channel()).queue_declare(passive=True)
    except conn.channel_errors:
        return False
    return True


def _trace_of(body: bytes) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest.FromString(body)
    return bytes(req.resource_spans[0].scope_spans[0].spans[0].trace_id)
