"""The batching exporter against real receivers, a hanging and a refusing endpoint,
RabbitMQ (real and memory://), and a JSON-lines file."""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from crosstrace import export, propagation, tracing
from crosstrace.context import RequestContext, use_context
from crosstrace.export import (
    AmqpTransport,
    BatchExporter,
    ExportError,
    FileTransport,
    LogData,
    OtlpHttpTransport,
    RetryableExportError,
    Transport,
    _retry_after,
)
from crosstrace.tracing import Span, SpanKind, StatusCode, Tracer, span
from crosstrace.tracing import tracer as tr


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll *cond* until true or the deadline passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


class Receiver:
    """A real OTLP/HTTP receiver on 127.0.0.1 that decodes protobuf bodies."""

    def __init__(self, statuses: Sequence[int] = (), retry_after: str | None = None) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.statuses = list(statuses)
        self.retry_after = retry_after
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append((self.path, headers))
                if receiver.statuses:
                    status = receiver.statuses.pop(0)
                    self.send_response(status)
                    if receiver.retry_after is not None:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver.traces.append(ExportTraceServiceRequest.FromString(body))
                else:
                    receiver.logs.append(ExportLogsServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def spans(self) -> list[Any]:
        return [
            s
            for req in self.traces
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class HangingServer:
    """Accepts TCP connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


def refused_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def make_spans(n: int) -> list[Span]:
    """Recorded spans from a real tracer (kept segments of one span each)."""
    out: list[Span] = []

    class Collect:
        def export_spans(self, spans: Sequence[Span]) -> None:
            out.extend(spans)

        def cpu_ns(self) -> int:
            return 0

    previous = tr.get_tracer()
    tr._set_tracer(Tracer("svc-export", sink=Collect(), sample_ratio=1.0))
    try:
        for i in range(n):
            with span(f"op{i}"):
                pass
    finally:
        tr._set_tracer(previous)
    return out


@pytest.fixture
def traced(receiver: Receiver) -> Iterator[tuple[Tracer, BatchExporter]]:
    previous = tr.get_tracer()
    exporter = BatchExporter(OtlpHttpTransport(receiver.url), max_delay_s=0.05)
    tracer = Tracer("svc-a", sink=exporter, sample_ratio=1.0, overhead_budget=0.0)
    exporter.resource = tracer.resource
    tr._set_tracer(tracer)
    yield tracer, exporter
    tr._set_tracer(previous)
    exporter.shutdown(2.0)


# -- a real OTLP/HTTP receiver -------------------------------------------------------------


def test_spans_arrive_at_a_real_receiver_field_by_field(
    receiver: Receiver, traced: tuple[Tracer, BatchExporter]
) -> None:
    _, exporter = traced
    ctx = RequestContext(project_id="proj-1", user_id="user-1")
    with use_context(ctx):
        server = propagation.start_server_span(
            "GET /v2/servers",
            {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            attributes={"http.request.method": "GET"},
        )
        token = tracing.activate(server)

        def call_image() -> None:
            with span("call image", kind=SpanKind.CLIENT) as c:
                c.set_attribute("password", "hunter2")
                raise ConnectionError("image service down")

        with pytest.raises(ConnectionError):
            call_image()
        server.set_status(StatusCode.ERROR, "HTTP 503")
        tracing.deactivate(token)
        server.end()
    assert exporter.force_flush(5.0)
    path, headers = receiver.requests[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    (rs,) = receiver.traces[0].resource_spans
    resource = {kv.key: kv.value for kv in rs.resource.attributes}
    assert resource["service.name"].string_value == "svc-a"
    assert resource["process.pid"].int_value == os.getpid()
    assert resource["host.name"].string_value == socket.gethostname()
    client, srv = receiver.spans()
    assert srv.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert srv.parent_span_id.hex() == "b7ad6b7169203331"
    assert srv.kind == 2
    assert srv.name == "GET /v2/servers"
    assert srv.status.code == 2
    assert srv.status.message == "HTTP 503"
    srv_attrs = {kv.key: kv.value.string_value for kv in srv.attributes}
    assert srv_attrs["http.request.method"] == "GET"
    assert srv_attrs["openstack.request_id"] == ctx.request_id
    assert srv_attrs["openstack.project_id"] == "proj-1"
    assert srv_attrs["openstack.user_id"] == "user-1"
    assert client.trace_id == srv.trace_id
    assert client.parent_span_id == srv.span_id
    assert client.kind == 3
    assert client.status.code == 2
    assert client.status.message == "ConnectionError: image service down"
    assert {kv.key: kv.value.string_value for kv in client.attributes} == {"password": "***"}
    (ev,) = client.events
    ev_attrs = {kv.key: kv.value for kv in ev.attributes}
    assert ev.name == "exception"
    assert ev_attrs["exception.type"].string_value == "ConnectionError"
    assert ev_attrs["exception.message"].string_value == "image service down"
    assert "ConnectionError" in ev_attrs["exception.stacktrace"].string_value
    assert ev_attrs["exception.escaped"].bool_value is True
    assert exporter.stats()["spans_exported"] == 2


def test_log_records_arrive_at_v1_logs(receiver: Receiver) -> None:
    exporter = BatchExporter(OtlpHttpTransport(receiver.url), {"service.name": "svc-l"})
    try:
        exporter.export_log(LogData("boom", severity_number=17, severity_text="ERROR"))
        assert exporter.force_flush(5.0)
    finally:
        exporter.shutdown(2.0)
    assert receiver.requests[0][0] == "/v1/logs"
    (lr,) = receiver.logs[0].resource_logs[0].scope_logs[0].log_records
    assert lr.body.string_value == "boom"
    assert lr.severity_text == "ERROR"
    assert exporter.stats()["logs_exported"] == 1


def test_batches_respect_batch_size(receiver: Receiver) -> None:
    exporter = BatchExporter(OtlpHttpTransport(receiver.url), batch_size=10, max_delay_s=5.0)
    try:
        exporter.export_spans(make_spans(25))
        assert exporter.force_flush(5.0)
    finally:
        exporter.shutdown(2.0)
    sizes = [len(r.resource_spans[0].scope_spans[0].spans) for r in receiver.traces]
    assert sizes == [10, 10, 5]


def test_full_batch_wakes_the_thread_before_the_delay(receiver: Receiver) -> None:
    exporter = BatchExporter(OtlpHttpTransport(receiver.url), batch_size=5, max_delay_s=60.0)
    try:
        exporter.export_spans(make_spans(5))
        assert wait_for(lambda: exporter.stats()["spans_exported"] == 5, 10.0)
    finally:
        exporter.shutdown(2.0)


def test_retryable_status_is_retried_then_exported() -> None:
    r = Receiver(statuses=[503, 429], retry_after="0")
    exporter = BatchExporter(OtlpHttpTransport(r.url), backoff_s=0.01)
    try:
        exporter.export_spans(make_spans(3))
        assert exporter.force_flush(10.0)
        assert exporter.stats()["retries"] == 2
        assert exporter.stats()["spans_exported"] == 3
        assert len(r.spans()) == 3
    finally:
        exporter.shutdown(2.0)
        r.close()


def test_non_retryable_status_fails_the_batch_without_retry() -> None:
    r = Receiver(statuses=[400])
    exporter = BatchExporter(OtlpHttpTransport(r.url), backoff_s=0.01)
    try:
        exporter.export_spans(make_spans(3))
        assert exporter.force_flush(10.0)
        st = exporter.stats()
        assert (st["retries"], st["batches_failed"], st["spans_failed"]) == (0, 1, 3)
    finally:
        exporter.shutdown(2.0)
        r.close()


def test_retry_after_header_is_parsed() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after("100000") == export.MAX_RETRY_AFTER_S
    assert _retry_after("garbage") is None
    assert _retry_after(None) is None
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    delay = _retry_after(http_date)
    assert delay is not None
    assert 25 <= delay <= 31


def test_backoff_honours_retry_after_and_grows_with_jitter() -> None:
    exporter = BatchExporter(Transport(), backoff_s=1.0, max_backoff_s=8.0)
    try:
        assert exporter._delay(0, RetryableExportError("x", retry_after=3.0)) == 3.0
        for attempt, base in ((0, 1.0), (2, 4.0), (5, 8.0)):
            d = exporter._delay(attempt, RetryableExportError("x"))
            assert 0.5 * base <= d <= 1.5 * base
    finally:
        exporter.shutdown(1.0)


# -- endpoints that hang or refuse -----------------------------------------------------------


def test_hanging_endpoint_never_blocks_enqueue_and_shutdown_keeps_its_timeout() -> None:
    hang = HangingServer()
    exporter = BatchExporter(
        OtlpHttpTransport(hang.url, timeout_s=30.0),
        queue_size=100,
        batch_size=10,
        max_delay_s=0.01,
    )
    spans = make_spans(10)
    try:
        for _ in range(200):
            exporter.export_spans(spans)  # 2000 spans into a queue of 100
            assert exporter.queue_length() <= 100
        # The thread is stuck in a request the endpoint never answers.
        assert wait_for(lambda: len(hang.conns) >= 1)
        st = exporter.stats()
        assert st["spans_dropped"] >= 2000 - 100 - 10
        assert st["spans_queued"] + st["spans_dropped"] == 2000
        start = time.monotonic()
        exporter.shutdown(1.0)
        assert time.monotonic() - start < 1.5
        assert exporter.stats()["spans_exported"] == 0
    finally:
        hang.close()


def test_refusing_endpoint_counts_failures_and_never_raises() -> None:
    exporter = BatchExporter(
        OtlpHttpTransport(refused_url()),
        queue_size=50,
        batch_size=10,
        max_delay_s=0.01,
        max_retries=2,
        backoff_s=0.01,
    )
    try:
        for _ in range(20):
            exporter.export_spans(make_spans(5))
            assert exporter.queue_length() <= 50
        assert wait_for(lambda: exporter.stats()["batches_failed"] >= 1)
        st = exporter.stats()
        assert st["retries"] >= 2
        assert st["spans_dropped"] > 0
        assert st["spans_exported"] == 0
    finally:
        start = time.monotonic()
        exporter.shutdown(1.0)
        assert time.monotonic() - start < 1.5


def test_enqueue_after_shutdown_is_dropped_and_counted(receiver: Receiver) -> None:
    exporter = BatchExporter(OtlpHttpTransport(receiver.url))
    exporter.shutdown(2.0)
    exporter.export_spans(make_spans(3))
    exporter.export_log(LogData("x"))
    st = exporter.stats()
    assert (st["spans_dropped"], st["logs_dropped"]) == (3, 1)


def test_stats_are_logged_when_something_was_dropped(caplog: pytest.LogCaptureFixture) -> None:
    hang = HangingServer()
    exporter = BatchExporter(
        OtlpHttpTransport(hang.url, timeout_s=0.2),
        queue_size=5,
        max_delay_s=0.01,
        max_retries=0,
        stats_interval_s=0.05,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="crosstrace.export"):
            exporter.export_spans(make_spans(10))  # more than the queue holds
            assert wait_for(lambda: any("spans dropped" in r.message for r in caplog.records))
        msg = next(r.getMessage() for r in caplog.records if "spans dropped" in r.message)
        assert "10 spans dropped" in msg
    finally:
        exporter.shutdown(1.0)
        hang.close()


def test_module_stats_report_the_active_exporter(receiver: Receiver) -> None:
    exporter = BatchExporter(OtlpHttpTransport(receiver.url))
    try:
        export.set_active(exporter)
        exporter.export_spans(make_spans(2))
        assert exporter.force_flush(5.0)
        assert export.stats()["spans_exported"] == 2
        export.set_active(None)
        assert export.stats()["spans_exported"] == 0
    finally:
        export.set_active(None)
        exporter.shutdown(2.0)


def test_constructor_validates_sizes() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        BatchExporter(Transport(), queue_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        BatchExporter(Transport(), batch_size=0)
    with pytest.raises(ValueError, match="endpoint"):
        OtlpHttpTransport("ftp://x")


def test_encode_failure_counts_the_batch_as_failed() -> None:
    class Broken(Transport):
        def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
            raise TypeError("cannot encode")

    exporter = BatchExporter(Broken())
    try:
        exporter.export_spans(make_spans(2))
        assert exporter.force_flush(5.0)
        assert exporter.stats()["spans_failed"] == 2
    finally:
        exporter.shutdown(1.0)


def test_transport_error_is_not_retried() -> None:
    class Refusing(Transport):
        calls = 0

        def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
            return b""

        def send(self, signal: str, payload: bytes) -> None:
            Refusing.calls += 1
            raise ExportError("no")

    exporter = BatchExporter(Refusing())
    try:
        exporter.export_spans(make_spans(1))
        assert exporter.force_flush(5.0)
        assert Refusing.calls == 1
        assert exporter.stats()["batches_failed"] == 1
    finally:
        exporter.shutdown(1.0)


# -- fork ----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_after_fork_gets_an_empty_queue_and_a_live_thread(receiver: Receiver) -> None:
    exporter = BatchExporter(OtlpHttpTransport(receiver.url), max_delay_s=60.0)
    try:
        exporter.export_spans(make_spans(3))  # queued in the parent, not yet sent
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                ok = exporter.queue_length() == 0 and exporter._thread.is_alive()
                exporter.export_spans(make_spans(1))
                ok = ok and exporter.force_flush(5.0)
                os.write(write_fd, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write_fd)
        result = os.read(read_fd, 1)
        os.close(read_fd)
        os.waitpid(pid, 0)
        assert result == b"1"
        assert exporter.force_flush(5.0)
        assert len(receiver.spans()) == 4  # 1 from the child, 3 from the parent
    finally:
        exporter.shutdown(2.0)


# -- RabbitMQ -------------------------------------------------------------------------------


def _consume_one(url: str, exchange: str, queue: str) -> Any:
    import kombu

    with kombu.Connection(url) as conn:
        q = kombu.Queue(
            queue, kombu.Exchange(exchange, type="direct", durable=True), routing_key="otlp"
        )
        simple = conn.SimpleQueue(q)
        try:
            msg = simple.get(timeout=10)
            msg.ack()
            return msg
        finally:
            simple.close()


def _check_amqp(url: str, queue: str) -> None:
    exchange = "crosstrace-test-" + uuid.uuid4().hex[:8]
    transport = AmqpTransport(url, exchange=exchange, queue=queue, timeout_s=5.0)
    exporter = BatchExporter(transport, {"service.name": "svc-amqp"})
    try:
        exporter.export_spans(make_spans(3))
        exporter.export_log(LogData("log line"))
        assert exporter.force_flush(10.0)
        assert exporter.stats()["spans_exported"] == 3
        msg = _consume_one(url, exchange, queue)
        assert msg.content_type == "application/x-protobuf"
        assert msg.content_encoding == "binary"
        assert msg.headers["otlp-signal"] == "traces"
        assert msg.properties.get("delivery_mode") == 2
        req = ExportTraceServiceRequest.FromString(msg.body)
        assert [s.name for s in req.resource_spans[0].scope_spans[0].spans] == [
            "op0",
            "op1",
            "op2",
        ]
        log_msg = _consume_one(url, exchange, queue)
        assert log_msg.headers["otlp-signal"] == "logs"
        logs = ExportLogsServiceRequest.FromString(log_msg.body)
        assert logs.resource_logs[0].scope_logs[0].log_records[0].body.string_value == "log line"
    finally:
        exporter.shutdown(5.0)
    if url.startswith("amqp"):
        import kombu

        with kombu.Connection(url) as conn:
            ch = conn.channel()
            ch.queue_delete(queue)
            ch.exchange_delete(exchange)


@pytest.mark.rabbitmq
def test_amqp_transport_publishes_to_real_rabbitmq(amqp_url: str, amqp_queue_name: str) -> None:
    _check_amqp(amqp_url, amqp_queue_name)


def test_amqp_transport_over_kombu_memory() -> None:
    _check_amqp("memory://", "crosstrace-mem-" + uuid.uuid4().hex[:8])


def test_amqp_broker_down_counts_failures_and_never_raises() -> None:
    port = refused_url().rsplit(":", 1)[1]
    transport = AmqpTransport(f"amqp://guest:guest@127.0.0.1:{port}//", timeout_s=1.0)
    exporter = BatchExporter(transport, max_retries=1, backoff_s=0.01)
    try:
        exporter.export_spans(make_spans(2))
        assert exporter.force_flush(10.0)
        st = exporter.stats()
        assert (st["batches_failed"], st["spans_failed"], st["retries"]) == (1, 2, 1)
    finally:
        exporter.shutdown(2.0)


# -- JSON lines -------------------------------------------------------------------------------


def test_file_transport_writes_one_otlp_json_request_per_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = BatchExporter(FileTransport(str(path)), {"service.name": "svc-f"}, batch_size=2)
    try:
        exporter.export_spans(make_spans(3))
        exporter.export_log(LogData("hello"))
        assert exporter.force_flush(5.0)
    finally:
        exporter.shutdown(2.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [len(d["resourceSpans"][0]["scopeSpans"][0]["spans"]) for d in lines[:2]] == [2, 1]
    assert lines[2]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"] == {
        "stringValue": "hello"
    }
    assert len(lines[0]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]) == 32


def test_file_transport_unwritable_path_fails_without_raising(tmp_path: Path) -> None:
    exporter = BatchExporter(
        FileTransport(str(tmp_path / "missing-dir" / "x.jsonl")), max_retries=0
    )
    try:
        exporter.export_spans(make_spans(1))
        assert exporter.force_flush(5.0)
        assert exporter.stats()["batches_failed"] == 1
    finally:
        exporter.shutdown(1.0)


class CountingTransport(Transport):
    """Counts the spans it is given; slow enough that the queue fills up."""

    def __init__(self) -> None:
        self.received = 0

    def encode(self, signal: str, items: Sequence[Any], resource: Any) -> bytes:
        self.received += len(items)
        time.sleep(0.001)
        return b""

    def send(self, signal: str, payload: bytes) -> None:
        pass


def test_every_span_is_counted_when_threads_race_a_full_queue() -> None:
    """Racing producers may overshoot the bound, but no span is evicted uncounted:
    exported + dropped == offered, and what was queued is what the transport got."""
    transport = CountingTransport()
    exporter = BatchExporter(transport, queue_size=16, batch_size=8, max_delay_s=0.01)
    segment = make_spans(3)
    threads, per_thread = 8, 2000
    barrier = threading.Barrier(threads)

    def produce() -> None:
        barrier.wait()
        for _ in range(per_thread):
            exporter.export_spans(segment)

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races happen
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(switch)
    assert exporter.force_flush(10.0)
    exporter.shutdown(5.0)
    st = exporter.stats()
    offered = threads * per_thread * 3
    assert st["spans_dropped"] > 0
    assert st["spans_queued"] + st["spans_dropped"] == offered
    assert st["spans_exported"] == st["spans_queued"] == transport.received
