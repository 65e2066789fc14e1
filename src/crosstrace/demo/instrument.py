"""How each demo service is instrumented, through crosstrace's public API only.

This is the part an operator would write when adding crosstrace to a service:
``crosstrace.configure()`` once for the process, then for each service its own
``crosstrace.get_tracer(name)`` (the services run as threads of one process,
each with its own ``service.name``, all sharing one exporter), handed to the
request-id middleware (WSGI/ASGI: SERVER spans), crosstrace's oslo.messaging
serializer and traced endpoints (SERVER spans of RPC calls), the propagating HTTP clients (CLIENT
spans), the SQLAlchemy hook (DB spans) and :class:`crosstrace.logging.ExportHandler`
(logs to the backend). One :class:`ServiceKit` per service keeps those choices
in one place, so each service logs to its own file and reports its own
``service.name``; the cloud's own code only opens a few spans around
interesting steps with :func:`crosstrace.span`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import crosstrace
import crosstrace.logging as ctlog
from crosstrace import asgi as ct_asgi
from crosstrace import config as ct_config
from crosstrace import wsgi as ct_wsgi
from crosstrace.integrations import httpx as ct_httpx
from crosstrace.integrations import requests as ct_requests
from crosstrace.integrations import sqlalchemy as ct_sqlalchemy
from crosstrace.tracing import SpanKind, Tracer
from crosstrace.tracing import tracer as ct_tracer

__all__ = ["LogRouter", "ServiceKit", "Tracing", "current_service", "file_handler"]

log = logging.getLogger(__name__)

#: Which demo service the current thread or task is working for (log routing).
_service_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "crosstrace_demo_service", default=None
)

#: Compat response headers each HTTP service adds beside ``x-openstack-request-id``.
COMPAT_HEADERS = {"compute-api": ("x-compute-request-id",)}


def current_service() -> str | None:
    """The demo service the caller is running in, if any."""
    return _service_var.get()


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


class ServiceKit:
    """The instrumentation of one demo service: logger, middleware, clients, spans."""

    def __init__(
        self,
        name: str,
        logger_name: str,
        log_dir: Path,
        router: LogRouter,
        tracer: Tracer | None = None,
        level: int = logging.INFO,
    ) -> None:
        self.name = name
        self.tracer = tracer
        self.log = logging.getLogger(logger_name)
        self.log.setLevel(level)
        self.log_path = log_dir / f"{name}.log"
        self.handlers: list[logging.Handler] = [file_handler(self.log_path)]
        if tracer is not None:
            self.handlers.append(ctlog.ExportHandler(tracer, logging.INFO))
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

    def wsgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a WSGI app: request ids and context, its SERVER span, log routing."""
        name = self.name
        # The demo's gateway validates tokens and sets the identity headers, the
        # way keystonemiddleware does in a cloud: they are trusted.
        inner = ct_wsgi.RequestIdMiddleware(
            app,
            compat_headers=COMPAT_HEADERS.get(name, ()),
            tracer=self.tracer,
            trust_identity_headers=True,
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
        """Wrap an ASGI app: request ids and context, its SERVER span, log routing."""
        name = self.name
        inner = ct_asgi.RequestIdMiddleware(
            app,
            compat_headers=COMPAT_HEADERS.get(name, ()),
            tracer=self.tracer,
            trust_identity_headers=True,
        )

        async def service_app(scope: Any, receive: Any, send: Any) -> None:
            token = _service_var.set(name)
            try:
                await inner(scope, receive, send)
            finally:
                _service_var.reset(token)

        return service_app

    @contextlib.contextmanager
    def rpc_scope(self) -> Iterator[None]:
        """The scope of one RPC endpoint call: its log lines go to this service's file.
        (Context and SERVER span come from crosstrace's oslo.messaging integration.)"""
        token = _service_var.set(self.name)
        try:
            yield
        finally:
            _service_var.reset(token)

    # -- clients ------------------------------------------------------------

    def requests_session(self) -> Any:
        """A ``requests`` session that sends the global request id and the trace."""
        session = ct_requests.Session(tracer=self.tracer)
        self._clients.append(session)
        return session

    def httpx_client(self, timeout: float) -> Any:
        """An ``httpx`` client that sends the global request id and the trace."""
        client = ct_httpx.Client(timeout=timeout, tracer=self.tracer)
        self._clients.append(client)
        return client

    def instrument_engine(self, engine: Any) -> None:
        """Add a CLIENT span per SQL statement to a SQLAlchemy engine."""
        ct_sqlalchemy.instrument_engine(engine, tracer=self.tracer)

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
        trace_id = crosstrace.current_span().trace_id
        return f"{trace_id:032x}" if trace_id else None

    def context(self) -> crosstrace.RequestContext | None:
        return crosstrace.get_current()


class Tracing:
    """Tracing for the whole demo process: ``crosstrace.configure()`` once, one
    service tracer per service (``crosstrace.get_tracer(name)``: its own
    ``service.name``, the one shared exporter), flush and shutdown."""

    def __init__(
        self, endpoint: str, slow_threshold_s: float = 1.0, token: str | None = None
    ) -> None:
        """*token*: the backend's ingest token, when it requires one."""
        self.endpoint = endpoint
        # Record and keep every trace: the demo is the ground truth, so no head
        # sampling and no overhead budget here.
        crosstrace.configure(
            service_name="crosstrace-demo",
            transport="otlp",
            endpoint=endpoint,
            sample_ratio=1.0,
            overhead_budget=0,
            slow_threshold=slow_threshold_s,
            queue_size=16384,
            export_delay=0.5,
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        self.tracers: dict[str, Tracer] = {}

    def kit(self, name: str, logger_name: str, log_dir: Path, router: LogRouter) -> ServiceKit:
        """The instrumentation of the service called ``name``."""
        tracer = ct_tracer.get_tracer(name)
        if tracer is None:
            raise RuntimeError("tracing was shut down")
        self.tracers[name] = tracer
        return ServiceKit(name, logger_name, log_dir, router, tracer)

    def flush(self, timeout: float = 10.0) -> bool:
        """Export everything queued so far; ``False`` if it did not finish in time."""
        return crosstrace.force_flush(timeout)

    def stats(self) -> dict[str, int]:
        """The exporter's self-metrics (queued, exported, dropped...)."""
        return crosstrace.export.stats()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Flush and stop the exporter; tracing is unconfigured afterwards."""
        ct_config.shutdown(timeout)
