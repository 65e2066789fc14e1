"""The three defects found with crosstrace in front of a real Keystone, reproduced with
oslo.middleware's ``RequestId`` inside the application (where Keystone hard-codes it)
and oslo.log's formatter on the root logger (where Keystone's oslo.log puts it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import webob
from oslo_context import context as oslo_context
from oslo_log import log as oslo_logging
from oslo_middleware import RequestId as OsloRequestId

from crosstrace.context import ENV_GLOBAL_REQUEST_ID, ENV_REQUEST_ID
from crosstrace.ids import is_valid_request_id
from crosstrace.logging import ExportHandler
from crosstrace.spans import ATTR_GLOBAL_REQUEST_ID, ATTR_REQUEST_ID, SpanKind
from crosstrace.tracer import Tracer
from crosstrace.wsgi import RequestIdMiddleware
from oslo_support import OsloLog
from tracing_support import Sink, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"

pytestmark = pytest.mark.usefixtures("no_tracer")

LOG = oslo_logging.getLogger("keystone.server.flask.application")


def keystone_like_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """What Keystone does per request: an oslo.context from the environ, then logs."""
    ctx = oslo_context.RequestContext.from_environ(environ)  # overwrite=True: thread-local
    environ["test.seen"] = {
        "global_request_id": environ.get(ENV_GLOBAL_REQUEST_ID),
        "header": environ.get("HTTP_X_OPENSTACK_REQUEST_ID"),
        "oslo_context": ctx,
    }
    LOG.info("GET /v3 handled")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


@pytest.fixture
def tracer(sink: Sink) -> Tracer:
    return sink_tracer(sink, "keystone")


@pytest.fixture
def exported(oslo_log: OsloLog, tracer: Tracer) -> Iterator[ExportHandler]:
    """crosstrace's ExportHandler on the root logger after oslo.log's handler."""
    handler = ExportHandler(tracer)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def keystone(tracer: Tracer) -> RequestIdMiddleware:
    """crosstrace's filter in front of an application that runs oslo's RequestId itself."""
    return RequestIdMiddleware(OsloRequestId(keystone_like_app), tracer=tracer)


def request(app: Any, header: str | None = None) -> tuple[webob.Request, webob.Response]:
    req = webob.Request.blank("/v3")
    if header is not None:
        req.environ["HTTP_X_OPENSTACK_REQUEST_ID"] = header  # as a server passes it on
    return req, req.get_response(app)


def test_one_local_id_in_response_log_line_span_and_exported_record(
    oslo_log: OsloLog, exported: ExportHandler, tracer: Tracer, sink: Sink
) -> None:
    """Defect 1: the id the user sees is the one in Keystone's log line and in the span."""
    req, resp = request(keystone(tracer), GID)
    (local,) = resp.headers.getall("x-openstack-request-id")
    assert is_valid_request_id(local)
    assert req.environ[ENV_REQUEST_ID] == local
    (line,) = [ln for ln in oslo_log.lines() if "GET /v3 handled" in ln]
    assert f"[{GID} {local} " in line
    server = sink.named("GET /v3", SpanKind.SERVER)
    assert server.attributes[ATTR_REQUEST_ID] == local
    assert server.attributes[ATTR_GLOBAL_REQUEST_ID] == GID
    (record,) = [r for r in sink.logs if r.body == "GET /v3 handled"]
    assert record.attributes[ATTR_REQUEST_ID] == local


def test_adopted_id_also_goes_out_in_compat_headers(tracer: Tracer) -> None:
    app = RequestIdMiddleware(
        OsloRequestId(keystone_like_app), compat_headers="x-compute-request-id", tracer=tracer
    )
    _, resp = request(app)
    assert resp.headers["x-compute-request-id"] == resp.headers["x-openstack-request-id"]


def test_without_tracing_the_context_adopts_the_inner_id_too() -> None:
    seen: list[str] = []

    def after(environ: dict[str, Any], start_response: Any) -> Any:
        body = OsloRequestId(keystone_like_app)(environ, start_response)
        from crosstrace import get_current

        ctx = get_current()
        assert ctx is not None
        seen.append(ctx.request_id)
        return body

    _, resp = request(RequestIdMiddleware(after))
    assert seen == [resp.headers["x-openstack-request-id"]]


def test_exported_records_carry_both_ids_when_oslo_log_formatted_them_first(
    oslo_log: OsloLog, exported: ExportHandler, tracer: Tracer, sink: Sink
) -> None:
    """Defect 2: oslo.log's formatter set ``request_id`` on the record before
    crosstrace's filter saw it; the exported record still has both ids."""
    _, resp = request(keystone(tracer), GID)
    local = resp.headers["x-openstack-request-id"]
    (record,) = [r for r in sink.logs if r.body == "GET /v3 handled"]
    assert record.attributes[ATTR_REQUEST_ID] == local
    assert record.attributes[ATTR_GLOBAL_REQUEST_ID] == GID
    assert record.trace_id == sink.named("GET /v3").trace_id
    assert exported.dropped == 0


def test_inner_oslo_filter_alone_lets_a_trailing_newline_in(oslo_log: OsloLog) -> None:
    """The control for defect 3: without crosstrace, oslo accepts ``req-...\\n``
    and Keystone's log line breaks in two."""
    req, _ = request(OsloRequestId(keystone_like_app), GID + "\n")
    assert req.environ["test.seen"]["global_request_id"] == GID + "\n"
    first, second = oslo_log.lines()  # one record, two lines
    assert first.endswith(f"[{GID}")
    assert second.endswith("GET /v3 handled")


def test_refused_id_never_reaches_the_inner_filter(
    oslo_log: OsloLog, exported: ExportHandler, tracer: Tracer, sink: Sink
) -> None:
    """Defect 3: crosstrace removes the refused header, so oslo's filter cannot re-read it."""
    req, resp = request(keystone(tracer), GID + "\n")
    seen = req.environ["test.seen"]
    assert seen["header"] is None
    assert seen["global_request_id"] is None
    assert seen["oslo_context"].global_request_id is None
    local = resp.headers["x-openstack-request-id"]
    (line,) = [ln for ln in oslo_log.lines() if "GET /v3 handled" in ln]
    assert f"[None {local} " in line
    assert ATTR_GLOBAL_REQUEST_ID not in sink.named("GET /v3").attributes
