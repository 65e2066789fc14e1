"""crosstrace.asgi.RequestIdMiddleware on a Starlette app: ids, context, bad input."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from crosstrace import get_current
from crosstrace.asgi import RequestIdMiddleware
from crosstrace.ids import is_valid_request_id
from crosstrace.propagation import stats
from tracing_support import capture_root_logs

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
GID2 = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"

BAD_VALUES: dict[str, list[bytes]] = {
    "wrong prefix": [b"rq-3f1e2d4c-5b6a-4789-8abc-def012345678"],
    "no prefix": [b"3f1e2d4c-5b6a-4789-8abc-def012345678"],
    "uppercase hex": [b"req-3F1E2D4C-5B6A-4789-8ABC-DEF012345678"],
    "uuid with suffix": [GID.encode() + b"-extra"],
    "trailing newline": [GID.encode() + b"\n"],
    "crlf injection": [GID.encode() + b"\r\nX-Injected: yes"],
    "10 kB": [b"req-" + b"a" * 10240],
    "non-ascii": ["req-3f1e2d4c-5b6a-4789-8abc-def01234567\u00e9".encode()],
    "non-ascii latin-1": [b"req-3f1e2d4c-5b6a-4789-8abc-def01234567\xe9"],
    "empty": [b""],
    "repeated header": [GID.encode(), GID2.encode()],
}

log = logging.getLogger("test.asgi.app")


def _ids() -> dict[str, Any]:
    ctx = get_current()
    assert ctx is not None
    return {"global": ctx.global_request_id, "local": ctx.request_id, "user": ctx.user_id}


async def ids_endpoint(request: Request) -> JSONResponse:
    log.info("handling %s", request.url.path)
    body = _ids()
    body["scope_local"] = request.scope.get("openstack.request_id")
    body["scope_global"] = request.scope.get("openstack.global_request_id")
    return JSONResponse(body)


def sync_endpoint(request: Request) -> JSONResponse:
    """Starlette runs sync endpoints in a worker thread; the context follows."""
    return JSONResponse(_ids())


async def stream_endpoint(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0)
            ctx = get_current()
            yield (ctx.request_id if ctx else "none").encode() + b"\n"

    return StreamingResponse(chunks())


async def own_header_endpoint(request: Request) -> Response:
    return PlainTextResponse("ok", headers={"X-Compute-Request-Id": "app-chosen"})


async def boom_endpoint(request: Request) -> Response:
    raise RuntimeError("boom")


def make_app(**kwargs: Any) -> RequestIdMiddleware:
    app = Starlette(
        routes=[
            Route("/", ids_endpoint),
            Route("/sync", sync_endpoint),
            Route("/stream", stream_endpoint),
            Route("/own", own_header_endpoint),
            Route("/boom", boom_endpoint),
        ]
    )
    return RequestIdMiddleware(app, **kwargs)


class Result:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def header(self, name: str) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == name.encode()]


def call(app: Any, path: str = "/", headers: list[tuple[bytes, bytes]] | None = None) -> Result:
    """Drive one http request through the ASGI app with raw header bytes."""
    result = Result()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # The client stays connected; the server cancels this wait when done.
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = [(bytes(k), bytes(v)) for k, v in message["headers"]]
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return result


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    with capture_root_logs(logging.DEBUG) as stream:
        yield stream


def test_valid_inbound_id_becomes_global_id() -> None:
    res = call(make_app(), headers=[(b"X-OpenStack-Request-ID", GID.encode())])
    body = json.loads(res.body)
    assert res.status == 200
    assert body["global"] == GID
    assert is_valid_request_id(body["local"])
    assert body["local"] != GID
    assert body["scope_local"] == body["local"]
    assert body["scope_global"] == GID
    assert res.header("x-openstack-request-id") == [body["local"]]


def test_no_inbound_id_local_only_and_compat_headers() -> None:
    res = call(make_app(compat_headers="x-compute-request-id"))
    body = json.loads(res.body)
    assert body["global"] is None
    assert body["scope_global"] is None
    assert res.header("x-openstack-request-id") == [body["local"]]
    assert res.header("x-compute-request-id") == [body["local"]]


def test_identity_headers_reach_the_context() -> None:
    res = call(make_app(trust_identity_headers=True), headers=[(b"x-user-id", b"alice")])
    assert json.loads(res.body)["user"] == "alice"


def test_untrusted_identity_headers_are_dropped_and_counted() -> None:
    """Without a validator in front, X-Roles: admin and friends mean nothing."""
    app = make_app()
    res = call(app, headers=[(b"x-user-id", b"alice"), (b"x-roles", b"admin")])
    assert json.loads(res.body)["user"] is None
    assert app.untrusted_identity_headers == 2


def test_context_follows_into_sync_endpoint_thread() -> None:
    res = call(make_app(), "/sync", headers=[(b"x-openstack-request-id", GID.encode())])
    body = json.loads(res.body)
    assert body["global"] == GID
    assert res.header("x-openstack-request-id") == [body["local"]]


def test_streamed_response_is_produced_under_the_context() -> None:
    res = call(make_app(), "/stream")
    local = res.header("x-openstack-request-id")[0]
    assert res.body.decode().split() == [local, local, local]


def test_header_set_by_the_app_is_not_overwritten() -> None:
    res = call(make_app(compat_headers=["x-compute-request-id"]), "/own")
    assert res.header("x-compute-request-id") == ["app-chosen"]
    assert len(res.header("x-openstack-request-id")) == 1


def test_context_is_cleared_when_the_app_raises() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(get_current())
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        call(RequestIdMiddleware(app))
    assert seen[0] is not None
    assert get_current() is None


def test_each_request_gets_a_fresh_local_id() -> None:
    app = make_app()
    ids = {call(app).header("x-openstack-request-id")[0] for _ in range(10)}
    assert len(ids) == 10


@pytest.mark.parametrize("scope_type", ["lifespan", "websocket"])
def test_non_http_scopes_pass_through(scope_type: str) -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((dict(scope), get_current()))
        await send({"type": "passed"})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {}

    scope = {"type": scope_type, "headers": [(b"x-openstack-request-id", GID.encode())]}
    asyncio.run(RequestIdMiddleware(app)(scope, receive, send))
    assert seen == [(scope, None)]
    assert "openstack.request_id" not in seen[0][0]
    assert sent == [{"type": "passed"}]


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_bad_inbound_value_is_dropped(kind: str, logs: io.StringIO) -> None:
    """A bad id never becomes the global id, never breaks the request, never shows up raw."""
    values = BAD_VALUES[kind]
    before = stats()["invalid_http_request_id"]
    res = call(
        make_app(compat_headers="x-compute-request-id"),
        headers=[(b"X-OpenStack-Request-ID", v) for v in values],
    )
    assert res.status == 200
    body = json.loads(res.body)
    assert body["global"] is None
    assert body["scope_global"] is None
    assert res.header("x-openstack-request-id") == [body["local"]]
    assert stats()["invalid_http_request_id"] == before + 1
    lines = logs.getvalue().splitlines()
    assert any("dropped an invalid request id" in line for line in lines)
    assert any(f"[None {body['local']} " in line for line in lines)
    fragments: set[str] = set()
    for v in values:
        text = v.decode("latin-1")
        fragments |= {text, text[:36], v.decode("utf-8", "replace")}
    fragments -= {""}
    response_text = str(res.headers) + res.body.decode("latin-1")
    for fragment in fragments:
        assert all(fragment not in line for line in lines), fragment
        assert fragment not in response_text
