"""How each demo service is instrumented, through crosstrace's public API only.

This is the part an operator would write when adding crosstrace to a service:
wrap the WSGI/ASGI app in the request-id middleware, use the propagating HTTP
clients and the kombu integration, log through :mod:`crosstrace.logging`, and
open a few spans around interesting steps. One :class:`ServiceKit` per service
keeps those choices in one place, so each service in the demo's single process
logs to its own file and reports its own ``service.name``.

The demo's services share one process, so each gets its own
:class:`crosstrace.tracer.Tracer` (its own ``service.name``) and exporter;
the server, consumer, HTTP-client and DB spans are opened here with the
tracer's hooks (:func:`~crosstrace.tracer.extract_context`,
:meth:`~crosstrace.tracer.Tracer.start_root`,
:func:`~crosstrace.tracer.inject_context`), and log records are shipped with the
exporter's ``export_log``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import crosstrace
import crosstrace.logging as ctlog
from crosstrace import asgi as ct_asgi
from crosstrace import propagation as ct_propagation
from crosstrace import tracer as ct_tracer
from crosstrace import wsgi as ct_wsgi
from crosstrace.export import BatchExporter, LogData, OtlpHttpTransport
from crosstrace.integrations import kombu as ct_kombu
from crosstrace.integrations import requests as ct_requests
from crosstrace.tracer import SpanKind, StatusCode, Tracer

__all__ = ["LogRouter", "ServiceKit", "Tracing", "current_service", "file_handler"]

log = logging.getLogger(__name__)

#: Which demo service the current thread or task is working for (log routing).
_service_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "crosstrace_demo_service", default=None
)

#: Compat response headers each HTTP service adds beside ``x-openstack-request-id``.
COMPAT_HEADERS = {"compute-api": ("x-compute-request-id",)}

# A path segment that is an id (UUID, hex) becomes "{id}" in span names.
_ID_SEGMENT = re.compile(r"/(?:[0-9a-fA-F]{8,}|[0-9a-fA-F-]{36})(?=/|$)")

# Python level -> OTLP severity number.
_SEVERITY = ((logging.CRITICAL, 21), (logging.ERROR, 17), (logging.WARNING, 13), (logging.INFO, 9))


def current_service() -> str | None:
    """The demo service the caller is running in, if any."""
    return _service_var.get()


def _route(path: str) -> str:
    return _ID_SEGMENT.sub("/{id}", path)


def _severity(levelno: int) -> int:
    for level, number in _SEVERITY:
        if levelno >= level:
            return number
    return 5


class LogRouter(logging.Handler):
    """Sends library records (crosstrace's, SQLAlchemy's) to the handlers of the
    service that was running when they were logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.handlers: dict[str, list[logging.Handler]] = {}
        #: Where records logged outside any service go (the demo's own log).
        self.fallback: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        service = _service_var.get()
        handlers = self.handlers.get(service) if service else None
        if handlers is None:
            handlers = [self.fallback] if self.fallback is not None else []
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def file_handler(path: Path) -> logging.Handler:
    """A log file in oslo.log's format, with the request context on every line."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(ctlog.ContextFilter())
    handler.setFormatter(ctlog.ContextFormatter())
    return handler


class OtlpLogHandler(logging.Handler):
    """Ships log records to the backend through an exporter's log queue, with
    the request ids and the current span's ids, so that
    ``/api/v1/requests/{id}`` returns them beside the traces."""

    def __init__(self, exporter: BatchExporter, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.exporter = exporter
        self.addFilter(ctlog.ContextFilter())
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attrs: dict[str, Any] = {"logger": record.name, "thread.name": record.threadName}
            ctx = crosstrace.get_current()
            if ctx is not None:
                for key, value in (
                    ("openstack.request_id", ctx.request_id),
                    ("openstack.global_request_id", ctx.global_request_id),
                    ("openstack.user_id", ctx.user_id),
                    ("openstack.project_id", ctx.project_id),
                    ("openstack.domain_id", ctx.domain_id),
                ):
                    if value:
                        attrs[key] = value
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                attrs["exception.type"] = type(exc).__name__
                attrs["exception.message"] = str(exc)
            span = ct_tracer.current_span()
            self.exporter.export_log(
                LogData(
                    self.format(record),
                    severity_number=_severity(record.levelno),
                    severity_text=record.levelname,
                    attributes=attrs,
                    time_ns=int(record.created * 1e9),
                    trace_id=span.trace_id,
                    span_id=span.span_id,
                )
            )
        except Exception:
            self.handleError(record)


class ServiceKit:
    """The instrumentation of one demo service: logger, middleware, clients, spans."""

    def __init__(
        self,
        name: str,
        logger_name: str,
        log_dir: Path,
        router: LogRouter,
        tracer: Tracer | None = None,
        exporter: BatchExporter | None = None,
        level: int = logging.INFO,
    ) -> None:
        self.name = name
        self.tracer = tracer
        self.log = logging.getLogger(logger_name)
        self.log.setLevel(level)
        self.log_path = log_dir / f"{name}.log"
        self.handlers: list[logging.Handler] = [file_handler(self.log_path)]
        if exporter is not None:
            self.handlers.append(OtlpLogHandler(exporter))
        for handler in self.handlers:
            self.log.addHandler(handler)
        router.handlers[name] = self.handlers
        self._router = router
        self._clients: list[Any] = []

    def close(self) -> None:
        """Close the HTTP clients it made; detach and close its log handlers."""
        while self._clients:
            try:
                self._clients.pop().close()
            except Exception:
                log.debug("closing an HTTP client failed", exc_info=True)
        for handler in self.handlers:
            self.log.removeHandler(handler)
            handler.close()
        self._router.handlers.pop(self.name, None)

    # -- entry points -------------------------------------------------------

    def _start_server_span(
        self, name: str, kind: int, getter: Callable[[str], str | None], attrs: dict[str, Any]
    ) -> Any:
        tracer = self.tracer
        if tracer is None:
            return ct_tracer.INVALID_SPAN
        try:
            remote = ct_propagation.extract_context(getter)
            return tracer.start_root(name, kind, attrs, remote)
        except Exception:
            log.debug("server span start failed", exc_info=True)
            return ct_tracer.INVALID_SPAN

    def wsgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a WSGI app: request ids and context, a SERVER span, log routing."""
        name = self.name

        def traced(environ: dict[str, Any], start_response: Any) -> Any:
            method = environ.get("REQUEST_METHOD", "GET")
            path = environ.get("PATH_INFO", "")
            route = _route(path)
            span = self._start_server_span(
                f"{method} {route}",
                SpanKind.SERVER,
                lambda h: environ.get("HTTP_" + h.upper().replace("-", "_")),
                {"http.request.method": method, "url.path": path, "http.route": route},
            )
            status: list[int] = []

            def _start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
                status.append(int(s[:3]))
                return (
                    start_response(s, headers, exc_info) if exc_info else start_response(s, headers)
                )

            with ct_tracer.use_span(span):
                body = list(app(environ, _start_response))
                _finish_http(span, status[0] if status else 500)
            return body

        inner = ct_wsgi.RequestIdMiddleware(
            traced, compat_headers=COMPAT_HEADERS.get(self.name, ())
        )

        def service_app(environ: dict[str, Any], start_response: Any) -> Any:
            token = _service_var.set(name)
            try:
                # The demo apps return lists, so the body is complete here.
                return list(inner(environ, start_response))
            finally:
                _service_var.reset(token)

        return service_app

    def asgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap an ASGI app: request ids and context, a SERVER span, log routing."""
        name = self.name

        async def traced(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") != "http":
                await app(scope, receive, send)
                return
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            method = scope.get("method", "GET")
            path = scope.get("path", "")
            route = _route(path)
            span = self._start_server_span(
                f"{method} {route}",
                SpanKind.SERVER,
                lambda h: headers.get(h.lower()),
                {"http.request.method": method, "url.path": path, "http.route": route},
            )
            status: list[int] = []

            async def _send(message: Any) -> None:
                if message.get("type") == "http.response.start":
                    status.append(int(message["status"]))
                await send(message)

            with ct_tracer.use_span(span):
                await app(scope, receive, _send)
                _finish_http(span, status[0] if status else 500)

        inner = ct_asgi.RequestIdMiddleware(
            traced, compat_headers=COMPAT_HEADERS.get(self.name, ())
        )

        async def service_app(scope: Any, receive: Any, send: Any) -> None:
            token = _service_var.set(name)
            try:
                await inner(scope, receive, send)
            finally:
                _service_var.reset(token)

        return service_app

    def rpc_callback(self, fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        """Wrap an RPC handler: the caller's request context and trace from the
        message headers, a CONSUMER span, log routing."""
        name = self.name

        def traced(body: Any, message: Any) -> None:
            method = str(body.get("method")) if isinstance(body, Mapping) else "?"
            headers = getattr(message, "headers", None) or {}
            delivery = getattr(message, "delivery_info", None) or {}
            topic = str(delivery.get("routing_key", ""))
            span = self._start_server_span(
                f"{name}/{method}",
                SpanKind.CONSUMER,
                lambda h: _header(headers, h),
                {
                    "rpc.system": "oslo.messaging",
                    "rpc.service": name,
                    "rpc.method": method,
                    "messaging.system": "rabbitmq",
                    "messaging.destination.name": topic,
                    "messaging.operation.type": "process",
                },
            )
            with ct_tracer.use_span(span):
                fn(body, message)

        wrapped = ct_kombu.consumer_callback(traced)

        def run(body: Any, message: Any) -> None:
            token = _service_var.set(name)
            try:
                wrapped(body, message)
            finally:
                _service_var.reset(token)

        return run

    def rpc_publish(self, producer: Any, body: Any, **kwargs: Any) -> None:
        """Publish an RPC message carrying the current request context and trace."""
        headers = dict(kwargs.pop("headers", None) or {})
        ct_propagation.inject_context(headers)
        ct_kombu.publish(producer, body, headers=headers, **kwargs)

    # -- clients ------------------------------------------------------------

    def requests_session(self) -> Any:
        """A ``requests`` session that sends the global request id and the trace."""
        session = _TracedSession()
        self._clients.append(session)
        return session

    def httpx_client(self, timeout: float) -> Any:
        """An ``httpx`` client that sends the global request id and the trace."""
        client = _traced_httpx_client(timeout)
        self._clients.append(client)
        return client

    def instrument_engine(self, engine: Any) -> None:
        """Add a CLIENT span per SQL statement to a SQLAlchemy engine."""
        _instrument_engine(engine)

    # -- spans and ids ------------------------------------------------------

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, client: bool = False
    ) -> Iterator[Any]:
        """A span around one step of this service's work (``client``: a call out)."""
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        with crosstrace.span(name, kind=kind, attributes=attributes) as s:
            yield s

    def trace_id(self) -> str | None:
        """The current trace id (hex), if a span is current."""
        trace_id = ct_tracer.current_span().trace_id
        return f"{trace_id:032x}" if trace_id else None

    def context(self) -> crosstrace.RequestContext | None:
        return crosstrace.get_current()


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, v in headers.items():
            if str(key).lower() == lowered:
                value = v
                break
    return value if isinstance(value, str) else None


def _finish_http(span: Any, status: int, client: bool = False) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500 or (client and status >= 400):
        span.set_status(StatusCode.ERROR, f"HTTP {status}")


class _TracedSession(ct_requests.Session):
    """crosstrace's propagating ``requests`` session, plus a CLIENT span and
    ``traceparent`` on each call."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        from urllib.parse import urlsplit

        parts = urlsplit(request.url or "")
        attrs = {
            "http.request.method": request.method or "GET",
            "server.address": parts.hostname or "",
            "server.port": parts.port or 80,
            "url.full": request.url or "",
        }
        with crosstrace.span(
            f"{request.method} {_route(parts.path)}", kind=SpanKind.CLIENT, attributes=attrs
        ) as span:
            ct_propagation.inject_context(request.headers)
            response = super().send(request, **kwargs)
            _finish_http(span, response.status_code, client=True)
            return response


def _traced_httpx_client(timeout: float) -> Any:
    from crosstrace.integrations.httpx import Client

    class TracedClient(Client):
        """crosstrace's propagating ``httpx`` client, plus a CLIENT span and
        ``traceparent`` on each call."""

        def send(self, request: Any, **kwargs: Any) -> Any:
            url = request.url
            attrs = {
                "http.request.method": request.method,
                "server.address": url.host,
                "server.port": url.port or 80,
                "url.full": str(url),
            }
            with crosstrace.span(
                f"{request.method} {_route(url.path)}", kind=SpanKind.CLIENT, attributes=attrs
            ) as span:
                carrier: dict[str, str] = {}
                ct_propagation.inject_context(carrier)
                request.headers.update(carrier)
                response = super().send(request, **kwargs)
                _finish_http(span, response.status_code, client=True)
                return response

    return TracedClient(timeout=timeout)


_SQL_VERB = re.compile(r"^\s*(\w+)", re.ASCII)


def _instrument_engine(engine: Any) -> None:
    """A CLIENT span per statement: ``db.system``, ``db.query.text`` (SQLAlchemy's
    placeholders, never the parameter values), ``db.operation.name``."""
    import sqlalchemy as sa

    system = engine.dialect.name
    if system == "mysql" and getattr(engine.dialect, "is_mariadb", False):
        system = "mariadb"
    key = "crosstrace_demo_spans"

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        match = _SQL_VERB.match(statement)
        verb = match.group(1).upper() if match else "SQL"
        # crosstrace.span() starts a child of the current span in its own
        # segment (this service's tracer); not entered, so not made current.
        span = crosstrace.span(
            f"{verb} {system}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": system,
                "db.query.text": statement[:2000],
                "db.operation.name": verb,
            },
        )
        if isinstance(span, ct_tracer.Span):
            conn.info.setdefault(key, []).append(span)

    @sa.event.listens_for(engine, "after_cursor_execute")
    def _after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        stack = conn.info.get(key)
        if stack:
            span = stack.pop()
            if cursor.rowcount is not None and cursor.rowcount >= 0:
                span.set_attribute("db.response.returned_rows", cursor.rowcount)
            span.end()

    @sa.event.listens_for(engine, "handle_error")
    def _error(exception_context: Any) -> None:
        conn = exception_context.connection
        stack = conn.info.get(key) if conn is not None else None
        if stack:
            span = stack.pop()
            exc = exception_context.original_exception
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            span.end()


class Tracing:
    """Tracing for the whole demo process: one tracer and exporter per service
    (so each reports its own ``service.name``), flush and shutdown."""

    def __init__(self, endpoint: str, slow_threshold_s: float = 1.0) -> None:
        self.endpoint = endpoint
        self.slow_threshold_s = slow_threshold_s
        self.exporters: dict[str, BatchExporter] = {}
        self.tracers: dict[str, Tracer] = {}

    def kit(self, name: str, logger_name: str, log_dir: Path, router: LogRouter) -> ServiceKit:
        """The instrumentation of the service called ``name``."""
        exporter = self.exporters.get(name)
        if exporter is None:
            # Record and keep every trace: the demo is the ground truth, so no
            # head sampling and no overhead budget here.
            tracer = Tracer(name, sample_ratio=1.0, slow_threshold_s=self.slow_threshold_s)
            exporter = BatchExporter(
                OtlpHttpTransport(self.endpoint), tracer.resource, max_delay_s=0.5
            )
            tracer.sink = exporter
            self.exporters[name] = exporter
            self.tracers[name] = tracer
        return ServiceKit(name, logger_name, log_dir, router, self.tracers[name], exporter)

    def flush(self, timeout: float = 10.0) -> bool:
        """Export everything queued so far; ``False`` if it did not finish in time."""
        return all(e.force_flush(timeout) for e in self.exporters.values())

    def stats(self) -> dict[str, dict[str, int]]:
        """Each service exporter's self-metrics (queued, exported, dropped...)."""
        return {name: e.stats() for name, e in self.exporters.items()}

    def shutdown(self, timeout: float = 10.0) -> None:
        """Flush and stop the exporters."""
        for exporter in self.exporters.values():
            exporter.shutdown(timeout)
