"""Global request id end to end: client -> A (WSGI) -> B (ASGI) -> worker (kombu).

A is a WSGI app under wsgiref, B a Starlette app under uvicorn, both on real
loopback sockets; A calls B through the requests integration, B casts to a
worker over kombu (real RabbitMQ, and the in-process memory:// transport). Each
service logs through its own logger with the ContextFormatter; the test reads
the ids back out of those lines.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kombu
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from crosstrace import asgi, wsgi
from crosstrace.demo.servers import serve_asgi, serve_wsgi
from crosstrace.ids import is_valid_request_id
from crosstrace.integrations.kombu import Producer, consumer_callback
from crosstrace.integrations.requests import Session
from crosstrace.logging import ContextFilter, ContextFormatter

GID = "req-7c9e6679-7425-40de-944b-e07fc1f90ae7"
DEADLINE = 20.0

log_a = logging.getLogger("svc.a")
log_b = logging.getLogger("svc.b")
log_w = logging.getLogger("svc.worker")

# "<date> <time> <pid> <LEVEL> <logger> [<global> <local> <identity...>] <message>"
LINE_RE = re.compile(
    r"^\S+ \S+ \d+ (?P<level>[A-Z]+) (?P<logger>\S+) "
    r"\[(?P<global>\S+) (?P<local>\S+) [^\]]*\] (?P<message>.*)$"
)


@dataclass
class Cloud:
    """The three services, started for one kombu URL."""

    amqp_url: str
    queue_name: str
    stream: io.StringIO = field(default_factory=io.StringIO)
    worker_done: queue.Queue[str] = field(default_factory=queue.Queue)
    a_url: str = ""
    _stops: list[Any] = field(default_factory=list)

    # -- logging ---------------------------------------------------------------
    def lines(self) -> list[dict[str, str]]:
        parsed = []
        for line in self.stream.getvalue().splitlines():
            match = LINE_RE.match(line)
            if match and match["logger"].startswith(("svc.", "crosstrace.integrations")):
                parsed.append(match.groupdict())
        return parsed

    # -- the worker (RPC consumer) --------------------------------------------
    def start_worker(self, exchange: kombu.Exchange, q: kombu.Queue) -> None:
        ready = threading.Event()
        stop = threading.Event()

        def handle(body: dict[str, Any], message: Any) -> None:
            log_w.info("worker running %s", body["task"])
            message.ack()
            self.worker_done.put(body["task"])

        def run() -> None:
            with (
                kombu.Connection(self.amqp_url) as conn,
                kombu.Consumer(conn.channel(), queues=[q], callbacks=[consumer_callback(handle)]),
            ):
                ready.set()
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        pass
            # The queue is auto-delete: cancelling the consumer removes it.

        thread = threading.Thread(target=run, name="worker", daemon=True)
        thread.start()
        assert ready.wait(DEADLINE), "worker did not start consuming"
        self._stops.append(lambda: (stop.set(), thread.join(DEADLINE)))

    # -- service B: Starlette under uvicorn -----------------------------------
    def start_b(self, exchange: kombu.Exchange, q: kombu.Queue) -> str:
        def cast(request: Request) -> JSONResponse:
            # A sync endpoint: Starlette runs it in a worker thread, context included.
            log_b.info("B casting build")
            with kombu.Connection(self.amqp_url) as conn:
                Producer(conn.channel(), exchange=exchange).publish(
                    {"task": "build"}, routing_key=q.routing_key, declare=[q]
                )
            return JSONResponse({"cast": True})

        app = asgi.RequestIdMiddleware(Starlette(routes=[Route("/cast", cast)]))
        server = serve_asgi(app, "svc-b", start_timeout=DEADLINE)
        self._stops.append(lambda: server.stop(DEADLINE))
        return server.url

    # -- service A: WSGI under wsgiref ----------------------------------------
    def start_a(self, b_url: str) -> None:
        session = Session()

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            log_a.info("A handling %s", environ["PATH_INFO"])
            resp = session.get(b_url + "/cast", timeout=DEADLINE)
            log_a.info("A got %d from B", resp.status_code)
            start_response("200 OK", [("Content-Type", "application/json")])
            body = {"b_local": resp.headers.get("x-openstack-request-id")}
            return [json.dumps(body).encode()]

        server = serve_wsgi(wsgi.RequestIdMiddleware(app), "svc-a")

        def stop() -> None:
            server.stop(DEADLINE)
            session.close()

        self._stops.append(stop)
        self.a_url = server.url

    def stop(self) -> None:
        for stop in reversed(self._stops):
            stop()


@pytest.fixture
def cloud_factory() -> Iterator[Any]:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(ContextFormatter())
    root = logging.getLogger()
    integ = logging.getLogger("crosstrace.integrations")
    old_root, old_integ = root.level, integ.level
    clouds: list[Cloud] = []

    def make(amqp_url: str, queue_name: str) -> Cloud:
        cloud = Cloud(amqp_url, queue_name)
        handler.setStream(cloud.stream)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        integ.setLevel(logging.DEBUG)  # the "used request id" lines
        clouds.append(cloud)
        exchange = kombu.Exchange("crosstrace-e2e-" + queue_name, type="direct", durable=False)
        q = kombu.Queue(
            queue_name, exchange, routing_key=queue_name, durable=False, auto_delete=True
        )
        cloud.start_worker(exchange, q)
        cloud.start_a(cloud.start_b(exchange, q))
        return cloud

    try:
        yield make
    finally:
        for cloud in clouds:
            cloud.stop()
        root.removeHandler(handler)
        root.setLevel(old_root)
        integ.setLevel(old_integ)


def _request(cloud: Cloud, headers: dict[str, str]) -> dict[str, Any]:
    """One client request through A; wait for the worker; return what each service logged."""
    before = len(cloud.lines())
    resp = requests.get(cloud.a_url + "/servers", headers=headers, timeout=DEADLINE)
    assert resp.status_code == 200
    assert cloud.worker_done.get(timeout=DEADLINE) == "build"
    lines = cloud.lines()[before:]
    by_service: dict[str, set[tuple[str, str]]] = {}
    for line in lines:
        by_service.setdefault(line["logger"], set()).add((line["global"], line["local"]))
    return {
        "a_local": resp.headers["x-openstack-request-id"],
        "b_local": resp.json()["b_local"],
        "ids": by_service,
        "lines": lines,
    }


def _check_flow(cloud: Cloud) -> None:
    # Case 1: the client sends a global id; every service logs it beside its own id.
    out = _request(cloud, {"X-OpenStack-Request-ID": GID})
    ids = out["ids"]
    assert len(ids["svc.a"]) == len(ids["svc.b"]) == len(ids["svc.worker"]) == 1
    ((a_global, a_local),) = ids["svc.a"]
    ((b_global, b_local),) = ids["svc.b"]
    ((w_global, w_local),) = ids["svc.worker"]
    assert a_global == b_global == w_global == GID
    assert a_local == out["a_local"]  # A's response carries A's local id
    assert b_local == out["b_local"]
    assert len({a_local, b_local, w_local, GID}) == 4
    assert all(is_valid_request_id(i) for i in (a_local, b_local, w_local))
    # A logged B's id from B's response, under A's own ids.
    assert any(
        line["logger"] == "crosstrace.integrations.requests"
        and line["local"] == a_local
        and line["message"].endswith(f"/cast used request id {b_local}")
        for line in out["lines"]
    )

    # Case 2: no id from the client; A's local id becomes the global id downstream.
    out = _request(cloud, {})
    ids = out["ids"]
    ((a_global, a_local),) = ids["svc.a"]
    ((b_global, b_local),) = ids["svc.b"]
    ((w_global, w_local),) = ids["svc.worker"]
    assert a_global == "None"  # oslo.log's rendering of "no global id"
    assert a_local == out["a_local"]
    assert b_global == w_global == a_local
    assert b_local == out["b_local"]
    assert len({a_local, b_local, w_local}) == 3


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_global_id_across_http_and_rabbitmq(
    cloud_factory: Any, amqp_url: str, amqp_queue_name: str
) -> None:
    """A -> B over HTTP, B -> worker over real RabbitMQ: one global id, three local ids."""
    _check_flow(cloud_factory(amqp_url, amqp_queue_name))


@pytest.mark.slow
def test_global_id_across_http_and_memory_transport(cloud_factory: Any) -> None:
    """The same flow through kombu's in-process memory:// transport, no broker."""
    _check_flow(cloud_factory("memory://", "e2e-" + uuid.uuid4().hex[:10]))
