"""A real Keystone (PyPI, SQLite) with crosstrace's paste filter in its WSGI pipeline,
called through keystoneauth1 with a global id and traced into a real ``crosstrace
serve``; and keystonemiddleware's auth_token in front of a traced service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import webob
from keystoneauth1.identity import v3

from crosstrace.context import RequestContext, use_context
from crosstrace.demo.backend import Backend, BackendClient, start_backend
from crosstrace.export import BatchExporter, OtlpHttpTransport
from crosstrace.ids import is_valid_request_id
from crosstrace.integrations.keystoneauth import TracingSession
from crosstrace.spans import (
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    SpanKind,
)
from crosstrace.tracer import Tracer
from crosstrace.wsgi import RequestIdMiddleware
from keystone_support import (
    ADMIN_PASSWORD,
    ADMIN_PROJECT,
    ADMIN_USER,
    Keystone,
    KeystoneProcess,
    keystone_importable,
    start_keystone,
)
from tracing_support import Sink, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_tracer")]

PASTE_INI = """\
[pipeline:main]
pipeline = crosstrace keystone

[filter:crosstrace]
paste.filter_factory = crosstrace.wsgi:filter_factory
service_name = keystone
configure = true

[app:keystone]
paste.app_factory = keystone_support:app_factory
"""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    server = start_backend(tmp_path_factory.mktemp("serve"), port=0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced_keystone(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend
) -> Iterator[KeystoneProcess]:
    """Keystone behind crosstrace's filter, exporting its spans to *backend*: tracing
    is configured by the paste filter (``configure = true``) from the environment."""
    reason = keystone_importable()
    if reason is not None:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("keystone-traced")
    ini = workdir / "keystone-paste.ini"
    ini.write_text(PASTE_INI)
    process = start_keystone(
        workdir,
        paste_ini=ini,
        extra_config={"DEFAULT": {"debug": "true"}},
        env={
            "CROSSTRACE_ENDPOINT": backend.url,
            "CROSSTRACE_EXPORT_DELAY": "100ms",
            "CROSSTRACE_OVERHEAD_BUDGET": "0",
        },
    )
    yield process
    process.stop()


def _wait_for_trace(
    client: BackendClient, trace_id: str, spans: set[tuple[str, str]]
) -> dict[str, Any]:
    """The trace once it holds every (service, span name) in *spans*: Keystone exports
    the token request's span and the call's span separately."""
    deadline = time.monotonic() + 30
    while True:
        try:
            trace = client.trace(trace_id)
            if spans <= {(s.get("service"), s.get("name")) for s in trace["spans"]}:
                return trace
        except Exception:
            trace = {}
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} with {spans} never arrived: {trace}")
        time.sleep(0.2)


def test_keystone_behind_the_paste_filter_one_request_id_and_one_trace(
    traced_keystone: KeystoneProcess, backend: Backend
) -> None:
    exporter = BatchExporter(OtlpHttpTransport(backend.url), max_delay_s=0.1)
    caller = Tracer("nova-api", sink=exporter, overhead_budget=0.0)
    auth = v3.Password(
        auth_url=f"{traced_keystone.url}/v3",
        username=ADMIN_USER,
        password=ADMIN_PASSWORD,
        user_domain_id="default",
        project_name=ADMIN_PROJECT,
        project_domain_id="default",
    )
    session = TracingSession(auth=auth, tracer=caller)
    try:
        with (
            use_context(RequestContext(global_request_id=GID)),
            caller.span("GET /servers", SpanKind.SERVER) as root,
        ):
            resp = session.get(f"{traced_keystone.url}/v3/projects")
        assert exporter.force_flush(10)
    finally:
        exporter.shutdown(5)
    assert resp.status_code == 200
    local = resp.headers["x-openstack-request-id"]
    assert is_valid_request_id(local)
    # Keystone's own oslo.log lines carry both ids.
    lines = [ln for ln in traced_keystone.log_lines() if f"[{GID} {local} " in ln]
    assert lines, "no Keystone log line with the global id and Keystone's local id"
    # One trace in crosstrace serve: our client span, Keystone's server span below it.
    client = BackendClient(backend.url)
    try:
        trace = _wait_for_trace(
            client,
            f"{root.trace_id:032x}",
            {("nova-api", "GET /v3/projects"), ("keystone", "GET /v3/projects")},
        )
    finally:
        client.close()
    spans = trace["spans"]
    (get_client,) = [
        s for s in spans if s["service"] == "nova-api" and s["name"] == "GET /v3/projects"
    ]
    (server,) = [s for s in spans if s["service"] == "keystone" and s["name"] == "GET /v3/projects"]
    assert server["parent_span_id"] == get_client["span_id"]
    assert server["attributes"][ATTR_REQUEST_ID] == local
    assert server["attributes"][ATTR_GLOBAL_REQUEST_ID] == GID


def _service(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_auth_token_in_front_the_spans_record_the_validated_project(
    keystone: Keystone, sink: Sink
) -> None:
    from keystonemiddleware import auth_token

    domain = keystone.create_domain()
    project = keystone.create_project(domain)
    user = keystone.make_user(domain, project, roles=("reader",))
    conf = {
        "www_authenticate_uri": keystone.url,
        "auth_url": keystone.url,
        "auth_type": "password",
        "username": ADMIN_USER,
        "password": ADMIN_PASSWORD,
        "user_domain_id": "default",
        "project_name": ADMIN_PROJECT,
        "project_domain_id": "default",
        "delay_auth_decision": "false",
    }
    tracer = sink_tracer(sink, "image-api")
    # auth_token in front: the identity headers are its own, so they are trusted.
    inner = RequestIdMiddleware(_service, tracer=tracer, trust_identity_headers=True)
    app = auth_token.filter_factory({}, **conf)(inner)
    good = webob.Request.blank("/v2/images", headers={"X-Auth-Token": user.token})
    assert good.get_response(app).status_int == 200
    bad = webob.Request.blank("/v2/images", headers={"X-Auth-Token": "not-a-token"})
    assert bad.get_response(app).status_int == 401
    (span,) = [s for s in sink.spans if s.kind == SpanKind.SERVER]  # the 401 never got in
    assert span.attributes[ATTR_PROJECT_ID] == project
    assert span.attributes[ATTR_PROJECT_DOMAIN_ID] == domain
    assert span.attributes["openstack.user_id"] == user.id
