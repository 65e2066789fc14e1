"""crosstrace.logging: the context filter, oslo.log's text format, JSON lines, setup()."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from oslo_context import context as oslo_context

import crosstrace.logging as ctlog
from crosstrace.context import RequestContext, use_context
from crosstrace.logging import (
    JSON_KEYS,
    ContextFilter,
    ContextFormatter,
    JSONFormatter,
    setup,
)
from tracing_support import capture_root_logs

GID = "req-3f1e2d4c-5b6a-4789-8abc-def012345678"
LID = "req-0a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"
# 2026-11-22 02:06:58.123456 UTC
CREATED = 1795313218.123456


def make_record(
    name: str = "nova.api.openstack", level: int = logging.INFO, msg: str = "GET /v2.1/servers"
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 10, msg, None, None)
    record.created = CREATED
    record.msecs = 123.0
    record.process = 4242
    return record


def utc_formatter(**kwargs: object) -> ContextFormatter:
    formatter = ContextFormatter(**kwargs)  # type: ignore[arg-type]
    formatter.converter = time.gmtime
    return formatter


def test_request_line_matches_oslo_log_context_format() -> None:
    """Field for field oslo.log's logging_context_format_string with its defaults."""
    ctx = RequestContext(
        request_id=LID,
        global_request_id=GID,
        user_id="9b3c",
        project_id="4f2a",
        user_domain_id="default",
        project_domain_id="default",
    )
    with use_context(ctx):
        line = utc_formatter().format(make_record())
    # asctime.msecs process level name [global local user project domain system_scope
    #   user_domain project_domain] instance message
    assert line == (
        "2026-11-22 02:06:58.123 4242 INFO nova.api.openstack "
        f"[{GID} {LID} 9b3c 4f2a - - default default] GET /v2.1/servers"
    )


def test_request_without_global_id_prints_none_like_oslo_log() -> None:
    """oslo.log copies a None global id straight into the line: ``[None req-...``."""
    with use_context(RequestContext(request_id=LID)):
        line = utc_formatter().format(make_record())
    assert line == (
        f"2026-11-22 02:06:58.123 4242 INFO nova.api.openstack [None {LID} - - - - - -] "
        "GET /v2.1/servers"
    )


def test_line_without_request_uses_the_default_format() -> None:
    line = utc_formatter().format(make_record(name="oslo.service", msg="started"))
    assert line == "2026-11-22 02:06:58.123 4242 INFO oslo.service [-] started"


def test_instance_uuid_extra_is_formatted_like_oslo_log() -> None:
    record = make_record(msg="spawned")
    record.instance_uuid = "6d2f1c1e-0000-4000-8000-000000000001"
    line = utc_formatter().format(record)
    assert line.endswith("[-] [instance: 6d2f1c1e-0000-4000-8000-000000000001] spawned")


def test_user_identity_matches_oslo_log_over_oslo_context() -> None:
    """Our user_identity equals oslo.log's default identity format applied to the
    logging values of a real oslo.context RequestContext with the same fields."""
    # oslo.log's logging_user_identity_format default, and its "-" for false values.
    oslo_format = (
        "%(user)s %(project)s %(domain)s %(system_scope)s %(user_domain)s %(project_domain)s"
    )

    class ReplaceFalse(dict[str, object]):
        def __getitem__(self, key: str) -> object:
            return dict.get(self, key) or "-"

    for fields in (
        {},
        {"user_id": "u", "project_id": "p"},
        {"user_id": "u", "domain_id": "d", "user_domain_id": "ud", "project_domain_id": "pd"},
    ):
        theirs = oslo_context.RequestContext(**fields)  # type: ignore[arg-type]
        expected = oslo_format % ReplaceFalse(theirs.get_logging_values())
        assert RequestContext(**fields).user_identity == expected  # type: ignore[arg-type]


@pytest.fixture
def root_capture() -> Iterator[io.StringIO]:
    with capture_root_logs(logging.INFO) as stream:
        yield stream


def test_filter_on_handler_covers_third_party_loggers(root_capture: io.StringIO) -> None:
    ctx = RequestContext(request_id=LID, global_request_id=GID)
    with use_context(ctx):
        logging.getLogger("some.thirdparty.lib").warning("retrying")
    logging.getLogger("some.thirdparty.lib").warning("idle")
    first, second = root_capture.getvalue().splitlines()
    assert f"WARNING some.thirdparty.lib [{GID} {LID} - - - - - -] retrying" in first
    assert second.endswith("WARNING some.thirdparty.lib [-] idle")


def test_filter_adds_every_field_and_keeps_the_record() -> None:
    record = make_record()
    with use_context(RequestContext(request_id=LID, project_id="p")):
        assert ContextFilter().filter(record) is True
    assert record.request_id == LID  # type: ignore[attr-defined]
    assert record.global_request_id is None  # type: ignore[attr-defined]
    assert record.crosstrace_context.project_id == "p"  # type: ignore[attr-defined]
    assert record.user_identity == "- p - - - -"  # type: ignore[attr-defined]
    assert record.instance == ""  # type: ignore[attr-defined]
    assert record.trace_id == ""  # type: ignore[attr-defined]
    assert record.span_id == ""  # type: ignore[attr-defined]

    empty = make_record()
    ContextFilter().filter(empty)
    assert empty.request_id == ""  # type: ignore[attr-defined]
    assert empty.user_identity == ""  # type: ignore[attr-defined]
    assert empty.global_request_id == ""  # type: ignore[attr-defined]
    assert empty.crosstrace_context is None  # type: ignore[attr-defined]


def test_fields_set_in_the_logging_thread_survive_formatting_elsewhere() -> None:
    """A record filtered in the request thread keeps its ids when formatted later
    in another thread (QueueHandler/QueueListener set-ups)."""
    record = make_record()
    with use_context(RequestContext(request_id=LID, global_request_id=GID)):
        ContextFilter().filter(record)
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(utc_formatter().format(record)))
    thread.start()
    thread.join(10)
    assert f"[{GID} {LID} " in out[0]


def test_explicit_context_in_extra_wins() -> None:
    record = make_record()
    record.context = RequestContext(request_id=LID)
    with use_context(RequestContext(global_request_id=GID)):
        line = utc_formatter().format(record)
    assert f"[None {LID} " in line


def test_request_id_from_extra_fills_the_other_fields() -> None:
    record = make_record()
    record.request_id = LID
    line = utc_formatter().format(record)
    # oslo.log defaults the missing text fields to "" here.
    assert f"INFO nova.api.openstack [ {LID} ] GET /v2.1/servers" in line


def test_json_line_has_exactly_the_agreed_keys() -> None:
    ctx = RequestContext(
        request_id=LID, global_request_id=GID, user_id="u", project_id="p", domain_id="d"
    )
    formatter = JSONFormatter(service="nova-api")
    with use_context(ctx):
        line = formatter.format(make_record())
    assert "\n" not in line
    data = json.loads(line)
    assert tuple(data) == JSON_KEYS
    assert data["timestamp"] == "2026-11-22T02:06:58.123456+00:00"
    assert data["level"] == "INFO"
    assert data["logger"] == "nova.api.openstack"
    assert data["message"] == "GET /v2.1/servers"
    assert data["exception"] is None
    assert data["process"] == 4242
    assert data["thread_name"] == threading.current_thread().name
    assert isinstance(data["hostname"], str)
    assert data["service"] == "nova-api"
    assert data["global_request_id"] == GID
    assert data["request_id"] == LID
    assert (data["user_id"], data["project_id"], data["domain_id"]) == ("u", "p", "d")
    assert data["user_domain_id"] is None
    assert data["project_domain_id"] is None
    assert data["trace_id"] is None
    assert data["span_id"] is None


def test_json_line_without_request_has_null_ids_and_carries_exceptions() -> None:
    formatter = JSONFormatter()
    try:
        raise ValueError('bad "quote"\nand newline')
    except ValueError:
        record = logging.LogRecord(
            "svc", logging.ERROR, __file__, 1, "failed %s", ("x",), exc_info=True
        )
        record.exc_info = sys.exc_info()
    data = json.loads(formatter.format(record))
    assert tuple(data) == JSON_KEYS
    assert data["message"] == "failed x"
    assert data["exception"].startswith("Traceback (most recent call last):")
    assert 'ValueError: bad "quote"\nand newline' in data["exception"]
    assert data["service"] is None
    assert data["request_id"] is None
    assert data["global_request_id"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", data["timestamp"])


def test_usable_from_dictconfig() -> None:
    """Filter and both formatters configured through logging.config.dictConfig."""
    text, js = io.StringIO(), io.StringIO()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"context": {"()": "crosstrace.logging.ContextFilter"}},
            "formatters": {
                "oslo": {"()": "crosstrace.logging.ContextFormatter"},
                "oslo_class": {
                    "class": "crosstrace.logging.ContextFormatter",
                    "format": "%(levelname)s [%(request_id)s] %(message)s",
                },
                "json": {"()": "crosstrace.logging.JSONFormatter", "service": "glance-api"},
            },
            "handlers": {
                "text": {
                    "class": "logging.StreamHandler",
                    "stream": text,
                    "filters": ["context"],
                    "formatter": "oslo",
                },
                "short": {
                    "class": "logging.StreamHandler",
                    "stream": text,
                    "filters": ["context"],
                    "formatter": "oslo_class",
                },
                "json": {
                    "class": "logging.StreamHandler",
                    "stream": js,
                    "filters": ["context"],
                    "formatter": "json",
                },
            },
            "loggers": {
                "dictconfig.test": {
                    "handlers": ["text", "short", "json"],
                    "level": "INFO",
                    "propagate": False,
                }
            },
        }
    )
    logger = logging.getLogger("dictconfig.test")
    try:
        with use_context(RequestContext(request_id=LID, global_request_id=GID)):
            logger.info("hello")
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    oslo_line, short_line = text.getvalue().splitlines()
    assert oslo_line.endswith(f"INFO dictconfig.test [{GID} {LID} - - - - - -] hello")
    assert short_line == f"INFO [{LID}] hello"
    data = json.loads(js.getvalue())
    assert data["service"] == "glance-api"
    assert data["request_id"] == LID


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def test_setup_is_idempotent(clean_root: logging.Logger) -> None:
    before = len(clean_root.handlers)
    first = io.StringIO()
    setup(stream=first, level="DEBUG")
    stream = io.StringIO()
    handler = setup(stream=stream, level="INFO")
    assert len(clean_root.handlers) == before + 1
    assert clean_root.level == logging.INFO
    with use_context(RequestContext(request_id=LID)):
        logging.getLogger("svc").info("once")
    assert stream.getvalue().count("once") == 1
    assert f"[None {LID} - - - - - -] once" in stream.getvalue()
    assert first.getvalue() == ""
    assert handler in clean_root.handlers


def test_setup_json_to_file(clean_root: logging.Logger, tmp_path: Path) -> None:
    path = tmp_path / "svc.log"
    setup(service="cinder-volume", json=True, filename=str(path))
    with use_context(RequestContext(request_id=LID, global_request_id=GID)):
        logging.getLogger("cinder.volume").warning("slow backend")
    for handler in clean_root.handlers:
        handler.flush()
    data = json.loads(path.read_text().splitlines()[-1])
    assert data["service"] == "cinder-volume"
    assert data["global_request_id"] == GID
    assert data["level"] == "WARNING"


def test_setup_rejects_bad_arguments(clean_root: logging.Logger) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup(level="LOUD")
    with pytest.raises(ValueError, match="either stream or filename"):
        setup(stream=io.StringIO(), filename="x.log")


def test_module_constants_are_oslo_defaults() -> None:
    assert ctlog.CONTEXT_FORMAT == (
        "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s "
        "[%(global_request_id)s %(request_id)s %(user_identity)s] %(instance)s%(message)s"
    )
    assert ctlog.DEFAULT_FORMAT == (
        "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s [-] %(instance)s%(message)s"
    )
