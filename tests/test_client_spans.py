"""CLIENT spans and header injection (requests, httpx), PRODUCER/CONSUMER spans (kombu)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import kombu
import pytest
import requests

from crosstrace.context import RequestContext, use_context
from crosstrace.integrations import httpx as ct_httpx
from crosstrace.integrations import requests as ct_requests
from crosstrace.integrations.kombu import Producer, consumer_callback, publish
from crosstrace.tracing import Span, SpanKind, StatusCode, Tracer, span
from crosstrace.wsgi import RequestIdMiddleware
from tracing_support import Sink, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"


pytestmark = pytest.mark.usefixtures("no_tracer")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def main(sink: Sink) -> Tracer:
    return sink_tracer(sink, "main", sample_ratio=1.0)


class Callee:
    """A real WSGI server (its own service tracer) recording the headers it got."""

    def __init__(self, tracer: Tracer | None) -> None:
        self.headers: list[dict[str, str]] = []
        self.server: WSGIServer = make_server(
            "127.0.0.1", 0, RequestIdMiddleware(self.app, tracer=tracer), handler_class=_Quiet
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.headers.append({k: v for k, v in environ.items() if k.startswith("HTTP_")})
        status = "503 Service Unavailable" if environ["PATH_INFO"] == "/busy" else "200 OK"
        start_response(status, [("Content-Type", "text/plain")])
        return [b"ok"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callee(main: Tracer) -> Iterator[Callee]:
    c = Callee(main.for_service("callee"))
    try:
        yield c
    finally:
        c.close()


def wait_for(sink: Sink, n: int) -> None:
    """The callee's server span ends in its own thread; wait for it with a deadline."""
    deadline = time.monotonic() + 10
    while len(sink.spans) < n:
        assert time.monotonic() < deadline, f"only {len(sink.spans)} of {n} spans"
        time.sleep(0.005)


def check_call(sink: Sink, callee: Callee, caller_name: str) -> None:
    wait_for(sink, 3)
    root = sink.named("root")
    client = sink.named("GET /images/{id}", SpanKind.CLIENT)
    server = sink.named("GET /images/{id}", SpanKind.SERVER)
    assert client.kind == SpanKind.CLIENT
    assert client.parent_id == root.span_id
    assert client.segment.tracer.resource["service.name"] == caller_name
    assert client.attributes["http.request.method"] == "GET"
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["server.port"] == callee.server.server_port
    assert client.attributes["url.full"].startswith(f"{callee.url}/images/")
    assert client.attributes["http.response.status_code"] == 200
    # The callee continued the trace from the client span.
    assert server.trace_id == client.trace_id
    assert server.parent_id == client.span_id
    assert server.segment.tracer.resource["service.name"] == "callee"
    got = callee.headers[-1]
    assert got["HTTP_TRACEPARENT"] == f"00-{client.trace_id:032x}-{client.span_id:016x}-03"
    assert got["HTTP_X_OPENSTACK_REQUEST_ID"] == GID


def test_requests_client_span_and_headers(sink: Sink, main: Tracer, callee: Callee) -> None:
    session = ct_requests.Session()
    caller = main.for_service("caller")
    with use_context(RequestContext(global_request_id=GID)), span("root", tracer=caller):
        assert session.get(f"{callee.url}/images/{uuid.uuid4()}", timeout=10).status_code == 200
    check_call(sink, callee, "caller")


def test_requests_5xx_is_an_error(sink: Sink, main: Tracer, callee: Callee) -> None:
    with span("root", tracer=main):
        ct_requests.Session().get(f"{callee.url}/busy", timeout=10)
    wait_for(sink, 3)
    client = sink.named("GET /busy", SpanKind.CLIENT)
    assert client.status_code == StatusCode.ERROR
    assert client.attributes["http.response.status_code"] == 503


def test_requests_refused_connection_is_recorded(sink: Sink, main: Tracer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with span("root", tracer=main), pytest.raises(requests.ConnectionError):
        ct_requests.Session().get(f"http://127.0.0.1:{port}/x", timeout=5)
    client = sink.named("GET /x")
    assert client.status_code == StatusCode.ERROR
    assert client.events is not None
    assert client.events[0][2]["exception.type"].endswith("ConnectionError")


def test_requests_without_tracing_sends_no_trace_headers(callee: Callee) -> None:
    callee_plain = Callee(None)
    try:
        with use_context(RequestContext(global_request_id=GID)):
            ct_requests.Session().get(f"{callee_plain.url}/x", timeout=10)
        got = callee_plain.headers[-1]
        assert "HTTP_TRACEPARENT" not in got
        assert got["HTTP_X_OPENSTACK_REQUEST_ID"] == GID
    finally:
        callee_plain.close()


def test_requests_session_tracer_starts_a_root(sink: Sink, main: Tracer, callee: Callee) -> None:
    """A call outside any span is a local root of the session's tracer."""
    ct_requests.Session(tracer=main.for_service("cli")).get(f"{callee.url}/x", timeout=10)
    wait_for(sink, 2)
    client = sink.named("GET /x", SpanKind.CLIENT)
    assert client.parent_id == 0
    assert client.segment.tracer.resource["service.name"] == "cli"


def test_credentials_are_not_in_url_full(sink: Sink, main: Tracer, callee: Callee) -> None:
    url = callee.url.replace("http://", "http://user:pw@") + "/x?token=abc&page=2"
    with span("root", tracer=main):
        ct_requests.Session().get(url, timeout=10)
    client = sink.named("GET /x", SpanKind.CLIENT)
    assert "pw" not in client.attributes["url.full"]
    assert "abc" not in client.attributes["url.full"]  # masked when the segment was kept
    assert "page=2" in client.attributes["url.full"]


def test_httpx_sync_client_span_and_headers(sink: Sink, main: Tracer, callee: Callee) -> None:
    caller = main.for_service("caller")
    with (
        ct_httpx.Client(timeout=10) as client,
        use_context(RequestContext(global_request_id=GID)),
        span("root", tracer=caller),
    ):
        assert client.get(f"{callee.url}/images/{uuid.uuid4()}").status_code == 200
    check_call(sink, callee, "caller")


@pytest.mark.anyio
async def test_httpx_async_client_span_and_headers(
    sink: Sink, main: Tracer, callee: Callee
) -> None:
    caller = main.for_service("caller")
    async with ct_httpx.AsyncClient(timeout=10) as client:
        with use_context(RequestContext(global_request_id=GID)), span("root", tracer=caller):
            resp = await client.get(f"{callee.url}/images/{uuid.uuid4()}")
    assert resp.status_code == 200
    check_call(sink, callee, "caller")


def test_httpx_timeout_is_an_error(sink: Sink, main: Tracer) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()  # accepts, never answers
        port = srv.getsockname()[1]
        with (
            ct_httpx.Client(timeout=0.2) as client,
            span("root", tracer=main),
            pytest.raises(httpx.ReadTimeout),
        ):
            client.get(f"http://127.0.0.1:{port}/slow")
    client_span = sink.named("GET /slow")
    assert client_span.status_code == StatusCode.ERROR


# -- kombu --------------------------------------------------------------------------


def rpc_roundtrip(url: str, queue_name: str, main: Tracer, fail: bool = False) -> list[Any]:
    """API (tracer "api") casts an RPC message to a worker (tracer "worker")."""
    done: list[Any] = []

    def handler(body: Any, message: Any) -> None:
        message.ack()
        done.append(body)
        if fail:
            raise RuntimeError("no valid host")

    exchange = kombu.Exchange("crosstrace-test", type="direct", durable=False)
    queue = kombu.Queue(
        queue_name, exchange, routing_key=queue_name, durable=False, auto_delete=True
    )
    wrapped = consumer_callback(handler, tracer=main.for_service("worker"))
    with kombu.Connection(url) as conn:
        channel = conn.channel()
        with kombu.Consumer(channel, queues=[queue], callbacks=[wrapped]):
            with (
                use_context(RequestContext(global_request_id=GID)),
                span("root", tracer=main.for_service("api")),
            ):
                Producer(conn.channel(), exchange=exchange).publish(
                    {"method": "build_and_run_instance", "args": {}},
                    routing_key=queue_name,
                    declare=[queue],
                )
            deadline = time.monotonic() + 15
            while not done and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
                except RuntimeError:
                    break
            queue(channel).delete()
    assert done, "the message did not arrive before the deadline"
    return done


def check_rpc(sink: Sink, queue_name: str, system: str) -> tuple[Span, Span]:
    root = sink.named("root")
    producer = sink.named("publish crosstrace-test")
    consumer = sink.named("process crosstrace-test")
    assert producer.kind == SpanKind.PRODUCER
    assert producer.parent_id == root.span_id
    assert consumer.kind == SpanKind.CONSUMER
    assert consumer.trace_id == producer.trace_id
    assert consumer.parent_id == producer.span_id
    assert consumer.parent_remote
    assert consumer.segment.tracer.resource["service.name"] == "worker"
    for s, op in ((producer, "send"), (consumer, "process")):
        assert s.attributes["messaging.system"] == system
        assert s.attributes["messaging.destination.name"] == "crosstrace-test"
        assert s.attributes["messaging.rabbitmq.destination.routing_key"] == queue_name
        assert s.attributes["messaging.operation.type"] == op
        assert s.attributes["rpc.method"] == "build_and_run_instance"
    assert consumer.attributes["openstack.global_request_id"] == GID
    assert consumer.attributes["openstack.request_id"] != GID
    return producer, consumer


def test_kombu_spans_over_memory(sink: Sink, main: Tracer) -> None:
    name = "q-" + uuid.uuid4().hex[:8]
    rpc_roundtrip("memory://", name, main)
    check_rpc(sink, name, "memory")


@pytest.mark.rabbitmq
def test_kombu_spans_over_rabbitmq(
    sink: Sink, main: Tracer, amqp_url: str, amqp_queue_name: str
) -> None:
    rpc_roundtrip(amqp_url, amqp_queue_name, main)
    check_rpc(sink, amqp_queue_name, "rabbitmq")


def test_kombu_handler_exception_sets_error(sink: Sink, main: Tracer) -> None:
    name = "q-" + uuid.uuid4().hex[:8]
    rpc_roundtrip("memory://", name, main, fail=True)
    consumer = sink.named("process crosstrace-test")
    assert consumer.status_code == StatusCode.ERROR
    assert consumer.events is not None
    assert consumer.events[0][2]["exception.message"] == "no valid host"


def test_kombu_publish_function_adds_trace_headers(sink: Sink, main: Tracer) -> None:
    with kombu.Connection("memory://") as conn:
        q = kombu.Queue("q-" + uuid.uuid4().hex[:8], routing_key="k", auto_delete=True)
        producer = kombu.Producer(conn.channel())
        with span("root", tracer=main):
            publish(producer, {"x": 1}, routing_key=q.name, declare=[q])
        message = q(conn.channel()).get()
        assert message is not None
        producer_span = sink.named(f"publish {q.name}")
        tp = message.headers["traceparent"]
        assert tp == f"00-{producer_span.trace_id:032x}-{producer_span.span_id:016x}-03"
