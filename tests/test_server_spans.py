"""SERVER spans from the WSGI and ASGI request-id middleware."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from crosstrace.asgi import RequestIdMiddleware as AsgiMiddleware
from crosstrace.httpnames import ENV_ROUTE, normalize_path
from crosstrace.propagation import inject_headers
from crosstrace.tracing import INVALID_SPAN, SpanKind, StatusCode, Tracer, current_span, span
from crosstrace.tracing import tracer as tr
from crosstrace.wsgi import RequestIdMiddleware
from tracing_support import Sink, sink_tracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
GID = "req-7c9e6679-7425-40de-944b-e07fc1f90ae7"
IMAGE = "3f2a5a6e-7d0b-4c1e-9c4e-5f0f1d2c3b4a"


pytestmark = pytest.mark.usefixtures("no_tracer")


@pytest.fixture
def tracer(sink: Sink) -> Tracer:
    return sink_tracer(sink, "svc", sample_ratio=1.0)


def environ(path: str = "/", method: str = "GET", **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
    }
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    return env


def call(app: Any, env: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"] = status
        got["headers"] = dict(headers)
        return lambda data: None

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return got["status"], got["headers"], data


# -- WSGI -------------------------------------------------------------------------


def test_wsgi_without_tracer_opens_no_span(sink: Sink) -> None:
    seen: list[Any] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(current_span())
        start_response("200 OK", [])
        return [b"ok"]

    call(RequestIdMiddleware(app), environ())
    assert seen == [INVALID_SPAN]
    assert sink.spans == []


def test_wsgi_server_span_continues_the_callers_trace(sink: Sink, tracer: Tracer) -> None:
    seen: list[Any] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(current_span())
        start_response("201 Created", [])
        return [b"ok"]

    mw = RequestIdMiddleware(app, tracer=tracer, trust_identity_headers=True)
    _, headers, _ = call(
        mw,
        environ(
            f"/v2/images/{IMAGE}",
            "POST",
            traceparent=f"00-{TRACE}-{PARENT}-01",
            x_openstack_request_id=GID,
            x_project_id="p1",
            x_user_id="u1",
            x_domain_id="d1",
        ),
    )
    (s,) = sink.spans
    assert seen == [s]
    assert s.kind == SpanKind.SERVER
    assert s.name == "POST /v2/images/{id}"
    assert f"{s.trace_id:032x}" == TRACE
    assert f"{s.parent_id:016x}" == PARENT
    assert s.parent_remote
    assert s.attributes["http.request.method"] == "POST"
    assert s.attributes["url.path"] == f"/v2/images/{IMAGE}"
    assert s.attributes["http.response.status_code"] == 201
    assert s.attributes["openstack.request_id"] == headers["x-openstack-request-id"]
    assert s.attributes["openstack.global_request_id"] == GID
    assert s.attributes["openstack.project_id"] == "p1"
    assert s.attributes["openstack.user_id"] == "u1"
    assert s.attributes["openstack.domain_id"] == "d1"
    assert s.status_code == StatusCode.UNSET
    assert s.end_ns >= s.start_ns > 0


def test_wsgi_malformed_traceparent_starts_a_new_trace(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return []

    call(RequestIdMiddleware(app, tracer=tracer), environ(traceparent=f"00-{TRACE}-{PARENT}-0x"))
    (s,) = sink.spans
    assert f"{s.trace_id:032x}" != TRACE
    assert s.parent_id == 0


def test_wsgi_5xx_sets_error_status(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [])
        return [b"busy"]

    call(RequestIdMiddleware(app, tracer=tracer), environ())
    (s,) = sink.spans
    assert s.status_code == StatusCode.ERROR
    assert s.status_message == "HTTP 503"
    assert s.attributes["http.response.status_code"] == 503


def test_wsgi_4xx_is_not_an_error(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return []

    call(RequestIdMiddleware(app, tracer=tracer), environ())
    assert sink.spans[0].status_code == StatusCode.UNSET


def test_wsgi_exception_is_recorded_and_propagates(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        call(RequestIdMiddleware(app, tracer=tracer), environ())
    (s,) = sink.spans
    assert s.status_code == StatusCode.ERROR
    assert s.events is not None
    name, _, attrs = s.events[0]
    assert name == "exception"
    assert attrs["exception.type"] == "RuntimeError"
    assert attrs["exception.message"] == "disk full"
    assert current_span() is INVALID_SPAN


def test_wsgi_streamed_body_runs_under_the_span_which_ends_at_close(
    sink: Sink, tracer: Tracer
) -> None:
    seen: list[Any] = []

    def app(env: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        for chunk in (b"a", b"b"):
            seen.append(current_span())
            yield chunk

    mw = RequestIdMiddleware(app, tracer=tracer)
    body = mw(environ(), lambda status, headers, exc_info=None: None)
    assert sink.spans == []  # not ended before the body is produced
    assert b"".join(body) == b"ab"
    assert sink.spans == []
    body.close()  # type: ignore[attr-defined]
    (s,) = sink.spans
    assert seen == [s, s]
    assert current_span() is INVALID_SPAN


def test_wsgi_exception_while_streaming_is_recorded(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise ValueError("broken stream")

    with pytest.raises(ValueError, match="broken stream"):
        call(RequestIdMiddleware(app, tracer=tracer), environ())
    (s,) = sink.spans
    assert s.status_code == StatusCode.ERROR


def test_wsgi_route_set_by_the_app_names_the_span(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        env[ENV_ROUTE] = "/servers/{server_id}"
        start_response("200 OK", [])
        return []

    call(RequestIdMiddleware(app, tracer=tracer), environ("/servers/abc"))
    (s,) = sink.spans
    assert s.name == "GET /servers/{server_id}"
    assert s.attributes["http.route"] == "/servers/{server_id}"


def test_wsgi_unknown_method_is_named_other(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return []

    call(RequestIdMiddleware(app, tracer=tracer), environ("/x", "FROBNICATE"))
    (s,) = sink.spans
    assert s.name == "_OTHER /x"
    assert s.attributes["http.request.method"] == "_OTHER"
    assert s.attributes["http.request.method_original"] == "FROBNICATE"


def test_wsgi_custom_path_normalizer(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return []

    mw = RequestIdMiddleware(app, tracer=tracer, path_normalizer=lambda p: "/all")
    call(mw, environ("/a/b"))
    assert sink.spans[0].name == "GET /all"


def test_wsgi_uses_the_configured_tracer_when_none_given(sink: Sink, tracer: Tracer) -> None:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return []

    mw = RequestIdMiddleware(app)
    tr._set_tracer(tracer)
    call(mw, environ())
    assert len(sink.spans) == 1


@pytest.mark.parametrize("status", ["200 OK", "500 Internal Server Error"])
def test_wsgi_unrecorded_request_propagates_and_exports_only_a_failed_root(
    sink: Sink, status: str
) -> None:
    """Outside the record fraction nothing is recorded, the trace still
    propagates, and a failed request exports its root span alone."""
    t = Tracer("svc", sink=sink, overhead_budget=0.0, sample_ratio=0.0)
    t.record_threshold = 0  # neither sampled nor recorded
    seen: list[Any] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        with span("child", attributes={"a": 1}) as child:
            seen.append(child)
        seen.append(current_span())
        start_response(status, [])
        return []

    call(RequestIdMiddleware(app, tracer=t), environ(traceparent=f"00-{TRACE}-{PARENT}-00"))
    assert not seen[1].is_recording()
    assert seen[0] is seen[1]  # the child is the same non-recording root
    assert f"{seen[1].trace_id:032x}" == TRACE
    if status.startswith("200"):
        assert sink.spans == []
        return
    (root,) = sink.spans
    assert root.kind == SpanKind.SERVER
    assert root.status_code == StatusCode.ERROR
    assert f"{root.trace_id:032x}" == TRACE
    assert f"{root.parent_id:016x}" == PARENT
    assert root.span_id == seen[1].span_id  # the id it propagated
    assert root.attributes["http.response.status_code"] == 500
    assert root.name == "GET /"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/images/3f2a5a6e-7d0b-4c1e-9c4e-5f0f1d2c3b4a", "/v2/images/{id}"),
        ("/v2/images/3F2A5A6E7D0B4C1E9C4E5F0F1D2C3B4A/file", "/v2/images/{id}/file"),
        ("/servers/42/action", "/servers/{id}/action"),
        ("/v2.1/servers", "/v2.1/servers"),
        (f"/requests/{GID}", "/requests/{id}"),
        ("/users/bob", "/users/bob"),
        ("", "/"),
    ],
)
def test_normalize_path(path: str, expected: str) -> None:
    assert normalize_path(path) == expected


# -- ASGI -------------------------------------------------------------------------


def starlette_app() -> Starlette:
    async def show(request: Request) -> PlainTextResponse:
        assert current_span().is_recording()
        return PlainTextResponse("ok")

    async def fail(request: Request) -> PlainTextResponse:
        return PlainTextResponse("nope", status_code=502)

    async def crash(request: Request) -> PlainTextResponse:
        raise KeyError("missing")

    async def stream(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            for part in ("a", "b"):
                request.state.seen.append(current_span())
                yield part

        request.state.seen = SEEN
        return StreamingResponse(gen())

    return Starlette(
        routes=[
            Route("/servers/{server_id}", show),
            Route("/fail", fail),
            Route("/crash", crash),
            Route("/stream", stream),
        ]
    )


SEEN: list[Any] = []


async def asgi_get(app: Any, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


@pytest.mark.anyio
async def test_asgi_server_span_named_by_the_starlette_route(sink: Sink, tracer: Tracer) -> None:
    app = AsgiMiddleware(starlette_app(), tracer=tracer, trust_identity_headers=True)
    resp = await asgi_get(
        app,
        f"/servers/{IMAGE}",
        traceparent=f"00-{TRACE}-{PARENT}-01",
        **{"X-OpenStack-Request-ID": GID, "X-Project-Id": "p1"},
    )
    assert resp.status_code == 200
    (s,) = sink.spans
    assert s.kind == SpanKind.SERVER
    assert s.name == "GET /servers/{server_id}"
    assert s.attributes["http.route"] == "/servers/{server_id}"
    assert s.attributes["url.path"] == f"/servers/{IMAGE}"
    assert s.attributes["http.response.status_code"] == 200
    assert s.attributes["openstack.request_id"] == resp.headers["x-openstack-request-id"]
    assert s.attributes["openstack.global_request_id"] == GID
    assert s.attributes["openstack.project_id"] == "p1"
    assert f"{s.trace_id:032x}" == TRACE
    assert f"{s.parent_id:016x}" == PARENT


@pytest.mark.anyio
async def test_asgi_5xx_and_exception_set_error(sink: Sink, tracer: Tracer) -> None:
    app = AsgiMiddleware(starlette_app(), tracer=tracer)
    assert (await asgi_get(app, "/fail")).status_code == 502
    assert (await asgi_get(app, "/crash")).status_code == 500
    fail, crash = sink.spans
    assert fail.status_code == StatusCode.ERROR
    assert fail.status_message == "HTTP 502"
    assert crash.status_code == StatusCode.ERROR
    assert crash.events is not None
    assert crash.events[0][2]["exception.type"] == "KeyError"


@pytest.mark.anyio
async def test_asgi_unmatched_path_is_normalised(sink: Sink, tracer: Tracer) -> None:
    app = AsgiMiddleware(starlette_app(), tracer=tracer)
    assert (await asgi_get(app, "/nothing/12345")).status_code == 404
    assert sink.spans[0].name == "GET /nothing/{id}"


@pytest.mark.anyio
async def test_asgi_streamed_body_is_produced_under_the_span(sink: Sink, tracer: Tracer) -> None:
    SEEN.clear()
    app = AsgiMiddleware(starlette_app(), tracer=tracer)
    resp = await asgi_get(app, "/stream")
    assert resp.text == "ab"
    (s,) = sink.spans
    assert [s, s] == SEEN


@pytest.mark.anyio
async def test_asgi_without_tracer_opens_no_span(sink: Sink) -> None:
    app = AsgiMiddleware(starlette_app())
    resp = await asgi_get(app, "/fail")
    assert resp.status_code == 502
    assert sink.spans == []


def test_paste_filter_service_name_picks_the_service_tracer(sink: Sink, tracer: Tracer) -> None:
    """``service_name`` in the filter section binds the pipeline to that service's tracer."""
    from crosstrace.wsgi import filter_factory

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return []

    tr._set_tracer(tracer)
    mw = filter_factory({}, service_name="nova-api")(app)
    tr._set_tracer(None)  # resolved when the pipeline was built
    call(mw, environ())
    (s,) = sink.spans
    assert s.segment.tracer.resource["service.name"] == "nova-api"
    assert s.segment.tracer is tracer.for_service("nova-api")


# -- W3C tracestate through the middleware (the trace-context test suite's cases) --------


def _outbound_tracestate_wsgi(tracer: Tracer, value: str) -> str | None:
    out: dict[str, str] = {}

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        inject_headers(out)
        start_response("200 OK", [])
        return [b""]

    call(
        RequestIdMiddleware(app, tracer=tracer),
        environ(traceparent=f"00-{TRACE}-{PARENT}-00", tracestate=value),
    )
    assert out["traceparent"].split("-")[1] == TRACE
    return out.get("tracestate")


@pytest.mark.parametrize("value", ["foo=1,foo=1", "foo=1,foo=2"])
def test_wsgi_duplicated_tracestate_key_still_propagates(tracer: Tracer, value: str) -> None:
    assert _outbound_tracestate_wsgi(tracer, value) == "foo=1"


def test_wsgi_vendor_keys_propagate_and_a_leading_at_drops_the_list(tracer: Tracer) -> None:
    assert _outbound_tracestate_wsgi(tracer, "foo@bar=1,bar=2") == "foo@bar=1,bar=2"
    assert _outbound_tracestate_wsgi(tracer, "@foo=1,bar=2") is None


@pytest.mark.anyio
@pytest.mark.parametrize(("second", "kept"), [("z" * 256 + "=1", True), ("z" * 257 + "=1", False)])
async def test_asgi_key_limit_applies_across_tracestate_lines(
    tracer: Tracer, second: str, kept: bool
) -> None:
    out: dict[str, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        inject_headers(out)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = httpx.ASGITransport(app=AsgiMiddleware(app, tracer=tracer))
    headers = [
        ("traceparent", f"00-{TRACE}-{PARENT}-00"),
        ("tracestate", "foo=1"),
        ("tracestate", second),
    ]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resp = await client.get("/", headers=headers)
    assert resp.status_code == 200
    assert out["traceparent"].split("-")[1] == TRACE
    if kept:
        assert out["tracestate"].startswith("foo=1,")
    else:
        assert "tracestate" not in out
