"""oslo.log: crosstrace's trace ids on ContextFormatter lines, and a logging.conf
(what oslo.log's ``log_config_append`` loads) that exports records to crosstrace."""

from __future__ import annotations

import logging
import logging.config
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_log import log as oslo_logging

from crosstrace.context import RequestContext, use_context
from crosstrace.integrations import oslo_log as ct_oslo_log
from crosstrace.spans import ATTR_GLOBAL_REQUEST_ID, ATTR_REQUEST_ID, SpanKind
from crosstrace.tracer import Tracer
from crosstrace.tracing import tracer as tr
from oslo_support import OsloLog
from tracing_support import Sink, sink_tracer

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"

pytestmark = pytest.mark.usefixtures("no_tracer")


@pytest.fixture
def global_conf() -> Iterator[cfg.ConfigOpts]:
    """oslo.log's options on the global CONF (what a formatter made by fileConfig
    reads), with the documented context format; overrides cleared afterwards."""
    oslo_logging.register_options(cfg.CONF)
    cfg.CONF.set_override("logging_context_format_string", ct_oslo_log.CONTEXT_FORMAT)
    yield cfg.CONF
    cfg.CONF.clear_override("logging_context_format_string")


@pytest.fixture
def root_restored() -> Iterator[logging.Logger]:
    """fileConfig replaces the root handlers (as oslo.log does); put them back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_install_adds_trace_ids_to_oslo_log_lines(sink: Sink) -> None:
    oslo = OsloLog()
    oslo.conf.set_override("logging_context_format_string", ct_oslo_log.CONTEXT_FORMAT)
    std_log = logging.getLogger("nova.compute.manager")
    std_log.addHandler(oslo.handler)
    std_log.setLevel(logging.INFO)
    log = oslo_logging.getLogger("nova.compute.manager")
    try:
        assert ct_oslo_log.install(std_log) == 1
        assert ct_oslo_log.install(std_log) == 0  # once per handler
        tracer = sink_tracer(sink, "nova-compute")
        oslo_ctx = oslo_context.RequestContext(
            request_id=LID, global_request_id=GID, overwrite=False
        )
        with tracer.span("build_and_run_instance", SpanKind.SERVER) as span:
            log.info("building", context=oslo_ctx)  # oslo.log's explicit context
    finally:
        std_log.removeHandler(oslo.handler)
    (line,) = oslo.lines()
    assert f"[{GID} {LID} " in line
    assert line.endswith(f"building trace_id={span.trace_id:032x} span_id={span.span_id:016x}")


def test_logging_conf_formats_with_trace_ids_and_exports_both_ids(
    tmp_path: Path, global_conf: cfg.ConfigOpts, root_restored: logging.Logger, sink: Sink
) -> None:
    """The logging.conf an operator points ``log_config_append`` at."""
    log_file = tmp_path / "nova-api.log"
    conf_file = tmp_path / "logging.conf"
    conf_file.write_text(
        textwrap.dedent(
            f"""\
            [loggers]
            keys = root

            [handlers]
            keys = file, crosstrace

            [formatters]
            keys = context

            [logger_root]
            level = INFO
            handlers = file, crosstrace

            [handler_file]
            class = FileHandler
            formatter = context
            args = ({str(log_file)!r}, "a")

            [handler_crosstrace]
            class = crosstrace.logging.ExportHandler
            level = INFO
            args = ()
            kwargs = {{"service": "nova-api"}}

            [formatter_context]
            class = crosstrace.integrations.oslo_log.ContextFormatter
            datefmt = %Y-%m-%d %H:%M:%S
            """
        )
    )
    logging.config.fileConfig(conf_file, disable_existing_loggers=False)
    tracer: Tracer = sink_tracer(sink, "process-default")
    tr._set_tracer(tracer)  # what crosstrace.configure() does; no_tracer restores
    log = oslo_logging.getLogger("nova.api.openstack")
    with (
        use_context(RequestContext(LID, GID, user_id="u1", project_id="p1")),
        tracer.span("GET /servers", SpanKind.SERVER) as span,
    ):
        log.info("listing servers")
    for handler in root_restored.handlers:
        handler.flush()
    (line,) = [ln for ln in log_file.read_text().splitlines() if "listing servers" in ln]
    assert f"[{GID} {LID} u1 p1 " in line
    assert line.endswith(f"trace_id={span.trace_id:032x} span_id={span.span_id:016x}")
    (record,) = [r for r in sink.logs if "listing servers" in r.body]
    assert record.resource["service.name"] == "nova-api"
    assert record.attributes[ATTR_REQUEST_ID] == LID
    assert record.attributes[ATTR_GLOBAL_REQUEST_ID] == GID
    assert record.trace_id == span.trace_id
