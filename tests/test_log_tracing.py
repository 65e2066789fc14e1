"""Logging with traces: trace ids on records, ERROR records as span events, OTLP export."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from crosstrace import otlp
from crosstrace.context import RequestContext, use_context
from crosstrace.logging import ContextFilter, ExportHandler
from crosstrace.tracing import SpanKind, StatusCode, Tracer, span
from tracing_support import Sink, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"


pytestmark = pytest.mark.usefixtures("no_tracer")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def tracer(sink: Sink) -> Tracer:
    return sink_tracer(sink, "api")


@pytest.fixture
def log() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test.log_tracing")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)


def test_records_carry_the_current_spans_ids(log: logging.Logger, tracer: Tracer) -> None:
    cap = Capture()
    log.addHandler(cap)
    log.info("outside")
    with span("work", tracer=tracer) as s:
        log.info("inside")
    outside, inside = cap.records
    assert outside.trace_id == outside.span_id == ""  # type: ignore[attr-defined]
    assert inside.trace_id == f"{s.trace_id:032x}"  # type: ignore[attr-defined]
    assert inside.span_id == f"{s.span_id:016x}"  # type: ignore[attr-defined]


def test_error_record_becomes_one_span_event_and_marks_nothing(
    log: logging.Logger, tracer: Tracer, sink: Sink
) -> None:
    log.addHandler(Capture())
    log.addHandler(Capture())  # two handlers filter the record: still one event
    with span("work", tracer=tracer):
        log.info("fine")
        try:
            raise KeyError("flavor")
        except KeyError:
            log.exception("could not resize %s", "vm-1")
    (s,) = sink.spans
    assert s.status_code == StatusCode.UNSET
    assert s.events is not None
    (event,) = s.events
    name, _, attrs = event
    assert name == "log"
    assert attrs["log.message"] == "could not resize vm-1"
    assert attrs["log.logger"] == "test.log_tracing"
    assert attrs["log.level"] == "ERROR"
    assert attrs["exception.type"] == "KeyError"
    assert "raise KeyError" in attrs["exception.stacktrace"]


def test_export_handler_sends_records_under_the_service_resource(
    log: logging.Logger, tracer: Tracer, sink: Sink
) -> None:
    log.addHandler(ExportHandler(tracer.for_service("image")))
    ctx = RequestContext(global_request_id=GID, project_id="p1", user_id="u1", domain_id="d1")
    with use_context(ctx), span("GET /", SpanKind.SERVER, tracer=tracer) as s:
        log.warning("image %s missing", "abc")
    log.debug("below the level")
    (rec,) = sink.logs
    assert rec.body == "image abc missing"
    assert rec.severity_text == "WARNING"
    assert rec.severity_number == 13
    assert rec.trace_id == s.trace_id
    assert rec.span_id == s.span_id
    assert rec.resource is not None
    assert rec.resource["service.name"] == "image"
    assert rec.scope == "test.log_tracing"
    assert rec.attributes["openstack.request_id"] == ctx.request_id
    assert rec.attributes["openstack.global_request_id"] == GID
    assert rec.attributes["openstack.project_id"] == "p1"
    assert rec.attributes["openstack.user_id"] == "u1"
    assert rec.attributes["openstack.domain_id"] == "d1"
    req = otlp.logs_to_request(sink.logs, {"service.name": "fallback"})
    (rl,) = req.resource_logs
    assert {kv.key: kv.value.string_value for kv in rl.resource.attributes}[
        "service.name"
    ] == "image"
    assert rl.scope_logs[0].scope.name == "test.log_tracing"


def test_export_handler_without_tracer_follows_the_current_span(
    log: logging.Logger, tracer: Tracer, sink: Sink
) -> None:
    handler = ExportHandler()
    log.addHandler(handler)
    log.info("no tracer anywhere")
    assert handler.dropped == 1
    with span("x", tracer=tracer.for_service("worker")):
        log.info("in a worker span")
    (rec,) = sink.logs
    assert rec.resource is not None
    assert rec.resource["service.name"] == "worker"


def test_export_handler_never_raises(tracer: Tracer, sink: Sink) -> None:
    handler = ExportHandler(tracer)
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("no number",), None)
    handler.handle(bad)  # formatting fails inside emit
    assert handler.dropped == 1
    assert sink.logs == []


def test_export_handler_masks_secret_attributes(tracer: Tracer, sink: Sink) -> None:
    handler = ExportHandler(tracer)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.__dict__["auth_token"] = "hunter2"
    tracer.redactor = type(tracer.redactor)(["thread.name"])  # mask an attribute we send
    handler.handle(record)
    (rec,) = sink.logs
    assert rec.attributes["thread.name"] == "***"
