"""keystoneauth1 integration: the global id and the trace go out with every call."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from keystoneauth1 import exceptions as ksa_exceptions
from keystoneauth1 import session as ksa_session
from keystoneauth1.identity import v3

from crosstrace.context import RequestContext, use_context
from crosstrace.demo.servers import HttpServer, serve_wsgi
from crosstrace.ids import is_valid_request_id
from crosstrace.integrations.keystoneauth import TracingSession, adapter, traced
from crosstrace.spans import SpanKind
from crosstrace.tracecontext import parse_traceparent
from crosstrace.wsgi import RequestIdMiddleware
from keystone_support import ADMIN_PASSWORD, ADMIN_PROJECT, ADMIN_USER, Keystone
from tracing_support import Sink, capture_root_logs, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
OTHER = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"

pytestmark = pytest.mark.usefixtures("no_tracer")


class Recorder:
    def __init__(self) -> None:
        self.headers: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.headers.append(
            {
                "request_id": environ.get("HTTP_X_OPENSTACK_REQUEST_ID"),
                "traceparent": environ.get("HTTP_TRACEPARENT"),
            }
        )
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def service(sink: Sink) -> Iterator[tuple[HttpServer, Recorder]]:
    recorder = Recorder()
    server = serve_wsgi(RequestIdMiddleware(recorder, tracer=sink_tracer(sink, "nova-api")), "nova")
    yield server, recorder
    server.stop()


def test_session_sends_the_global_id_and_its_client_span(
    service: tuple[HttpServer, Recorder], sink: Sink
) -> None:
    server, recorder = service
    caller = sink_tracer(sink, "caller")
    session = TracingSession()
    with (
        capture_root_logs(logging.DEBUG) as logs,
        use_context(RequestContext(global_request_id=GID)),
        caller.span("POST /servers", SpanKind.SERVER) as root,
    ):
        resp = session.get(f"{server.url}/v2.1/servers/7d1f0a9c-53a4-4d55-8f0e-4c1f8d8e2b11")
    assert resp.status_code == 200
    (sent,) = recorder.headers
    assert sent["request_id"] == GID
    client = sink.named("GET /v2.1/servers/{id}", SpanKind.CLIENT)
    parsed = parse_traceparent(sent["traceparent"])
    assert parsed is not None
    assert parsed[:2] == (root.trace_id, client.span_id)
    assert client.parent_id == root.span_id
    assert client.attributes["http.response.status_code"] == 200
    callee = sink.named("GET /v2.1/servers/{id}", SpanKind.SERVER)
    assert callee.parent_id == client.span_id
    # keystoneauth's own line with the callee's local id, under the caller's ids.
    callee_id = resp.headers["x-openstack-request-id"]
    (line,) = [ln for ln in logs.getvalue().splitlines() if f"used request id {callee_id}" in ln]
    assert f"[{GID} " in line


def test_explicit_global_id_from_an_adapter_is_kept(service: tuple[HttpServer, Recorder]) -> None:
    server, recorder = service
    compute = adapter(ksa_session.Session(), global_request_id=OTHER)
    assert isinstance(compute.session, TracingSession)
    with use_context(RequestContext(global_request_id=GID)):
        compute.get(f"{server.url}/v2.1/flavors", endpoint_override=server.url)
    assert recorder.headers[0]["request_id"] == OTHER


def test_traced_turns_an_existing_session_into_a_tracing_one(
    service: tuple[HttpServer, Recorder],
) -> None:
    server, recorder = service
    session = traced(ksa_session.Session())
    with use_context(RequestContext(global_request_id=GID)):
        session.get(f"{server.url}/")
    assert recorder.headers[0]["request_id"] == GID
    assert traced(session) is session


def test_against_keystone_tokens_and_the_callee_id(keystone: Keystone, sink: Sink) -> None:
    """A real Keystone: password auth and a token-authenticated call, traced; a 401 too."""
    caller = sink_tracer(sink, "caller")
    auth = v3.Password(
        auth_url=f"{keystone.url}/v3",
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        user_domain_id="default",
        project_name=ADMIN_PROJECT,
        project_domain_id="default",
    )
    session = TracingSession(auth=auth, tracer=caller)
    with (
        capture_root_logs(logging.DEBUG) as logs,
        use_context(RequestContext(global_request_id=GID)),
    ):
        resp = session.get(f"{keystone.url}/v3/projects")
        with pytest.raises(ksa_exceptions.Unauthorized):
            TracingSession(tracer=caller).get(
                f"{keystone.url}/v3/projects", headers={"X-Auth-Token": "not-a-token"}
            )
    assert resp.status_code == 200
    callee_id = resp.headers["x-openstack-request-id"]
    assert is_valid_request_id(callee_id)
    assert any(
        f"used request id {callee_id}" in ln and f"[{GID} " in ln
        for ln in logs.getvalue().splitlines()
    )
    names = [s.name for s in sink.spans if s.kind == SpanKind.CLIENT]
    assert "POST /v3/auth/tokens" in names  # the token request is a client span too
    failed = [s for s in sink.spans if s.attributes.get("http.response.status_code") == 401]
    assert len(failed) == 1
