"""Logging with request ids: a filter, an oslo.log-compatible formatter, JSON lines.

* :class:`ContextFilter` copies the current request context onto every record
  that reaches the handler it is attached to (third-party loggers included,
  which a logger-level filter would miss).
* :class:`ContextFormatter` writes oslo.log's default line, so tools that parse
  OpenStack logs keep working::

      2026-11-22 02:06:58.123 4242 INFO nova.api [req-<global> req-<local> user project - - - -] msg

  and oslo.log's ``[-]`` form when no request is being served.
* :class:`JSONFormatter` writes one JSON object per line (Filebeat, Logstash,
  ``crosstrace``'s own log importer).

All three work from :func:`logging.config.dictConfig`; :func:`setup` covers the
common case in one call.

With tracing on, the filter also adds the current span's ``trace_id`` and
``span_id`` (hex; ``""`` when no span is current), and attaches each record at
ERROR or above to the current span as a ``log`` event (message, logger, level,
and the exception if there is one); the event marks nothing else (the span's
status stays what the code set). :class:`ExportHandler` ships records through
the tracer's exporter to an OTLP ``/v1/logs`` endpoint.
"""

from __future__ import annotations

import datetime
import json as _json
import logging
import socket
import sys
import traceback
from collections.abc import Mapping
from typing import IO, Any, Literal, cast

from crosstrace.context import RequestContext, get_current
from crosstrace.ids import is_valid_request_id
from crosstrace.tracing import (
    ATTR_DOMAIN_ID,
    ATTR_GLOBAL_REQUEST_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    Span,
    Tracer,
)
from crosstrace.tracing import tracer as _tracer_mod
from crosstrace.tracing.model import LogData
from crosstrace.tracing.spans import MAX_STACKTRACE, _exception_type, _get_current_span

_get_current = get_current

__all__ = [
    "CONTEXT_ATTR",
    "CONTEXT_FORMAT",
    "DATE_FORMAT",
    "DEFAULT_FORMAT",
    "JSON_KEYS",
    "LOG_EVENT",
    "RECORD_FIELDS",
    "ContextFilter",
    "ContextFormatter",
    "ExportHandler",
    "JSONFormatter",
    "setup",
]

#: oslo.log's ``logging_context_format_string`` default.
CONTEXT_FORMAT = (
    "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s "
    "[%(global_request_id)s %(request_id)s %(user_identity)s] %(instance)s%(message)s"
)
#: oslo.log's ``logging_default_format_string`` default (no request context).
DEFAULT_FORMAT = (
    "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s [-] %(instance)s%(message)s"
)
#: oslo.log's ``log_date_format`` default.
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
#: oslo.log's ``instance_uuid_format`` default.
INSTANCE_UUID_FORMAT = "[instance: %(uuid)s] "

#: Attributes :class:`ContextFilter` puts on each record (besides the context).
RECORD_FIELDS = (
    "global_request_id",
    "request_id",
    "user_identity",
    "instance",
    "trace_id",
    "span_id",
)
#: Record attribute holding the :class:`RequestContext` the fields came from.
CONTEXT_ATTR = "crosstrace_context"
#: The keys of every :class:`JSONFormatter` line, in order.
JSON_KEYS = (
    "timestamp",
    "level",
    "logger",
    "message",
    "exception",
    "process",
    "thread_name",
    "hostname",
    "service",
    "global_request_id",
    "request_id",
    "user_id",
    "project_id",
    "domain_id",
    "user_domain_id",
    "project_domain_id",
    "trace_id",
    "span_id",
)
_IDENTITY_FIELDS = ("user_id", "project_id", "domain_id", "user_domain_id", "project_domain_id")

# Marks the handler setup() installed, so a second call replaces it.
_SETUP_MARK = "_crosstrace_setup"


#: Name of the span event an ERROR record becomes.
LOG_EVENT = "log"
_ERROR = logging.ERROR


def _record_exception_attributes(record: logging.LogRecord, attrs: dict[str, Any]) -> None:
    exc_info = record.exc_info
    if not exc_info or exc_info[1] is None:
        return
    exc = exc_info[1]
    attrs["exception.type"] = _exception_type(exc)
    try:
        attrs["exception.message"] = str(exc)
    except Exception:
        attrs["exception.message"] = "<unprintable>"
    try:
        stack = "".join(traceback.format_exception(exc_info[0], exc, exc_info[2]))
    except Exception:
        stack = ""
    attrs["exception.stacktrace"] = stack[-MAX_STACKTRACE:]


def _attach_to_span(span: Span, record: logging.LogRecord) -> None:
    """Add an ERROR+ record to *span* as a ``log`` event (never raises)."""
    try:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        attrs: dict[str, Any] = {
            "log.message": message,
            "log.logger": record.name,
            "log.level": record.levelname,
        }
        _record_exception_attributes(record, attrs)
        span.add_event(LOG_EVENT, attrs, int(record.created * 1e9))
    except Exception:  # noqa: S110 - logging here, inside a log filter, could recurse
        pass


def _trace_fields(record: logging.LogRecord, d: dict[str, Any]) -> None:
    """``trace_id``/``span_id`` of the current span; ERROR+ records become events."""
    cur = _get_current_span()
    if cur is None or not cur.trace_id:
        d["trace_id"] = d["span_id"] = ""
        return
    d["trace_id"] = f"{cur.trace_id:032x}"
    d["span_id"] = f"{cur.span_id:016x}"
    if record.levelno >= _ERROR and cur._recording:
        _attach_to_span(cur, record)  # type: ignore[arg-type]


# The fields of a record logged outside any request.
_NO_CONTEXT: dict[str, Any] = {
    "global_request_id": "",
    "request_id": "",
    "user_identity": "",
    CONTEXT_ATTR: None,
}


class ContextFilter(logging.Filter):
    """Add the request context's ids and identity to every record; never drops one.

    Attach it to handlers (``handler.addFilter(ContextFilter())``) so records from
    every logger passing through get the fields, third-party ones included. Adds
    :data:`RECORD_FIELDS` (``""`` when no request is current; ``trace_id`` and
    ``span_id`` are the current span's, ``""`` when there is none) and the
    context object itself as ``crosstrace_context``. A record at ERROR or above
    logged while a recorded span is current is added to it as a ``log`` event
    (once, however many handlers filter it). The context is the current one, or an oslo-style
    ``extra={"context": ctx}``. Fields already on the record (from ``extra=``, or
    from this filter in the thread that made the record) are kept.
    """

    def filter(self, record: logging.LogRecord) -> Literal[True]:
        """Add the fields; always keep the record. Runs once per record: kept lean."""
        d = record.__dict__
        if "request_id" in d:
            if "user_identity" not in d:  # request_id came from ``extra=``
                if "trace_id" not in d:
                    _trace_fields(record, d)
                # oslo.log defaults the text fields to "" in this case.
                for key in RECORD_FIELDS:
                    d.setdefault(key, "")
            elif CONTEXT_ATTR not in d:
                # oslo.log's formatter (an earlier handler) filled the fields
                # from its own context: keep them, and add ours for the identity
                # and the span.
                ctx = d.get("context")
                d[CONTEXT_ATTR] = ctx if isinstance(ctx, RequestContext) else _get_current()
                if "trace_id" not in d:
                    _trace_fields(record, d)
            return True
        ctx = d.get("context")
        if ctx is None or not isinstance(ctx, RequestContext):
            ctx = _get_current()
        if ctx is None:
            d.update(_NO_CONTEXT)
        else:
            # oslo.log copies the context's None straight onto the record, so a
            # line without a global id reads "[None req-...]"; keep that exactly.
            d["global_request_id"] = ctx.global_request_id
            d["request_id"] = ctx.request_id
            d["user_identity"] = ctx.user_identity
            d[CONTEXT_ATTR] = ctx
        if "instance" not in d:
            d["instance"] = ""
        if "trace_id" not in d:
            _trace_fields(record, d)
        return True


_apply = ContextFilter().filter


def _instance_text(value: Any) -> str:
    """oslo.log's handling of ``extra={"instance": ...}`` / ``instance_uuid``."""
    if isinstance(value, Mapping):
        uuid = value.get("uuid")
        return INSTANCE_UUID_FORMAT % {"uuid": uuid} if uuid else ""
    return str(value) if value else ""


class ContextFormatter(logging.Formatter):
    """oslo.log's text format: ids and identity in brackets, ``[-]`` without a request.

    :param fmt: format for records made while a request is current (default
        :data:`CONTEXT_FORMAT`).
    :param datefmt: ``asctime`` format (default oslo.log's ``%Y-%m-%d %H:%M:%S``).
    :param default_fmt: format for records made outside a request (default
        :data:`DEFAULT_FORMAT` when *fmt* is not given, else *fmt*).

    The record fields come from :class:`ContextFilter` when it is attached, else
    from the context current when the record is formatted.
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%"] = "%",
        validate: bool = True,
        *,
        default_fmt: str | None = None,
    ) -> None:
        if style != "%":
            raise ValueError("ContextFormatter supports the '%' style only, as oslo.log does")
        context_fmt = fmt if fmt is not None else CONTEXT_FORMAT
        if default_fmt is None:
            default_fmt = DEFAULT_FORMAT if fmt is None else context_fmt
        super().__init__(context_fmt, datefmt or DATE_FORMAT, style, validate)
        self._context_style = self._style
        self._default_style = logging.PercentStyle(default_fmt)
        if validate:
            self._default_style.validate()

    def usesTime(self) -> bool:
        """Whether either format shows ``asctime``."""
        return self._context_style.usesTime() or self._default_style.usesTime()

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Pick the context or the default format for *record*."""
        style = self._context_style if record.__dict__.get("request_id") else self._default_style
        return style.format(record)

    def format(self, record: logging.LogRecord) -> str:
        """Format *record*, filling the context fields if no filter did."""
        d = record.__dict__
        _apply(record)
        if not d["instance"] and d.get("instance_uuid"):
            d["instance"] = INSTANCE_UUID_FORMAT % {"uuid": d["instance_uuid"]}
        elif d["instance"] and not isinstance(d["instance"], str):
            d["instance"] = _instance_text(d["instance"])
        return super().format(record)


def _utc_timestamp(created: float) -> str:
    return datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="microseconds")


class JSONFormatter(logging.Formatter):
    """One JSON object per line with exactly the keys in :data:`JSON_KEYS`.

    ``timestamp`` is RFC 3339 UTC with microseconds; ``exception`` is the
    formatted traceback or ``null``; ids absent from the record are ``null``.

    :param service: the service name written in every line (may be ``None``).
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        validate: bool = True,
        *,
        service: str | None = None,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate)
        self.service = service
        try:
            self.hostname: str | None = socket.gethostname()
        except OSError:
            self.hostname = None

    def format(self, record: logging.LogRecord) -> str:
        """Serialise *record* as one line of JSON."""
        _apply(record)
        d = record.__dict__
        exception: str | None = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            exception = record.exc_text
        elif record.exc_text:
            exception = record.exc_text
        if record.stack_info:
            stack = self.formatStack(record.stack_info)
            exception = f"{exception}\n{stack}" if exception else stack
        out: dict[str, Any] = {
            "timestamp": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "exception": exception,
            "process": record.process,
            "thread_name": record.threadName,
            "hostname": self.hostname,
            "service": self.service,
        }
        ctx = d.get(CONTEXT_ATTR)
        out["global_request_id"] = d.get("global_request_id") or None
        out["request_id"] = d.get("request_id") or None
        for key in _IDENTITY_FIELDS:
            # From the context the record was made under, else from ``extra=``.
            value = getattr(ctx, key) if ctx is not None else d.get(key)
            out[key] = value if value else None
        out["trace_id"] = d.get("trace_id") or None
        out["span_id"] = d.get("span_id") or None
        return _json.dumps(out, ensure_ascii=False, default=str)


def setup(
    service: str | None = None,
    level: int | str = "INFO",
    json: bool = False,
    stream: IO[str] | None = None,
    filename: str | None = None,
) -> logging.Handler:
    """Log every logger's records with the request context, in one call.

    Installs one handler on the root logger (a file handler when *filename* is
    given, else a stream handler on *stream* or ``sys.stderr``) with a
    :class:`ContextFilter` and a :class:`ContextFormatter` (or a
    :class:`JSONFormatter` when *json* is true), and sets the root level.
    Calling it again replaces the handler it installed before instead of
    adding a second one. Returns the handler.
    """
    if stream is not None and filename is not None:
        raise ValueError("give either stream or filename, not both")
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level: {level!r}")
        level = resolved
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _SETUP_MARK, False):
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    if filename is not None:
        handler = logging.FileHandler(filename, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _SETUP_MARK, True)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JSONFormatter(service=service) if json else ContextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    return handler


# The exporter's own logger: its records are never exported (no feedback loop).
_EXPORT_LOGGER = "crosstrace.export"


def _severity(levelno: int) -> int:
    """OTLP ``SeverityNumber`` for a :mod:`logging` level."""
    if levelno >= logging.CRITICAL:
        return 21
    if levelno >= logging.ERROR:
        return 17
    if levelno >= logging.WARNING:
        return 13
    if levelno >= logging.INFO:
        return 9
    if levelno >= logging.DEBUG:
        return 5
    return 1


def _valid_id(value: Any) -> str | None:
    return value if type(value) is str and is_valid_request_id(value) else None


def _record_context_attributes(d: dict[str, Any], attrs: dict[str, Any]) -> None:
    """The ``openstack.*`` attributes of a record: the ids the record shows (set
    by this filter, ``extra=`` or oslo.log's formatter), else those of the
    request context; the identity from the context, else from the record."""
    ctx = d.get(CONTEXT_ATTR)
    if not isinstance(ctx, RequestContext):
        ctx = _get_current()
    request_id = _valid_id(d.get("request_id"))
    global_id = _valid_id(d.get("global_request_id"))
    if ctx is not None:
        request_id = request_id or ctx.request_id
        global_id = global_id or ctx.global_request_id
        identity = (ctx.user_id, ctx.project_id, ctx.domain_id, ctx.project_domain_id)
    else:
        identity = (
            d.get("user_id"),
            d.get("project_id"),
            d.get("domain_id"),
            d.get("project_domain_id"),
        )
    for key, value in (
        (ATTR_REQUEST_ID, request_id),
        (ATTR_GLOBAL_REQUEST_ID, global_id),
        (ATTR_USER_ID, identity[0]),
        (ATTR_PROJECT_ID, identity[1]),
        (ATTR_DOMAIN_ID, identity[2]),
        (ATTR_PROJECT_DOMAIN_ID, identity[3]),
    ):
        if value and isinstance(value, str):
            attrs[key] = value


class ExportHandler(logging.Handler):
    """Send log records through a tracer's exporter to an OTLP ``/v1/logs`` endpoint.

    Each record becomes an OTLP log record under the service's resource
    (``service.name`` ...), with the logger name as instrumentation scope, the
    current span's ``trace_id``/``span_id``, and attributes
    ``openstack.request_id``, ``openstack.global_request_id``,
    ``openstack.user_id``, ``openstack.project_id``, ``openstack.domain_id``,
    ``code.function.name``, ``code.line.number``, ``thread.name`` and
    ``exception.*``; secret-looking attributes are masked by the tracer's
    redactor (the message text is sent as logged). It never blocks and never
    raises: records go into the exporter's bounded queue (full = dropped and
    counted in the exporter's ``logs_dropped``); records that cannot be
    exported (no tracer configured yet, a broken record) are counted in
    :attr:`dropped`.

    :param tracer: the service's tracer (e.g. ``crosstrace.get_tracer("nova-api")``).
        Default: the tracer of the current span, else the configured one.
    :param level: the lowest level exported (default INFO).
    :param service: instead of *tracer*, a service name whose tracer is looked
        up when a record comes (so a ``logging.conf`` loaded before
        :func:`crosstrace.configure` works)::

            [handler_crosstrace]
            class = crosstrace.logging.ExportHandler
            level = INFO
            args = ()
            kwargs = {"service": "nova-api"}
    """

    def __init__(
        self,
        tracer: Tracer | None = None,
        level: int | str = logging.INFO,
        service: str | None = None,
    ) -> None:
        super().__init__(level)
        self.tracer = tracer
        self.service = service
        #: Records not exported because there was no tracer or they were broken.
        self.dropped = 0
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        """Queue *record* for export (never raises)."""
        try:
            if record.name.startswith(_EXPORT_LOGGER):
                return
            cur = _get_current_span()
            tracer = self.tracer
            if tracer is None and self.service is not None:
                tracer = _tracer_mod.get_tracer(self.service)
            if tracer is None:
                if cur is not None and cur._recording:
                    tracer = cast("Tracer", cur.segment.tracer)  # type: ignore[union-attr]
                else:
                    tracer = _tracer_mod._tracer
            sink = tracer.sink if tracer is not None else None
            if sink is None or tracer is None:
                self.dropped += 1
                return
            d = record.__dict__
            attrs: dict[str, Any] = {
                "code.function.name": record.funcName,
                "code.line.number": record.lineno,
                "thread.name": record.threadName,
            }
            _record_context_attributes(d, attrs)
            _record_exception_attributes(record, attrs)
            tracer.redactor.redact_attributes(attrs)
            body = self.format(record) if self.formatter is not None else record.getMessage()
            trace_id = span_id = flags = 0
            if cur is not None and cur.trace_id:
                trace_id, span_id = cur.trace_id, cur.span_id
                flags = cur.context.trace_flags & 0xFF
            sink.export_log(
                LogData(
                    body,
                    _severity(record.levelno),
                    record.levelname,
                    attrs,
                    int(record.created * 1e9),
                    trace_id,
                    span_id,
                    flags,
                    resource=tracer.resource,
                    scope=record.name,
                )
            )
        except Exception:  # a log handler must never break the service
            self.dropped += 1
