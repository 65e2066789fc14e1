"""Three services, three tracers, one trace, received by a real OTLP/HTTP receiver.

client -> service 1 (WSGI under wsgiref, requests integration) -> HTTP ->
service 2 (Starlette under uvicorn) -> RPC call over kombu (real RabbitMQ, and
memory://) -> service 3 (kombu consumer) -> SQLAlchemy query on a SQLite file.
All three run in this process, each with its own ``crosstrace.get_tracer(name)``
sharing the one configured exporter, which sends OTLP/HTTP protobuf + gzip to a
``http.server`` in the test that decodes it with ``opentelemetry-proto``.
"""

from __future__ import annotations

import gzip
import http.server
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest
import requests
import sqlalchemy as sa
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import crosstrace
from crosstrace import asgi, config, wsgi
from crosstrace.demo.servers import serve_asgi, serve_wsgi
from crosstrace.integrations.kombu import Producer, consumer_callback
from crosstrace.integrations.requests import Session
from crosstrace.integrations.sqlalchemy import instrument_engine, uninstrument_engine
from crosstrace.logging import ExportHandler
from crosstrace.tracing import Tracer

DEADLINE = 20.0
GID = "req-7c9e6679-7425-40de-944b-e07fc1f90ae7"
SERVER = 2
CLIENT = 3
PRODUCER = 4
CONSUMER = 5
ERROR = 2


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


# -- the OTLP/HTTP receiver -------------------------------------------------------------


@dataclass
class Received:
    spans: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)


class Receiver:
    """A real OTLP/HTTP endpoint on loopback: gzip + protobuf, decoded per record."""

    def __init__(self) -> None:
        got = self.got = Received()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.headers["Content-Type"] == "application/x-protobuf"
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    rows = [
                        {
                            "service": _resource(rs.resource.attributes),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_id": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": s.kind,
                            "status": s.status.code,
                            "attributes": {kv.key: _value(kv.value) for kv in s.attributes},
                            "events": [e.name for e in s.events],
                        }
                        for rs in req.resource_spans
                        for ss in rs.scope_spans
                        for s in ss.spans
                    ]
                    with got.cond:
                        got.spans.extend(rows)
                        got.cond.notify_all()
                elif self.path == "/v1/logs":
                    lreq = ExportLogsServiceRequest.FromString(body)
                    logs = [
                        {
                            "service": _resource(rl.resource.attributes),
                            "logger": sl.scope.name,
                            "body": _value(r.body),
                            "trace_id": r.trace_id.hex(),
                            "attributes": {kv.key: _value(kv.value) for kv in r.attributes},
                        }
                        for rl in lreq.resource_logs
                        for sl in rl.scope_logs
                        for r in sl.log_records
                    ]
                    with got.cond:
                        got.logs.extend(logs)
                        got.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _resource(attributes: Any) -> str:
    return next(_value(kv.value) for kv in attributes if kv.key == "service.name")


# -- the three services -------------------------------------------------------------------


@dataclass
class Cloud:
    amqp_url: str
    queue_name: str
    db_path: Path
    tracers: dict[str, Tracer] = field(default_factory=dict)
    url: str = ""
    _stops: list[Callable[[], Any]] = field(default_factory=list)

    def start(self) -> None:
        for name in ("svc1", "svc2", "svc3"):
            t = crosstrace.get_tracer(name)
            assert t is not None
            self.tracers[name] = t
        t1, t2, t3 = self.tracers.values()
        for name, t in self.tracers.items():
            logger = logging.getLogger(f"three.{name}")
            logger.setLevel(logging.INFO)
            handler = ExportHandler(t)
            logger.addHandler(handler)
            self._stops.append(lambda lg=logger, h=handler: lg.removeHandler(h))
        exchange = kombu.Exchange("crosstrace-3svc", type="direct", durable=False)
        work_q = kombu.Queue(
            self.queue_name, exchange, routing_key=self.queue_name, durable=False, auto_delete=True
        )
        self._start_worker(work_q, t3)
        svc2_url = self._start_svc2(exchange, work_q, t2)
        self.url = self._start_svc1(svc2_url, t1)

    def stop(self) -> None:
        for stop in reversed(self._stops):
            stop()

    # service 3: the RPC worker with a SQLAlchemy query
    def _start_worker(self, work_q: kombu.Queue, tracer: Tracer) -> None:
        engine = sa.create_engine(f"sqlite:///{self.db_path}")
        with engine.begin() as c:
            c.execute(sa.text("CREATE TABLE hosts (name TEXT, free_ram INTEGER)"))
            c.execute(sa.text("INSERT INTO hosts VALUES ('compute-1', 4096), ('compute-2', 128)"))
        instrument_engine(engine)  # spans follow the consumer span, so service 3's tracer
        log3 = logging.getLogger("three.svc3")
        ready, stop = threading.Event(), threading.Event()

        def handle(body: dict[str, Any], message: Any) -> None:
            args = body["args"]
            log3.info("building %s", args["server_id"])
            reply: dict[str, Any] = {}
            try:
                table = "no_such_table" if args["fail"] else "hosts"
                with engine.connect() as c:
                    rows = c.execute(
                        sa.text(f"SELECT name FROM {table} WHERE free_ram >= :ram"),
                        {"ram": args["ram"]},
                    ).all()
                reply = {"host": rows[0][0]}
            except Exception as exc:
                reply = {"error": type(exc).__name__}
                raise
            finally:
                reply_producer.publish(
                    reply, routing_key=message.properties["reply_to"], exchange=""
                )
                message.ack()

        def run() -> None:
            nonlocal reply_producer
            with kombu.Connection(self.amqp_url) as conn:
                reply_producer = kombu.Producer(conn.channel())
                callback = consumer_callback(handle, tracer=tracer)
                with kombu.Consumer(conn.channel(), queues=[work_q], callbacks=[callback]):
                    ready.set()
                    while not stop.is_set():
                        try:
                            conn.drain_events(timeout=0.2)
                        except TimeoutError:
                            pass
                        except Exception:
                            pass  # the handler's failure was recorded; keep serving

        reply_producer: Any = None
        thread = threading.Thread(target=run, name="svc3", daemon=True)
        thread.start()
        assert ready.wait(DEADLINE), "worker did not start consuming"

        def stop_worker() -> None:
            stop.set()
            thread.join(DEADLINE)
            uninstrument_engine(engine)
            engine.dispose()

        self._stops.append(stop_worker)

    # service 2: Starlette under uvicorn, RPC call with a reply queue
    def _start_svc2(self, exchange: kombu.Exchange, work_q: kombu.Queue, tracer: Tracer) -> str:
        log2 = logging.getLogger("three.svc2")

        def build(request: Request) -> JSONResponse:
            server_id = request.path_params["server_id"]
            fail = request.query_params.get("fail") == "1"
            log2.info("scheduling %s", server_id)
            reply_name = "reply-" + uuid.uuid4().hex[:12]
            reply_q = kombu.Queue(reply_name, routing_key=reply_name, auto_delete=True)
            result: dict[str, Any] = {}

            def on_reply(body: dict[str, Any], message: Any) -> None:
                result.update(body)
                message.ack()

            with (
                kombu.Connection(self.amqp_url) as conn,
                kombu.Consumer(conn.channel(), queues=[reply_q], callbacks=[on_reply]),
            ):
                Producer(conn.channel(), exchange=exchange).publish(
                    {
                        "method": "build_and_run_instance",
                        "args": {"server_id": server_id, "fail": fail, "ram": 512},
                    },
                    routing_key=work_q.routing_key,
                    reply_to=reply_name,
                    declare=[work_q],
                )
                deadline = time.monotonic() + DEADLINE
                while not result and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
            if "host" not in result:
                return JSONResponse(result or {"error": "timeout"}, status_code=500)
            return JSONResponse(result)

        app = asgi.RequestIdMiddleware(
            Starlette(routes=[Route("/build/{server_id}", build)]),
            tracer=tracer,
            trust_identity_headers=True,
        )
        server = serve_asgi(app, "svc2", start_timeout=DEADLINE)
        self._stops.append(lambda: server.stop(DEADLINE))
        return server.url

    # service 1: WSGI under wsgiref, calls service 2 with the requests integration
    def _start_svc1(self, svc2_url: str, tracer: Tracer) -> str:
        session = Session()
        log1 = logging.getLogger("three.svc1")

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            server_id = environ["PATH_INFO"].rsplit("/", 1)[-1]
            query = "?fail=1" if "fail=1" in environ.get("QUERY_STRING", "") else ""
            log1.info("booting %s", server_id)
            resp = session.get(f"{svc2_url}/build/{server_id}{query}", timeout=DEADLINE)
            status = "202 Accepted" if resp.ok else "500 Internal Server Error"
            start_response(status, [("Content-Type", "application/json")])
            return [resp.content]

        # The caller's identity headers stand for keystonemiddleware's here.
        mw = wsgi.RequestIdMiddleware(app, tracer=tracer, trust_identity_headers=True)
        server = serve_wsgi(mw, "svc1")

        def stop() -> None:
            server.stop(DEADLINE)
            session.close()

        self._stops.append(stop)
        return server.url

    # helpers
    def boot(self, fail: bool = False) -> requests.Response:
        server_id = str(uuid.uuid4())
        return requests.get(
            f"{self.url}/boot/{server_id}" + ("?fail=1" if fail else ""),
            headers={"X-OpenStack-Request-ID": GID, "X-Project-Id": "p-1", "X-User-Id": "u-1"},
            timeout=DEADLINE,
        )

    def wait_settled(self, kept: int, dropped: int) -> None:
        """Wait until the services' segments are settled (kept or dropped)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            k = sum(t.segments_kept for t in self.tracers.values())
            d = sum(t.segments_dropped for t in self.tracers.values())
            if k >= kept and d >= dropped:
                return
            assert time.monotonic() < deadline, f"segments kept {k}/{kept}, dropped {d}/{dropped}"
            time.sleep(0.01)


@pytest.fixture(params=["memory", "rabbitmq"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Cloud, Receiver]]:
    if request.param == "rabbitmq":
        url = request.getfixturevalue("amqp_url")
        queue_name = request.getfixturevalue("amqp_queue_name")
    else:
        url, queue_name = "memory://", "svc3-" + uuid.uuid4().hex[:12]
    receiver = Receiver()
    ratio = request.function.__dict__.get("sample_ratio", 1.0)
    crosstrace.configure(
        service_name="three-services-test",
        endpoint=receiver.url,
        sample_ratio=ratio,
        overhead_budget=0,
        slow_threshold=0,
        export_delay="100ms",
    )
    c = Cloud(url, queue_name, tmp_path / "hosts.sqlite3")
    try:
        c.start()
        yield c, receiver
    finally:
        c.stop()
        config.shutdown(5.0)
        receiver.close()


def flush() -> None:
    assert crosstrace.force_flush(DEADLINE)


def ratio(value: float) -> Callable[[Any], Any]:
    def mark(fn: Any) -> Any:
        fn.sample_ratio = value
        return fn

    return mark


def test_one_trace_across_three_services(cloud: tuple[Cloud, Receiver]) -> None:
    c, receiver = cloud
    resp = c.boot()
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"host": "compute-1"}
    c.wait_settled(kept=3, dropped=0)
    flush()
    spans = receiver.got.spans
    assert len({s["trace_id"] for s in spans}) == 1, "one trace"

    def one(service: str, kind: int) -> dict[str, Any]:
        (s,) = [s for s in spans if s["service"] == service and s["kind"] == kind]
        return s

    s1 = one("svc1", SERVER)
    c1 = one("svc1", CLIENT)
    s2 = one("svc2", SERVER)
    p2 = one("svc2", PRODUCER)
    k3 = one("svc3", CONSUMER)
    d3 = one("svc3", CLIENT)
    assert len(spans) == 6
    # The parent chain: server -> client -> server -> producer -> consumer -> db.
    assert s1["parent_id"] == ""
    assert c1["parent_id"] == s1["span_id"]
    assert s2["parent_id"] == c1["span_id"]
    assert p2["parent_id"] == s2["span_id"]
    assert k3["parent_id"] == p2["span_id"]
    assert d3["parent_id"] == k3["span_id"]
    # Names and attributes.
    assert s1["name"] == "GET /boot/{id}"
    assert s1["attributes"]["http.response.status_code"] == 202
    assert c1["name"] == "GET /build/{id}"
    assert c1["attributes"]["http.request.method"] == "GET"
    assert c1["attributes"]["server.address"] == "127.0.0.1"
    assert c1["attributes"]["http.response.status_code"] == 200
    assert s2["name"] == "GET /build/{server_id}"
    assert s2["attributes"]["http.route"] == "/build/{server_id}"
    assert p2["name"] == "publish crosstrace-3svc"
    assert k3["name"] == "process crosstrace-3svc"
    system = "memory" if c.amqp_url.startswith("memory") else "rabbitmq"
    for s in (p2, k3):
        assert s["attributes"]["messaging.system"] == system
        assert s["attributes"]["messaging.destination.name"] == "crosstrace-3svc"
        assert s["attributes"]["rpc.method"] == "build_and_run_instance"
    assert d3["name"] == "SELECT hosts"
    assert d3["attributes"]["db.system"] == "sqlite"
    assert d3["attributes"]["db.query.text"] == "SELECT name FROM hosts WHERE free_ram >= ?"
    assert all(s["status"] == 0 for s in spans)
    # Request ids: the same global id in every service, a local id of its own in each.
    locals_ = {s["attributes"]["openstack.request_id"] for s in (s1, s2, k3)}
    assert len(locals_) == 3
    assert resp.headers["x-openstack-request-id"] == s1["attributes"]["openstack.request_id"]
    for s in (s1, s2, k3):
        assert s["attributes"]["openstack.global_request_id"] == GID
    assert s1["attributes"]["openstack.project_id"] == "p-1"
    assert s1["attributes"]["openstack.user_id"] == "u-1"
    # The services' logs went out through the same exporter, in the trace.
    deadline = time.monotonic() + DEADLINE
    while len(receiver.got.logs) < 3 and time.monotonic() < deadline:
        flush()
    by_service = {r["service"]: r for r in receiver.got.logs}
    assert set(by_service) == {"svc1", "svc2", "svc3"}
    for r in by_service.values():
        assert r["trace_id"] == s1["trace_id"]
        assert r["attributes"]["openstack.global_request_id"] == GID


@ratio(0.0)
def test_ratio_zero_keeps_only_the_failed_request(cloud: tuple[Cloud, Receiver]) -> None:
    c, receiver = cloud
    ok = c.boot()
    assert ok.status_code == 202
    c.wait_settled(kept=0, dropped=3)  # a successful request: all three segments dropped
    flush()
    assert receiver.got.spans == []

    failed = c.boot(fail=True)
    assert failed.status_code == 500
    c.wait_settled(kept=3, dropped=3)
    flush()
    spans = receiver.got.spans
    assert {s["service"] for s in spans} == {"svc1", "svc2", "svc3"}
    assert len({s["trace_id"] for s in spans}) == 1, "linked by one trace id"
    errors = {(s["service"], s["kind"]) for s in spans if s["status"] == ERROR}
    assert {("svc1", SERVER), ("svc1", CLIENT), ("svc2", SERVER), ("svc3", CONSUMER)} <= errors
    (db,) = [s for s in spans if s["service"] == "svc3" and s["kind"] == CLIENT]
    assert db["status"] == ERROR
    assert "exception" in db["events"]
    (consumer,) = [s for s in spans if s["kind"] == CONSUMER]
    assert "exception" in consumer["events"]
