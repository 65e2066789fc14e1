"""requests and httpx integrations against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from crosstrace.context import RequestContext, use_context
from crosstrace.integrations import httpx as ct_httpx
from crosstrace.integrations import requests as ct_requests
from crosstrace.wsgi import RequestIdMiddleware

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Callee:
    """A real WSGI server behind RequestIdMiddleware that records what it received."""

    def __init__(self) -> None:
        self.received: list[str | None] = []
        self.local_ids: list[str] = []
        self.server: WSGIServer = make_server(
            "127.0.0.1", 0, RequestIdMiddleware(self.app), handler_class=_Quiet
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.received.append(environ.get("HTTP_X_OPENSTACK_REQUEST_ID"))
        self.local_ids.append(environ["openstack.request_id"])
        headers = [("Content-Type", "text/plain")]
        if environ.get("PATH_INFO") == "/bogus-id":
            headers.append(("x-openstack-request-id", "req-NOT-VALID\r\nX: y"))
        start_response("200 OK", headers)
        return [b"ok"]


@pytest.fixture
def callee() -> Iterator[Callee]:
    c = Callee()
    c.thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="crosstrace.integrations")
    return caplog


def test_requests_session_sends_global_id_and_logs_callee_id(
    callee: Callee, debug_log: pytest.LogCaptureFixture
) -> None:
    with ct_requests.Session() as session, use_context(RequestContext(global_request_id=GID)):
        resp = session.get(callee.url + "/v2/images?token=secret")
    assert resp.status_code == 200
    assert callee.received == [GID]
    assert resp.headers["x-openstack-request-id"] == callee.local_ids[0]
    assert f"GET {callee.url}/v2/images used request id {callee.local_ids[0]}" in (
        debug_log.messages
    )
    assert all("secret" not in m for m in debug_log.messages)


def test_requests_sends_local_id_when_no_global_id(callee: Callee) -> None:
    with ct_requests.Session() as session, use_context(RequestContext(request_id=LID)):
        session.post(callee.url, data=b"x")
    assert callee.received == [LID]


def test_requests_no_context_no_header_and_explicit_header_kept(callee: Callee) -> None:
    with ct_requests.Session() as session:
        session.get(callee.url)
        with use_context(RequestContext(global_request_id=GID)):
            session.get(callee.url, headers={"X-OpenStack-Request-ID": LID})
    assert callee.received == [None, LID]


def test_requests_invalid_callee_id_is_not_logged(
    callee: Callee, debug_log: pytest.LogCaptureFixture
) -> None:
    with ct_requests.Session() as session, use_context(RequestContext(global_request_id=GID)):
        session.get(callee.url + "/bogus-id")
    assert callee.received == [GID]
    assert not [m for m in debug_log.messages if "used request id" in m]
    assert all("NOT-VALID" not in m for m in debug_log.messages)


def test_httpx_client_sends_global_id_and_logs_callee_id(
    callee: Callee, debug_log: pytest.LogCaptureFixture
) -> None:
    with ct_httpx.Client() as client, use_context(RequestContext(global_request_id=GID)):
        resp = client.get(callee.url + "/v3/volumes")
        with client.stream("GET", callee.url + "/stream") as streamed:
            streamed.read()
    assert resp.status_code == 200
    assert callee.received == [GID, GID]
    assert f"GET {callee.url}/v3/volumes used request id {callee.local_ids[0]}" in (
        debug_log.messages
    )


def test_httpx_client_without_context_sends_nothing(callee: Callee) -> None:
    with ct_httpx.Client() as client:
        client.get(callee.url)
    assert callee.received == [None]


def test_httpx_async_client_uses_each_task_context(
    callee: Callee, debug_log: pytest.LogCaptureFixture
) -> None:
    """Concurrent tasks each send their own context's global id."""
    ids = [GID, LID]

    async def main() -> None:
        async with ct_httpx.AsyncClient() as client:

            async def one(gid: str) -> None:
                with use_context(RequestContext(global_request_id=gid)):
                    await client.get(callee.url + "/async")

            await asyncio.gather(*(one(g) for g in ids))

    asyncio.run(main())
    assert sorted(callee.received) == sorted(ids)  # type: ignore[type-var]
    logged = [m for m in debug_log.messages if "used request id" in m]
    assert len(logged) == 2
